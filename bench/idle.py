"""Idle cost: a bridge started on a tree of `n` task files, 99% of them finished.

The tree is written as the bridge leaves it: 100 user directories, finished files named
`<id>-100.NOOP` reading SUCCESS, the other 1% QUEUED with a job id Redis has never seen (so the
bridge adopts and publishes them). Start-up is timed from spawning the process until every active
job is published; then RSS, and CPU over a rest window that holds one periodic rescan (every
TASKD_RESCAN_INTERVAL, 30 s by default). Baselines, same run: reading and parsing every file once
in Python (the least a start-up scan does), and a bridge on an empty tree beside it.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    NOOP,
    CpuMeter,
    Outcome,
    Row,
    Stack,
    describe,
    pid_of,
    rss_mb,
    task_dir,
    verdict,
)
from taskd import states
from tests.support.procs import BridgeProc, wait_until

SCAN_GOAL_X = 3.0  # a first start's scan (the process's start included), against the floor
RESTART_GOAL_X = 3.0  # a restart's scan, against reading and parsing every file once
RSS_GOAL_MB = 200.0
REST_GOAL_PCT = 2.0
USERS = 100
ACTIVE_EVERY = 100  # 1% active
STAMP = "2026-01-01T00:00:00Z"
RESCAN_S = 30.0  # TASKD_RESCAN_INTERVAL's default, which the benchmark keeps


def build_tree(root: Path, n: int) -> list[str]:
    """Write the tree; the job ids of its active tasks."""
    active: list[str] = []
    for i in range(n):
        directory = task_dir(root, str(100 + i % USERS))
        stem, job_id = f"i{i:06d}", str(uuid.uuid4())
        fields: dict[str, Any] = {"type": NOOP, "label": "idle", states.TASK_ID: stem}
        if i % ACTIVE_EVERY == 0:
            fields.update({states.STATE: states.QUEUED, states.PROGRESS_FIELD: 0})
            active.append(job_id)
        else:
            fields.update({states.STATE: states.SUCCESS, states.PROGRESS_FIELD: 100})
        fields.update({states.JOB_ID: job_id, states.QUEUED_AT: STAMP})
        if fields[states.STATE] == states.SUCCESS:
            fields.update({states.STARTED_AT: STAMP, states.FINISHED_AT: STAMP, "worker": "w"})
        name = f"{stem}-{fields[states.PROGRESS_FIELD]}.{NOOP}"
        (directory / name).write_text(json.dumps(fields, indent=2))
    return active


def scan_floor(root: Path) -> float:
    """Seconds to list, read and parse every task file once."""
    start = time.perf_counter()
    for user in os.scandir(root / "task_queue"):
        for entry in os.scandir(user.path):
            with open(entry.path, "rb") as handle:
                json.loads(handle.read())
    return time.perf_counter() - start


def published(system: Stack, job_ids: list[str]) -> bool:
    with system.r.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(states.job_key(job_id), "status")
        return all(s == states.JOB_PUBLISHED.encode() for s in pipe.execute())


def start_timed(system: Stack, root: Path, active: list[str]) -> tuple[BridgeProc, float]:
    bridge = BridgeProc(system.env(root), root / "bridge.log")
    start = time.perf_counter()
    bridge.start()
    system.procs.append(bridge)
    wait_until(lambda: published(system, active), 300, interval=0.05, what="the start-up scan")
    return bridge, time.perf_counter() - start


def restart_timed(system: Stack, root: Path, active: list[str], bridge: BridgeProc) -> float:
    """The bridge stopped and started again on the same tree, with Redis emptied meanwhile so
    its active jobs are published again: the time until they are is the restart's scan."""
    bridge.stop()
    system.procs.remove(bridge)
    system.r.flushdb()
    _, seconds = start_timed(system, root, active)
    return seconds


def run(system: Stack, quick: bool, repeat: int) -> Outcome:
    n, rest = (2000, 3.0) if quick else (100_000, 31.0)
    root = system.new_root()
    active = build_tree(root, n)
    floor = min(scan_floor(root) for _ in range(2))  # the second is from a warm cache
    empty_root = system.new_root(db=1)  # beside the busy one: a Redis db of its own
    begun = time.perf_counter()
    empty = system.bridge(empty_root)
    empty_start = time.perf_counter() - begun
    bridge, startup = start_timed(system, root, active)
    # At rest: after the first rescan since start-up, which lists every user folder once more
    # (they were all written just before the start); from then on a rescan lists only folders
    # that changed, and every 10th lists all (about 1 s in 300 s here: +0.3%).
    time.sleep(RESCAN_S + 2.0 if not quick else 1.0)
    meters = [CpuMeter(pid_of(bridge)).start(), CpuMeter(pid_of(empty)).start()]
    time.sleep(rest)
    busy, quiet = (100 * m.stop() for m in meters)
    rss, rss_empty = rss_mb(pid_of(bridge)), rss_mb(pid_of(empty))
    restart = restart_timed(system, root, active, bridge)
    rows = [
        Row(
            "idle cost",
            f"start-up scan, {n:,} files (1% active)",
            [startup],
            "s",
            [floor],
            "list, read and parse every file once",
            f"<= {SCAN_GOAL_X:g}x the floor",
            verdict(startup <= SCAN_GOAL_X * floor),
        ),
        Row(
            "idle cost",
            f"restart scan, same {n:,} files (finished ones known from .taskd/settled)",
            [restart],
            "s",
            [floor],
            "list, read and parse every file once",
            f"<= {RESTART_GOAL_X:g}x the floor",
            verdict(restart <= RESTART_GOAL_X * floor),
        ),
        Row(
            "idle cost",
            "bridge RSS after start-up",
            [rss],
            "MB",
            [rss_empty],
            "a bridge on an empty tree",
            f"<= {RSS_GOAL_MB:g} MB",
            verdict(rss <= RSS_GOAL_MB),
        ),
        Row(
            "idle cost",
            f"CPU at rest over {rest:g} s" + (" (one rescan)" if rest > RESCAN_S else ""),
            [busy],
            "% of a core",
            [quiet],
            "a bridge on an empty tree",
            f"<= {REST_GOAL_PCT:g}%",
            verdict(busy <= REST_GOAL_PCT),
        ),
    ]
    for row in rows:
        print(describe(row), flush=True)
    note = f"idle: a bridge on an empty tree is up (probe taken) {empty_start:.2f} s after spawn"
    return Outcome(rows=rows, notes=[note])
