"""The bridge end to end: real inotify, a real redis-server and real Celery workers."""

from __future__ import annotations

import time

from tests.conftest import Drop
from tests.support.procs import BridgeProc, wait_until


def test_dropped_file_is_queued_renamed_and_ends_success(bridge: BridgeProc, drop: Drop) -> None:
    drop.write("0001.SLOW", '{"type": "SLOW", "steps": 3, "step-seconds": 0.3,}')
    start = time.monotonic()
    queued = drop.wait_state("0001", {"QUEUED", "STARTED", "PROGRESS"}, timeout=5)
    assert time.monotonic() - start < 1.5
    assert queued["task-id"] == "0001"
    done = drop.wait_state("0001", "SUCCESS", timeout=30)
    path = drop.find("0001")
    assert path is not None
    assert path.name == f"0001-{done['ticket']}_100.SLOW"
    assert done["progress"] == 100
    assert "tmp-space" not in done
    assert list(done)[:3] == ["type", "steps", "step-seconds"]
    assert drop.runs().count(f"{done['job-id']} 0001") == 1
    wait_until(lambda: not (drop.data_root / "work_space" / drop.user / "0001").exists(), 5)


def test_a_running_task_keeps_one_spare_and_none_is_left_when_it_ends(
    bridge: BridgeProc, drop: Drop
) -> None:
    """Each rewrite refills the file's spare (docs/file-contract.md, "How it is written"):
    one hidden file beside a running task, and none once it ended."""
    drop.write("0002.SLOW", {"type": "SLOW", "steps": 30, "step-seconds": 0.1})
    drop.wait_state("0002", "PROGRESS", timeout=30)
    spares: set[str] = set()

    def hidden() -> list[str]:
        return [p.name for p in drop.dir.iterdir() if p.name.startswith(".")]

    for _ in range(10):
        now = hidden()
        assert len(now) <= 1, now
        spares.update(now)
        time.sleep(0.2)
    assert len(spares) == 1  # the same one all along: refilled, not made anew
    drop.wait_state("0002", "SUCCESS", timeout=30)
    wait_until(lambda: not hidden(), 5, what="no spare left once the task ended")
