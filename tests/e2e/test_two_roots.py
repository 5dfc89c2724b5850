"""Two data roots beside one Redis db: the second refuses to start, and nothing of the first is
touched; a worker never runs a job of another data root."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from taskcli.cli import main
from tests.conftest import Drop
from tests.support.procs import (
    REPO,
    BridgeProc,
    RedisServer,
    Worker,
    taskd_env,
    wait_until,
)

REFUSAL = "already serves the data root"


def _second_root(tmp_path: Path) -> Path:
    root = tmp_path / "data-b"
    (root / "task_queue" / "ub").mkdir(parents=True)
    (root / "files").mkdir()
    return root


def _beside(root: Path, env: dict[str, str]) -> dict[str, str]:
    """The environment of another data root on the same Redis db as `env`'s."""
    return taskd_env(root, env["TASKD_REDIS_URL"], {"TASKD_SCHEMA_PATH": env["TASKD_SCHEMA_PATH"]})


def _bridge_refuses(env: dict[str, str], holder: Path) -> None:
    """A bridge started with `env` exits 2 naming the data root `holder` that holds the db."""
    refused = subprocess.run(
        [sys.executable, "-m", "taskcli.cli", "bridge"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2, refused.stderr
    assert REFUSAL in refused.stderr and str(holder) in refused.stderr
    assert "one Redis db serves one data root" in refused.stderr


def test_a_second_data_root_on_the_same_db_refuses_and_leaves_the_first_alone(
    bridge: BridgeProc, drop: Drop, env: dict[str, str], data_root: Path, tmp_path: Path
) -> None:
    drop.write("long.SLOW", {"type": "SLOW", "steps": 40, "step-seconds": 0.1})
    running = drop.wait_state("long", "PROGRESS", timeout=15)
    root_b = _second_root(tmp_path)
    (root_b / "task_queue" / "ub" / "b1.SLOW").write_text(json.dumps({"type": "SLOW"}))
    env_b = _beside(root_b, env)
    _bridge_refuses(env_b, data_root)

    worker_b = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "worker",
            "-Q",
            "retrieve",
            "-n",
            "rootb@%h",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=REPO,
        env=env_b,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker_b.returncode != 0
    assert REFUSAL in worker_b.stdout + worker_b.stderr

    done = drop.wait_state("long", {"SUCCESS", "FAILURE"}, timeout=30)
    assert done["state"] == "SUCCESS" and done["job-id"] == running["job-id"]
    # B's file was never taken: the refusal came before any pass.
    assert json.loads((root_b / "task_queue" / "ub" / "b1.SLOW").read_text()) == {"type": "SLOW"}


def test_a_copy_of_the_data_root_is_another_root(
    bridge: BridgeProc, drop: Drop, env: dict[str, str], data_root: Path, tmp_path: Path
) -> None:
    """`cp -a` copies `.taskd/root-id` too; the copy's path still tells it apart."""
    drop.write("first.SLOW", {"type": "SLOW"})
    drop.wait_state("first", {"SUCCESS", "FAILURE"}, timeout=30)
    copy = _second_root(tmp_path)  # a copy: what matters of it is taskd's own folder
    shutil.copytree(data_root / ".taskd", copy / ".taskd", symlinks=True)
    assert (copy / ".taskd" / "root-id").read_bytes() == (
        data_root / ".taskd" / "root-id"
    ).read_bytes()
    _bridge_refuses(_beside(copy, env), data_root)


def test_a_bridge_stops_when_its_db_comes_to_serve_another_root(tmp_path: Path) -> None:
    """After Redis came back empty, whichever root claims it first keeps it; the other's bridge
    stops within a tick instead of cancelling the first one's jobs."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        root_a = _second_root(tmp_path / "a")
        proc = BridgeProc(taskd_env(root_a, server.url), tmp_path / "bridge-a.log")
        proc.start()
        client = redis.Redis.from_url(server.url)
        wait_until(lambda: client.get("taskd:root"), 30, what="bridge A to claim the db")
        claim = json.loads(client.get("taskd:root") or b"{}")
        assert claim["path"] == str(root_a)
        other = {"id": str(uuid.uuid4()), "path": "/srv/other-root", "host": "elsewhere"}
        client.set("taskd:root", json.dumps(other))
        assert proc.proc is not None
        assert proc.proc.wait(15) == 2
        log = (tmp_path / "bridge-a.log").read_text()
        assert "/srv/other-root" in log and log.count(REFUSAL) == 2  # the log line and stderr
    finally:
        server.stop()


def test_a_worker_puts_back_a_job_of_another_root_and_stops(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    root = _second_root(tmp_path / "w")
    env = taskd_env(root, server.url)
    worker = Worker(env, tmp_path / "worker.log", name="wroot", concurrency=1, queues="retrieve")
    worker.start()
    try:
        job_id = str(uuid.uuid4())
        spec = {
            "type": "SLOW",
            "user-id": "u",
            "task-id": "t",
            "fields": {},
            "retries": 0,
            "root": str(uuid.uuid4()),
        }
        from taskd.celeryconf import make_app
        from taskd.settings import Settings

        app = make_app(Settings(data_root=root, redis_url=server.url))
        app.send_task(
            "tests.support.slowtask.run",
            args=[spec],
            task_id=job_id,
            queue="retrieve",
            exchange="",
            routing_key="retrieve",
        )
        assert worker.proc is not None
        assert worker.proc.wait(60) is not None
        client = redis.Redis.from_url(server.url)
        queued = b"".join(client.lrange("retrieve", 0, -1))
        assert job_id.encode() in queued  # put back for the workers of its own root
        assert not (root / "runs.log").exists()  # and never run here
        assert "was published for another data root" in worker.log.read_text()
    finally:
        worker.stop()
        server.stop()


def test_status_and_show_say_when_the_db_serves_another_data_root(
    bridge: BridgeProc,
    env: dict[str, str],
    data_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root_b = _second_root(tmp_path)
    args = ["--data-root", str(root_b), "--redis-url", env["TASKD_REDIS_URL"]]
    assert main(["status", "--json", *args]) == 1
    said = json.loads(capsys.readouterr().out)["redis_error"]
    assert REFUSAL in said and str(data_root) in said
    assert main(["show", "some-job-id", *args]) == 1
    assert REFUSAL in capsys.readouterr().out
