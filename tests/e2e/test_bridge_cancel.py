"""Deleting a task file cancels its job, whether it waits in the queue or runs."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Drop
from tests.support.procs import BridgeProc, wait_until


def _tmp_space(drop: Drop, task_id: str) -> Path:
    return drop.data_root / "work_space" / drop.user / task_id


def _ran(drop: Drop, job_id: str) -> list[str]:
    return [line for line in drop.runs() if line.startswith(job_id + " ")]


def test_deleting_a_running_task_stops_it_and_removes_its_tmp_space(
    bridge: BridgeProc, drop: Drop
) -> None:
    drop.write("c1.SLOW", {"type": "SLOW", "steps": 200, "step-seconds": 0.1})
    running = drop.wait_state("c1", "PROGRESS", timeout=15)
    assert Path(running["tmp-space"]).is_dir()
    path = drop.find("c1")
    assert path is not None
    path.unlink()
    wait_until(lambda: not _tmp_space(drop, "c1").exists(), 10, what="tmp-space removed")
    assert not any(" end " in line for line in _ran(drop, running["job-id"]))
    assert drop.find("c1") is None


def test_deleting_a_task_that_reports_nothing_still_stops_it(
    bridge: BridgeProc, drop: Drop
) -> None:
    drop.write("c2.SLOW", {"type": "SLOW", "hang": True})
    running = drop.wait_state("c2", "PROGRESS", timeout=15)
    tmp = Path(running["tmp-space"])
    assert (tmp / "partial").exists()
    path = drop.find("c2")
    assert path is not None
    path.unlink()
    wait_until(lambda: not tmp.exists(), 10, what="the hung job to stop and clean up")


def test_deleting_a_queued_task_means_it_never_runs(bridge: BridgeProc, drop: Drop) -> None:
    # Four long jobs fill the worker's four processes, so the fifth waits in the queue.
    for i in range(4):
        drop.write(f"busy{i}.SLOW", {"type": "SLOW", "steps": 25, "step-seconds": 0.1})
    for i in range(4):
        drop.wait_state(f"busy{i}", "PROGRESS", timeout=15)
    drop.write("c3.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0.01})
    queued = drop.wait_state("c3", "QUEUED", timeout=5)
    path = drop.find("c3")
    assert path is not None
    path.unlink()
    for i in range(4):
        drop.wait_state(f"busy{i}", "SUCCESS", timeout=30)
    drop.write("after.SLOW", {"type": "SLOW", "steps": 0})
    drop.wait_state("after", "SUCCESS", timeout=15)
    assert _ran(drop, queued["job-id"]) == []


def test_a_new_file_with_a_cancelled_task_id_is_a_new_task(bridge: BridgeProc, drop: Drop) -> None:
    drop.write("c4.SLOW", {"type": "SLOW", "steps": 100, "step-seconds": 0.1})
    first = drop.wait_state("c4", "PROGRESS", timeout=15)
    path = drop.find("c4")
    assert path is not None
    path.unlink()
    drop.write("c4.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0.01})
    second = drop.wait_state("c4", "SUCCESS", timeout=20)
    assert second["job-id"] != first["job-id"]
