"""Many files at once, and a bridge killed -9 in the middle of a run."""

from __future__ import annotations

import collections
import json
from pathlib import Path

from tests.conftest import Drop
from tests.support.procs import BridgeProc, wait_until


def _states(drop: Drop) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for path in drop.dir.iterdir():
        if path.name.startswith("."):
            continue
        try:
            out[json.loads(path.read_text()).get("state", "NEW")] += 1
        except (ValueError, OSError):
            out["UNREADABLE"] += 1
    return out


def _job_ids(drop: Drop) -> dict[str, str]:
    out = {}
    for path in drop.dir.iterdir():
        if not path.name.startswith("."):
            fields = json.loads(path.read_text())
            out[fields["task-id"]] = fields["job-id"]
    return out


def _starts(drop: Drop) -> collections.Counter[str]:
    return collections.Counter(
        line.split()[0] for line in drop.runs() if line and " end " not in line
    )


def test_500_files_dropped_at_once_all_succeed(bridge: BridgeProc, drop: Drop) -> None:
    for i in range(500):
        drop.write(f"m{i:03d}.SLOW", {"type": "SLOW", "steps": 0})
    wait_until(
        lambda: _states(drop)["SUCCESS"] == 500, 240, interval=0.5, what="500 tasks to succeed"
    )
    assert len(list(drop.dir.iterdir())) == 500
    jobs = _job_ids(drop)
    starts = _starts(drop)
    assert all(starts[j] == 1 for j in jobs.values())


def test_kill_9_of_the_bridge_mid_run_loses_and_doubles_nothing(
    bridge: BridgeProc, drop: Drop, env: dict[str, str], data_root: Path
) -> None:
    for i in range(200):
        drop.write(f"k{i:03d}.SLOW", {"type": "SLOW", "steps": 2, "step-seconds": 0.02})
    wait_until(
        lambda: _states(drop)["NEW"] <= 150, 30, interval=0.01, what="the bridge to take some files"
    )
    bridge.kill()
    midway = _states(drop)
    assert midway["NEW"] > 0, "the bridge had already taken every file; nothing was tested"
    restarted = BridgeProc(env, data_root / "bridge-restarted.log")
    restarted.start()
    try:
        wait_until(
            lambda: _states(drop)["SUCCESS"] == 200,
            180,
            interval=0.5,
            what="all 200 tasks to succeed after the restart",
        )
    finally:
        restarted.stop()
    jobs = _job_ids(drop)
    assert len(jobs) == 200
    starts = _starts(drop)
    assert [t for t, j in jobs.items() if starts[j] != 1] == []
