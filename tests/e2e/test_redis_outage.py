"""Redis goes away and comes back empty: the files are the source of truth."""

from __future__ import annotations

import collections

from tests.conftest import Drop
from tests.support.procs import BridgeProc, RedisServer


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
    assert log.count("Redis unreachable") == 1


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
