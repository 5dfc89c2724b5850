"""Retries with backoff, time limits and delayed starts, through the real bridge and workers."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import Drop
from tests.support.procs import BridgeProc, wait_until
from tests.support.writes import WriteLog


def _starts(drop: Drop, job_id: str) -> int:
    return sum(1 for line in drop.runs() if line.startswith(job_id + " ") and " end " not in line)


def test_a_retryable_failure_shows_retry_then_succeeds(bridge: BridgeProc, drop: Drop) -> None:
    drop.write("t1.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0.01, "flaky": 2})
    waiting = drop.wait_state("t1", "RETRY", timeout=20)
    assert waiting["retries"] >= 1  # a 1 s interval may let the mirror see the second wait first
    assert waiting["retry-at"].endswith("Z")
    assert "timed out" in waiting["error"]
    done = drop.wait_state("t1", "SUCCESS", timeout=30)
    assert done["retries"] == 2 and "error" not in done and "retry-at" not in done
    assert _starts(drop, done["job-id"]) == 3


def test_retries_run_out_and_the_task_fails_saying_so(bridge: BridgeProc, drop: Drop) -> None:
    drop.write("t2.SLOW", {"type": "SLOW", "steps": 0, "flaky": 5})
    failed = drop.wait_state("t2", "FAILURE", timeout=40)
    assert failed["error"] == "the test store timed out (gave up after 3 tries)"
    assert _starts(drop, failed["job-id"]) == 3


def test_a_task_past_its_time_limit_fails_with_a_message_and_cleans_up(
    bridge: BridgeProc, drop: Drop
) -> None:
    drop.write("t3.SHORT", {"type": "SHORT", "hang": True})
    running = drop.wait_state("t3", "PROGRESS", timeout=15)
    failed = drop.wait_state("t3", "FAILURE", timeout=20)
    assert "time limit of 2" in failed["error"], failed["error"]
    wait_until(lambda: not Path(running["tmp-space"]).exists(), 10, what="tmp-space removed")


def test_run_at_in_the_future_starts_then_and_not_before_across_a_bridge_restart(
    bridge: BridgeProc, drop: Drop, env: dict[str, str], data_root: Path
) -> None:
    start_at = datetime.now(UTC) + timedelta(seconds=6)
    stamp = start_at.isoformat(timespec="seconds").replace("+00:00", "Z")
    drop.write("t4.SLOW", {"type": "SLOW", "steps": 0, "run-at": stamp})
    queued = drop.wait_state("t4", "QUEUED", timeout=5)
    bridge.kill()
    restarted = BridgeProc(env, data_root / "bridge-run-at.log")
    restarted.start()
    try:
        with WriteLog(drop.dir):
            done = drop.wait_state("t4", "SUCCESS", timeout=30)
        started = datetime.fromisoformat(done["started-at"].replace("Z", "+00:00"))
    finally:
        restarted.stop()
    assert started >= start_at.replace(microsecond=0)
    assert done["job-id"] == queued["job-id"] and _starts(drop, done["job-id"]) == 1


def test_delay_keeps_a_task_queued_until_then(bridge: BridgeProc, drop: Drop) -> None:
    dropped = time.time()
    drop.write("t5.SLOW", {"type": "SLOW", "steps": 0, "delay": 3})
    drop.wait_state("t5", "QUEUED", timeout=5)
    done = drop.wait_state("t5", "SUCCESS", timeout=30)
    ended = [line for line in drop.runs() if line.startswith(f"{done['job-id']} t5 end ")]
    assert float(ended[0].split()[-1]) >= dropped + 3


def test_bad_run_at_is_rejected_naming_the_field(bridge: BridgeProc, drop: Drop) -> None:
    drop.write("t6.SLOW", {"type": "SLOW", "run-at": "tomorrow"})
    rejected = drop.wait_state("t6", "REJECTED", timeout=10)
    assert "run-at" in rejected["error"] and "ISO-8601" in rejected["error"]


def test_priority_orders_queued_tasks_of_one_type(bridge: BridgeProc, drop: Drop) -> None:
    # Busy tasks that end one after another: the first slot to come free must take "high".
    # (Were all four freed at once, four queued tasks would start together in any order.)
    for i in range(4):
        drop.write(f"busy{i}.SLOW", {"type": "SLOW", "steps": 40 + 20 * i, "step-seconds": 0.1})
    for i in range(4):
        drop.wait_state(f"busy{i}", "PROGRESS", timeout=15)
    for i in range(3):
        drop.write(f"low{i}.SLOW", {"type": "SLOW", "steps": 0, "priority": 0})
        drop.wait_state(f"low{i}", "QUEUED", timeout=5)
    drop.write("high.SLOW", {"type": "SLOW", "steps": 0, "priority": 9})
    drop.wait_state("high", "QUEUED", timeout=5)
    for name in ("high", "low0", "low1", "low2"):
        drop.wait_state(name, "SUCCESS", timeout=30)
    order = [line.split()[1] for line in drop.runs() if line and " end " not in line]
    mine = [name for name in order if name in ("high", "low0", "low1", "low2")]
    assert mine[0] == "high", mine
