"""A task stores STARTED itself once it knows its delivery is the try due (tasks/base.py): a
Redis blink is tried again, as claiming is; anything else, or Redis away for good, leaves the
job running, its first report saying it started."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from taskd import states
from tasks import base


def _store(monkeypatch: pytest.MonkeyPatch, fails: list[BaseException]) -> list[str]:
    stored: list[str] = []

    def store_meta(task: Any, job_id: str, state: str, *_: Any) -> bool:
        if fails:
            raise fails.pop(0)
        stored.append(state)
        return False

    monkeypatch.setattr(base, "store_meta", store_meta)
    monkeypatch.setattr(base.time, "sleep", lambda seconds: None)
    return stored


def _started(task: Any = None) -> None:
    base.TaskdTask._store_started(task, "j1", "w1@h", "w1@h/1/ab", '["3", "t1"]')


def test_a_redis_blink_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = _store(monkeypatch, [redis.ConnectionError("blink")] * 2)
    _started()
    assert stored == [states.STARTED]


def test_redis_away_for_good_or_a_bug_leaves_the_job_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stored = _store(monkeypatch, [redis.ConnectionError("away")] * base.ENTER_TRIES)
    _started()  # no exception: the job runs on
    assert stored == []
    stored = _store(monkeypatch, [ValueError("nonsense")])
    _started()
    assert stored == []
