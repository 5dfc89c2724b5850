"""A mirror tick that takes new files meanwhile never publishes or writes a task cancelled
meanwhile (bridge/passes/mirror.py, `Core.between`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bridge import dispatch
from bridge.daemon import Bridge
from bridge.model import Tracked
from bridge.passes import mirror
from bridge.schedule import Known
from taskd.settings import Settings
from taskd.tasktypes import load_types
from tests.support.noredis import NoRedis
from tests.support.procs import SUPPORT_SCHEMAS


def _task(bridge: Bridge, n: int) -> Tracked:
    types = load_types([SUPPORT_SCHEMAS])
    fields: dict[str, Any] = {
        "type": "SLOW",
        "task-id": f"t{n}",
        "state": "QUEUED",
        "progress": 0,
        "job-id": f"j{n}",
    }
    path = bridge.settings.task_queue / "3" / f"t{n}-0.SLOW"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields))
    task = Tracked("3", f"t{n}", types["SLOW"], path, fields)
    bridge.table.add(task)
    return task


def test_a_task_cancelled_by_a_slice_of_intake_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_root=tmp_path, settle=0.0)
    bridge = Bridge(settings, load_types([SUPPORT_SCHEMAS]), app=None, client=NoRedis())  # type: ignore[arg-type]
    first, second = _task(bridge, 1), _task(bridge, 2)

    def known(hot: Any, quiet: Any = None) -> tuple[dict[str, Known], str]:
        return {j: Known(None, None) for j in ("j1", "j2")}, "run1"  # lost: to publish again

    decided: list[str] = []
    monkeypatch.setattr(bridge.core.publisher, "known", known)
    monkeypatch.setattr(
        dispatch, "publish_when_due", lambda core, task, *a, **k: decided.append(task.task_id)
    )
    monkeypatch.setattr(mirror, "SLICE_S", 0.0)  # a slice of intake before every file

    def between() -> None:
        if second.job_id in bridge.table.by_job:
            second.path.unlink()
            bridge.core.cancel(second)  # what a DELETED event taken meanwhile does

    bridge.core.between = between
    mirror.mirror_once(bridge.core, 1000.0)
    assert decided == ["t1"]
    assert first.job_id in bridge.table.by_job and second.job_id not in bridge.table.by_job
