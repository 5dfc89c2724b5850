"""`taskd submit --wait` reads the task's file (bridge/waiting.py): it follows its own job
once it has seen it, and a file missed by one look is not taken for a cancel."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from bridge import waiting


def _file(folder: Path, name: str, **fields: object) -> Path:
    path = folder / name
    path.write_text(json.dumps(fields))
    return path


def test_its_own_job_is_followed_past_a_newer_file_of_the_same_task_id(tmp_path: Path) -> None:
    folder = tmp_path / "3"
    folder.mkdir()
    ours = {"task-id": "a", "state": "PROGRESS", "job-id": "j1", "queued-at": "x"}
    _file(folder, "a-40.SLOW", **ours)
    first = waiting.look_once(tmp_path, "3", "a", "SLOW", 1 << 20, None)
    assert first is not None and first.fields["job-id"] == "j1"
    time.sleep(0.01)
    _file(folder, "a-ERR.SLOW", **{"task-id": "a", "state": "REJECTED", "queued-at": "x"})
    again = waiting.look_once(tmp_path, "3", "a", "SLOW", 1 << 20, "j1")
    assert again is not None and again.name == "a-40.SLOW"
    other_type = waiting.look_once(tmp_path, "3", "a", "RETRMS", 1 << 20, None)
    assert other_type is None


def test_a_file_missed_by_one_look_is_not_a_cancel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "3"
    folder.mkdir()
    looks = iter([None, "done"])
    done = {"task-id": "a", "state": "SUCCESS", "job-id": "j1", "queued-at": "x"}
    path = _file(folder, "a-100.SLOW", **done)
    real = waiting.look_once

    def flaky(*args: Any) -> Any:
        return None if next(looks) is None else real(*args)

    monkeypatch.setattr(waiting, "look_once", flaky)
    outcome = waiting.wait(tmp_path, "3", "a", "SLOW", 1 << 20, timeout=5, interval=0.01)
    assert outcome.code == waiting.SUCCEEDED and outcome.task is not None
    assert outcome.task.name == path.name
