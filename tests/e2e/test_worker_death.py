"""A worker killed -9 under a job: the job runs again elsewhere, soon, and ends once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.conftest import Drop
from tests.support.procs import BridgeProc, Worker, wait_until


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _ends(drop: Drop, job_id: str) -> int:
    return sum(1 for line in drop.runs() if line.startswith(f"{job_id} ") and " end " in line)


def test_a_pool_process_killed_mid_job_is_requeued_and_the_job_ends_once(
    bridge: BridgeProc, drop: Drop, worker: Worker
) -> None:
    drop.write("d1.SLOW", {"type": "SLOW", "steps": 40, "step-seconds": 0.1})
    running = drop.wait_state("d1", "PROGRESS", timeout=15)
    assert worker.proc is not None
    # every pool process: the one running the job is among them
    for pid in _children(worker.proc.pid):
        os.kill(pid, signal.SIGKILL)
    done = drop.wait_state("d1", "SUCCESS", timeout=90)
    assert done["job-id"] == running["job-id"]
    assert _ends(drop, done["job-id"]) == 1


def test_a_whole_worker_killed_mid_job_is_run_again_by_another_within_a_minute(
    bridge: BridgeProc, drop: Drop, worker: Worker, env: dict[str, str], data_root: Path
) -> None:
    spare = Worker(env, data_root / "worker-spare.log", name="spare", concurrency=2)
    spare.start()
    try:
        drop.write("d2.SLOW", {"type": "SLOW", "steps": 60, "step-seconds": 0.1})
        running = drop.wait_state("d2", "PROGRESS", timeout=15)
        victim = spare if running["worker"].startswith("spare@") else worker
        assert victim.proc is not None
        for pid in [victim.proc.pid, *_children(victim.proc.pid)]:
            os.kill(pid, signal.SIGKILL)
        victim.proc.wait(10)
        if victim is worker:  # the session's worker is supervised: wait for it to be back

            def back() -> bool:
                try:
                    return worker.proc is not None and worker.ready()
                except RuntimeError:
                    return False

            wait_until(back, 60, interval=0.5, what="the session worker restarted")
        done = drop.wait_state("d2", "SUCCESS", timeout=60)
        assert done["job-id"] == running["job-id"]
        assert _ends(drop, done["job-id"]) == 1
        wait_until(lambda: "no live worker" in bridge.log.read_text(), 5, what="recovery logged")
    finally:
        spare.stop()
