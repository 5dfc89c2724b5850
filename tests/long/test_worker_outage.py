"""`taskd worker` and `taskd flower`, with no supervisor around them, outlive Redis outages of a
second, half a minute and minutes, while jobs run and while new ones are queued.

Minutes of waiting, so `make test` runs this module in the background beside the rest of the
suite (`tests/support/background.py`); alone: `TASKD_TEST_LONG=1 pytest tests/long`.
`TASKD_TEST_LONG_OUTAGE` sets the long outage (seconds, default 300).
"""

from __future__ import annotations

import collections
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tasks.brokerfix import FLOWER_RETRY_MAX_S
from tests.conftest import Drop
from tests.e2e.test_flower import Flower
from tests.support.procs import (
    REPO,
    BridgeProc,
    RedisServer,
    free_port,
    stop_process,
    taskd_env,
    wait_until,
)

LONG_OUTAGE_S = float(os.environ.get("TASKD_TEST_LONG_OUTAGE", "300"))
OUTAGES = (1.0, 30.0, LONG_OUTAGE_S)
LONG_TIMEOUT_S = sum(OUTAGES) + 300
"""The test's limit: the outages, and for each the reconnect and the jobs' end, with room."""
RECONNECT_S = 30.0
"""Celery's consumer tries the broker again at growing intervals up to 30 s."""


@dataclass
class Stack:
    root: Path
    server: RedisServer
    worker: subprocess.Popen[bytes]
    flower: subprocess.Popen[bytes]
    flower_api: Flower
    bridge: BridgeProc

    @property
    def worker_log(self) -> str:
        return (self.root / "worker.log").read_text(errors="replace")


def _spawn(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "taskcli.cli", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    root = tmp_path / "data"
    for folder in ("task_queue", "files"):
        (root / folder).mkdir(parents=True)
    env = taskd_env(root, server.url, {"FLOWER_UNAUTHENTICATED_API": "true"})
    worker = _spawn(env, root / "worker.log", "worker", "-n", "alone@%h", "-c", "2")
    port = free_port()
    flower = _spawn(env, root / "flower.log", "flower", f"--port={port}")
    bridge = BridgeProc(env, root / "bridge.log")
    bridge.start()
    api = Flower(port)
    try:
        wait_until(lambda: api.get("/api/workers", auth=None)[0] == 200, 60, what="Flower")
        yield Stack(root, server, worker, flower, api, bridge)
    finally:
        bridge.stop()
        stop_process(flower)
        stop_process(worker)
        server.stop()


def _starts(drop: Drop) -> collections.Counter[str]:
    return collections.Counter(
        line.split()[0] for line in drop.runs() if line and " end " not in line
    )


def _outage(stack: Stack, drop: Drop, n: int, seconds: float) -> list[dict[str, Any]]:
    """A job running when Redis goes (its message unacked: what used to end the worker) and one
    written while Redis is away; both end SUCCESS once Redis is back."""
    drop.write(f"run{n}.SLOW", {"type": "SLOW", "steps": 30, "step-seconds": 0.1})
    running = drop.wait_state(f"run{n}", "PROGRESS", timeout=30)
    stack.server.kill()
    try:
        drop.write(f"queued{n}.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0.01})
        queued = drop.wait_state(f"queued{n}", "QUEUED", timeout=10)
        time.sleep(seconds)
    finally:
        stack.server.start()  # empty, as a Redis that keeps nothing on disk comes back
    ended = []
    for task_id, before in ((f"run{n}", running), (f"queued{n}", queued)):
        done = drop.wait_state(task_id, {"SUCCESS", "FAILURE"}, timeout=RECONNECT_S + 90)
        assert done["state"] == "SUCCESS", (seconds, task_id, done.get("error"))
        assert done["job-id"] == before["job-id"]
        ended.append(done)
    return ended


@pytest.mark.timeout(LONG_TIMEOUT_S)
def test_an_unsupervised_worker_and_flower_outlive_outages_of_any_length(stack: Stack) -> None:
    drop = Drop(stack.root, "u1")
    ended = []
    for n, seconds in enumerate(OUTAGES):
        ended += _outage(stack, drop, n, seconds)
        # Never restarted: the very processes started above are serving still.
        assert stack.worker.poll() is None, stack.worker_log[-3000:]
        assert stack.flower.poll() is None
    starts = _starts(drop)
    assert all(starts[done["job-id"]] == 1 for done in ended), starts
    assert "Unrecoverable error" not in stack.worker_log
    # Flower's event receiver came back too, within its capped pause: it sees jobs written after
    # the last outage (events are not kept, so one ended before it listened again is not shown).
    after = itertools.count()

    def flower_sees_a_new_job() -> bool:
        task_id = f"after{next(after)}"
        drop.write(f"{task_id}.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0.01})
        job_id = drop.wait_state(task_id, "SUCCESS", timeout=RECONNECT_S + 60)["job-id"]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status, task = stack.flower_api.get(f"/api/task/info/{job_id}", auth=None)
            if status == 200 and isinstance(task, dict) and task.get("state") == "SUCCESS":
                return True
            time.sleep(0.5)
        return False

    wait_until(flower_sees_a_new_job, FLOWER_RETRY_MAX_S + 60, interval=0.1, what="Flower")
