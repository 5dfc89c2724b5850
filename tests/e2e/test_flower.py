"""Flower, started by `taskd flower`, shows a running job's progress and whose task it is."""

from __future__ import annotations

import ast
import base64
import json
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from taskd.states import cancel_key
from tests.conftest import Drop
from tests.support.procs import REPO, BridgeProc, Worker, free_port, stop_process, wait_until

AUTH = "ops:s3cret"


class Flower:
    def __init__(self, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, auth: str | None = AUTH) -> tuple[int, Any]:
        request = urllib.request.Request(self.base + path)
        if auth:
            token = base64.b64encode(auth.encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            return exc.code, None
        except OSError:
            return 0, None
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")


@pytest.fixture(scope="module")
def flower(env: dict[str, str], data_root: Path, worker: Worker) -> Iterator[Flower]:
    port = free_port()
    # The login through the environment (never argv, which `ps` shows to every user), and no
    # --address: `taskd flower` listens on loopback by default.
    with open(data_root / "flower.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskcli.cli", "flower", f"--port={port}"],
            cwd=REPO,
            env={**env, "FLOWER_BASIC_AUTH": AUTH},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    client = Flower(port)
    try:
        wait_until(
            lambda: client.get("/api/workers?refresh=1")[0] == 200,
            60,
            interval=0.3,
            what="Flower to answer",
        )
        yield client
    finally:
        stop_process(proc)


def listening(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp* spells them) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if int(hex_port, 16) == port and state == "0A":  # LISTEN
                found.add(address)
    return found


def test_taskd_flower_listens_on_loopback_only(flower: Flower) -> None:
    assert listening(flower.port) == {"0100007F"}  # 127.0.0.1, and nothing else


def test_flower_asks_for_its_basic_auth(flower: Flower) -> None:
    assert flower.get("/api/tasks", auth=None)[0] == 401
    assert flower.get("/api/tasks", auth="ops:wrong")[0] == 401
    assert flower.get("/api/tasks")[0] == 200
    # Flower serves /metrics and /healthcheck without asking: why operations.md puts them
    # behind the proxy's auth.
    assert flower.get("/metrics", auth=None)[0] == 200
    assert flower.get("/healthcheck", auth=None)[0] == 200


PROGRESS_LINE = r"[1-9][0-9]?% \(step [0-9]+/300: sleeping 0\.2 s\)"
"""What Flower shows of a running SLOW job: its percent, step and words (tasks/progress.py)."""


def test_flower_shows_a_running_jobs_progress_and_its_user_and_task(
    flower: Flower, bridge: BridgeProc, drop: Drop, env: dict[str, str]
) -> None:
    drop.write("f1.SLOW", {"type": "SLOW", "steps": 300, "step-seconds": 0.2})
    running = drop.wait_state("f1", "PROGRESS", timeout=30)
    job_id = running["job-id"]

    def progressing() -> dict[str, Any] | None:
        status, info = flower.get(f"/api/task/info/{job_id}")
        if status != 200 or not isinstance(info, dict) or info.get("state") != "PROGRESS":
            return None
        return info if re.fullmatch(PROGRESS_LINE, str(info.get("result"))) else None

    info = wait_until(progressing, 30, interval=0.2, what="Flower to show the job's progress")
    assert info["name"] == "tests.support.slowtask.run"
    assert info["worker"].startswith("w1@")
    assert ast.literal_eval(info["kwargs"]) == {
        "user-id": drop.user,
        "task-id": "f1",
        "type": "SLOW",
    }
    [spec] = ast.literal_eval(info["args"])
    assert (spec["user-id"], spec["task-id"]) == (drop.user, "f1")

    # Ops find the job in the task list by user and task-id.
    query = urllib.parse.quote(f"kwargs:user-id={drop.user} kwargs:task-id=f1")
    status, listed = flower.get(f"/api/tasks?search={query}")
    assert status == 200 and list(listed) == [job_id]
    assert re.fullmatch(PROGRESS_LINE, listed[job_id]["result"])
    assert "(step " in info["result"] and "/300: sleeping 0.2 s)" in info["result"]

    # Done with it: deleting the file cancels the job (before this test's bridge stops).
    (drop.find("f1") or drop.dir / "f1.SLOW").unlink()
    client = redis.Redis.from_url(env["TASKD_REDIS_URL"])
    wait_until(lambda: client.exists(cancel_key(job_id)), 30, what="the cancel")
    client.close()
