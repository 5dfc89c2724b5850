"""`taskd status`, `show` and `submit` against the live system: redis, a worker, the bridge."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from taskcli.cli import main
from taskcli.status import queue_depths
from tests.conftest import Drop
from tests.support.procs import (
    REPO,
    SUPPORT_SCHEMAS,
    BridgeProc,
    RedisServer,
    status_json,
    wait_until,
)

FUTURE = "2099-01-01T00:00:00Z"


def own(counts: dict[str, int]) -> dict[str, int]:
    """A user's own counts: cancelled tasks are counted for all users (their files are gone)."""
    return {state: n for state, n in counts.items() if state != "CANCELLED"}


def cancelled_total(env: dict[str, str], user: str) -> int:
    return int(status_json(env, "--user", user)["total"].get("CANCELLED", 0))


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> list[str]:
    """`main(argv)` in this process reads the same settings as the subprocesses."""
    monkeypatch.setenv("TASKD_SCHEMA_PATH", str(SUPPORT_SCHEMAS))
    return ["--data-root", env["TASKD_DATA_ROOT"], "--redis-url", env["TASKD_REDIS_URL"]]


def test_status_counts_every_state_and_shows_workers_and_running_tasks(
    bridge: BridgeProc, drop: Drop, env: dict[str, str]
) -> None:
    drop.write("q1.SLOW", {"type": "SLOW", "run-at": FUTURE})
    drop.write("r1.SLOW", {"type": "SLOW", "steps": 300, "step-seconds": 0.2})
    drop.write("s1.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0})
    drop.write("f1.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0, "fail": "boom"})
    drop.write("b1.SLOW", {"type": "SLOW", "steps": "many"})
    drop.wait_state("q1", "QUEUED")
    drop.wait_state("s1", "SUCCESS")
    drop.wait_state("f1", "FAILURE")
    drop.wait_state("b1", "REJECTED")
    job = drop.wait_state("r1", "PROGRESS")["job-id"]

    def worker_runs_it() -> dict[str, Any] | None:
        seen = status_json(env, "--user", drop.user)
        return seen if any(job in jobs for jobs in seen["workers"].values()) else None

    status = wait_until(worker_runs_it, 30, interval=0.2, what="the worker to list the job")
    expected = {"QUEUED": 1, "PROGRESS": 1, "SUCCESS": 1, "FAILURE": 1, "REJECTED": 1}
    assert own(status["total"]) == expected
    assert own(status["today"]) == expected
    assert status["redis_error"] is None
    assert "w1" in [w.split("@")[0] for w in status["workers"]]
    assert set(status["queues"]) >= {"retrieve", "pack", "notify"}
    assert all(isinstance(n, int) and n >= 0 for n in status["queues"].values())
    [running] = status["running"]
    assert (running["task_id"], running["job_id"], running["type"]) == ("r1", job, "SLOW")
    assert 0 <= running["progress"] < 100 and running["worker"].startswith("w1@")
    # q1 waits for its run-at: it is queued but not late, so nothing is the oldest waiting.
    assert status["oldest_queued"] is None

    # Deleting the file cancels the task: it leaves the files and counts as cancelled.
    before = cancelled_total(env, drop.user)
    (drop.find("r1") or Path("/nonexistent")).unlink()
    wait_until(
        lambda: cancelled_total(env, drop.user) == before + 1,
        30,
        interval=0.2,
        what="the cancel to be counted",
    )
    after = status_json(env, "--user", drop.user)
    assert "PROGRESS" not in after["total"] and after["running"] == []
    assert after["today"]["CANCELLED"] >= 1


def test_status_watch_prints_json_lines_until_sigterm(
    redis_server: RedisServer, drop: Drop, env: dict[str, str]
) -> None:
    drop.write("w1.SLOW", {"type": "SLOW"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskcli.cli", "status", "--watch", "--json"]
        + ["--interval", "0.2", "--user", drop.user],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    # Cancels are counted across users (their files are gone); the rest is this user's.
    assert [own(line["total"]) for line in lines] == [{"NEW": 1}, {"NEW": 1}]


def test_status_says_when_redis_cannot_be_asked(drop: Drop, env: dict[str, str]) -> None:
    drop.write("n1.SLOW", {"type": "SLOW"})
    done = subprocess.run(
        [sys.executable, "-m", "taskcli.cli", "status", "--json", "--user", drop.user]
        + ["--redis-url", "redis://127.0.0.1:1/0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1
    status = json.loads(done.stdout)
    assert status["total"] == {"NEW": 1} and "Connection" in status["redis_error"]


def test_submit_then_show_by_file_and_by_job_id(
    bridge: BridgeProc,
    drop: Drop,
    cli_env: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "t1.SLOW"
    source.write_text('{"type": "SLOW", "steps": 1, "step-seconds": 0,}')
    assert main(["submit", drop.user, str(source), *cli_env]) == 0
    assert capsys.readouterr().out.strip() == str(drop.dir / "t1.SLOW")
    assert main(["submit", drop.user, str(source), *cli_env]) == 1  # taken already or there
    capsys.readouterr()
    done = drop.wait_state("t1", "SUCCESS")
    assert not [p for p in drop.dir.iterdir() if p.name.startswith(".")]

    assert main(["show", done["job-id"], *cli_env]) == 0
    by_job = json.loads(capsys.readouterr().out)
    assert by_job["path"] == str(drop.find("t1"))
    assert by_job["file"]["state"] == "SUCCESS"
    assert by_job["celery"]["status"] == "SUCCESS"

    assert main(["show", str(drop.find("t1")), *cli_env]) == 0
    assert json.loads(capsys.readouterr().out) == by_job

    assert main(["show", "no-such-job", *cli_env]) == 1


def test_submit_refuses_a_bad_user_or_name(
    data_root: Path, cli_env: list[str], tmp_path: Path
) -> None:
    source = tmp_path / "t1.SLOW"
    source.write_text('{"type": "SLOW"}')
    assert main(["submit", "../x", str(source), *cli_env]) == 2
    lower = tmp_path / "t1.slow"
    lower.write_text("{}")
    assert main(["submit", "u_bad_name", str(lower), *cli_env]) == 2
    assert not (data_root / "task_queue" / "u_bad_name" / "t1.slow").exists()


def test_queue_depths_sum_the_priority_sub_queues(redis_server: RedisServer) -> None:
    # A database of its own: the session's workers consume database 0.
    client = redis.Redis(port=redis_server.port, db=15)
    try:
        client.rpush("retrieve", "a", "b")
        client.rpush("retrieve:3", "c")
        client.rpush("pack:9", "d")
        client.hset("unacked", "tag1", "e")
        depths, unacked = queue_depths(client, ["retrieve", "pack", "notify"])
        assert depths == {"notify": 0, "pack": 1, "retrieve": 3}
        assert unacked == 1
    finally:
        client.flushdb()
        client.close()


def test_submit_and_status_refuse_a_data_root_that_is_not_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo" / "data"
    source = tmp_path / "t1.SLOW"
    source.write_text('{"type": "SLOW"}')
    assert main(["submit", "u1", str(source), "--data-root", str(missing)]) == 2
    assert main(["status", "--data-root", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count(f"TASKD_DATA_ROOT={str(missing)!r} does not exist") == 2
    assert not missing.exists() and not missing.parent.exists()
