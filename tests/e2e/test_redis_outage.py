"""Redis goes away and comes back empty: the files are the source of truth."""

from __future__ import annotations

import collections
import time

import pytest

from tests.conftest import Drop
from tests.support.procs import BridgeProc, RedisServer, wait_until


def _starts(drop: Drop) -> collections.Counter[str]:
    return collections.Counter(
        line.split()[0] for line in drop.runs() if line and " end " not in line
    )


def test_files_are_queued_while_redis_is_down_and_run_when_it_returns(
    bridge: BridgeProc, drop: Drop, redis_server: RedisServer
) -> None:
    drop.write("r0.SLOW", {"type": "SLOW", "steps": 0})
    drop.wait_state("r0", "SUCCESS", timeout=15)
    redis_server.kill()
    try:
        drop.write("r1.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0.01})
        queued = drop.wait_state("r1", "QUEUED", timeout=5)
        assert bridge.proc is not None and bridge.proc.poll() is None
    finally:
        redis_server.start()
    done = drop.wait_state("r1", "SUCCESS", timeout=60)
    assert done["job-id"] == queued["job-id"]
    assert _starts(drop)[done["job-id"]] == 1
    log = bridge.log.read_text()
    assert log.count("no Redis answers at redis://127.0.0.1:") == 1


def test_jobs_lost_with_redis_are_published_again_and_run_once(
    bridge: BridgeProc, drop: Drop, redis_server: RedisServer
) -> None:
    for i in range(4):
        drop.write(f"busy{i}.SLOW", {"type": "SLOW", "steps": 30, "step-seconds": 0.1})
    for i in range(4):
        drop.wait_state(f"busy{i}", "PROGRESS", timeout=15)
    drop.write("lost.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0.01})
    queued = drop.wait_state("lost", "QUEUED", timeout=5)
    redis_server.kill()
    redis_server.start()  # empty: the queued message and every state are gone
    done = drop.wait_state("lost", "SUCCESS", timeout=90)
    assert done["job-id"] == queued["job-id"]
    for i in range(4):
        drop.wait_state(f"busy{i}", "SUCCESS", timeout=60)
    starts = _starts(drop)
    assert starts[done["job-id"]] == 1
    busy = [drop.fields(f"busy{i}")["job-id"] for i in range(4)]
    assert [starts[j] for j in busy] == [1, 1, 1, 1]
    assert "Redis restarted (run_id changed)" in bridge.log.read_text()


@pytest.mark.timeout(300)
def test_a_job_that_ends_while_redis_is_away_ends_success_once(
    bridge: BridgeProc, drop: Drop, redis_server: RedisServer
) -> None:
    """Seconds here; minutes, with no supervisor around the worker, in tests/long."""
    outage = 8.0
    drop.write("ends.SLOW", {"type": "SLOW", "steps": 20, "step-seconds": 0.2})
    running = drop.wait_state("ends", "PROGRESS", timeout=15)
    redis_server.kill()
    try:
        time.sleep(1.0)
        drop.write("waits.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0.01})
        waiting = drop.wait_state("waits", "QUEUED", timeout=10)
        # The job's work ends while Redis is away; its outcome is kept on disk meanwhile.
        wait_until(
            lambda: any(" end " in line and running["job-id"] in line for line in drop.runs()),
            30,
            what="the job to finish its work",
        )
        time.sleep(max(0.0, outage - 5.0))
    finally:
        redis_server.start()  # empty, as a Redis that keeps nothing on disk comes back
    done = drop.wait_state("ends", {"SUCCESS", "FAILURE"}, timeout=120)
    assert done["state"] == "SUCCESS", done.get("error")
    assert done["job-id"] == running["job-id"] and done["steps-done"] == 20
    later = drop.wait_state("waits", {"SUCCESS", "FAILURE"}, timeout=120)
    assert later["state"] == "SUCCESS" and later["job-id"] == waiting["job-id"]
    starts = _starts(drop)
    assert starts[done["job-id"]] == 1 and starts[later["job-id"]] == 1
    ends = [line for line in drop.runs() if " end " in line and done["job-id"] in line]
    assert len(ends) == 1
