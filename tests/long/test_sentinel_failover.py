"""Redis failover under load: a master, its replica and three sentinels on free ports; a bridge
and two workers through `sentinel://` with TASKD_REDIS_MASTER; 50 tasks with notify mails
queued and running, then `kill -9` of the master. The sentinels elect the replica, and every
task ends SUCCESS, each with one mail, and Flower (through the sentinels too) shows the last;
the time from the kill to the mirror writing again is printed (docs/operations.md states it)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import Drop
from tests.e2e.test_flower import AUTH, Flower
from tests.support.procs import (
    REPO,
    BridgeProc,
    Worker,
    free_port,
    running,
    stop_process,
    taskd_env,
    wait_until,
)
from tests.support.redisvariants import MASTER_NAME, SentinelSet, sentinel_set
from tests.support.smtp import SmtpServer

TASKS = 50


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    found = sentinel_set(tmp_path / "redis")
    started = []
    try:
        for server in found.all():
            server.start()
            started.append(server)
        wait_until(lambda: _replicas_seen(found), 30, what="the sentinels to see the replica")
        yield found
    finally:
        for server in started:
            server.stop()


def _replicas_seen(found: SentinelSet) -> bool:
    for sentinel in found.sentinels:
        client = redis.Redis(port=sentinel.port, socket_timeout=1)
        try:
            if not client.sentinel_slaves(MASTER_NAME):
                return False
        except redis.RedisError:
            return False
        finally:
            client.close()
    return True


def _master_port(found: SentinelSet) -> int | None:
    client = redis.Redis(port=found.sentinels[0].port, socket_timeout=1)
    try:
        return int(client.sentinel_get_master_addr_by_name(MASTER_NAME)[1])
    except (redis.RedisError, TypeError):
        return None
    finally:
        client.close()


@contextlib.contextmanager
def _flower(env: dict[str, str], log: Path, port: int) -> Iterator[None]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskcli.cli", "flower", f"--port={port}"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield
    finally:
        stop_process(proc)


def _latest_write(drop: Drop) -> float:
    """When a task file was last written (temp files come and go meanwhile: skipped)."""
    latest = 0.0
    for entry in os.scandir(drop.dir):
        if entry.name.startswith("."):
            continue
        with contextlib.suppress(FileNotFoundError):
            latest = max(latest, entry.stat(follow_symlinks=False).st_mtime)
    return latest


@pytest.mark.timeout(600)
def test_a_failover_loses_no_task_and_sends_no_mail_twice(
    sentinels: SentinelSet, tmp_path: Path, smtp_server: SmtpServer
) -> None:
    root = tmp_path / "data"
    for sub in ("task_queue", "files", "mail_db"):
        (root / sub).mkdir(parents=True)
    env = taskd_env(
        root,
        sentinels.url,
        {
            "TASKD_REDIS_MASTER": MASTER_NAME,
            "TASKD_RESCAN_INTERVAL": "2",
            "TASKD_RECOVERY_GRACE": "6",
            "TASKD_SMTP_URL": smtp_server.url,
            "TASKD_MAIL_FROM": "taskd@test.example",
            "TASKD_NOTIFY_RETRY_INTERVALS": " ".join(["1"] * 30),
        },
    )
    drop = Drop(root, "u1")
    workers = [
        Worker(
            env, root / f"worker{n}.log", name=f"wfail{n}", concurrency=3, queues="retrieve,notify"
        )
        for n in range(2)
    ]
    flower_port = free_port()
    flower_env = {**env, "FLOWER_BASIC_AUTH": AUTH}
    flower = Flower(flower_port)
    with (
        running(workers[0]),
        running(workers[1]),
        running(BridgeProc(env, root / "bridge.log")),
        _flower(flower_env, root / "flower.log", flower_port),
    ):
        for n in range(TASKS):
            mail = f"f{n}@test.example"
            (drop.dir / f"f{n}.notify.eml").write_text(
                f"From: taskd@test.example\nTo: {mail}\nSubject: f{n}\n\ndone\n"
            )
            drop.write(
                f"f{n}.SLOW",
                {"type": "SLOW", "steps": 10, "step-seconds": 0.3, "notify": [mail]},
            )
        wait_until(
            lambda: sum(drop.fields(f"f{n}").get("state") == "SUCCESS" for n in range(TASKS)) >= 5,
            120,
            what="the first tasks to end",
        )
        old = sentinels.master.port
        killed_at = time.time()
        sentinels.master.kill()
        wait_until(
            lambda: _master_port(sentinels) == sentinels.replica.port, 60, what="a new master"
        )
        elected_at = time.time()
        wait_until(lambda: _latest_write(drop) > elected_at, 60, what="the mirror to write again")
        resumed_at = _latest_write(drop)

        def settled() -> bool:
            return all(
                drop.fields(f"f{n}").get("state") == "SUCCESS"
                and drop.fields(f"f{n}").get("notified-at")
                for n in range(TASKS)
            )

        wait_until(settled, 300, interval=1.0, what="every task to end and send its mail")
        # Flower follows the new master too: it sees a job that ended after the failover.
        last = drop.fields(f"f{TASKS - 1}")["job-id"]
        wait_until(
            lambda: (flower.get(f"/api/task/info/{last}")[1] or {}).get("state") == "SUCCESS",
            60,
            interval=0.5,
            what="Flower to show a job that ended after the failover",
        )
    assert old != sentinels.replica.port
    for n in range(TASKS):
        assert len(smtp_server.handler.to(f"f{n}@test.example")) == 1, n
    print(
        f"\nfailover: elected {elected_at - killed_at:.1f} s after the kill, "
        f"mirror writing again {resumed_at - elected_at:.1f} s after the election"
    )
