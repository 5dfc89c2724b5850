"""Publisher against a real redis-server: what Redis knows of jobs, in one round trip."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bridge.model import Tracked
from bridge.publish import Publisher
from taskd import states
from taskd.celeryconf import publishing_app
from taskd.settings import Settings
from taskd.tasktypes import load_types
from tests.support.procs import SUPPORT_SCHEMAS, RedisServer


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_server.db_url(13))
    yield conn
    conn.close()


@pytest.fixture
def publisher(redis_server: RedisServer, client: redis.Redis) -> Publisher:
    settings = Settings(redis_url=redis_server.db_url(13))
    return Publisher(publishing_app(settings), client)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every packed command the Redis client sends from now on (a pipeline is one)."""
    out: list[bytes] = []
    original = redis.connection.Connection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        out.append(b"".join(command) if isinstance(command, list) else command)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)
    return out


def _task(job_id: str, tmp_path: Path) -> Tracked:
    # A queue no worker listens on, so the message stays where the test looks for it.
    slow = dataclasses.replace(load_types([SUPPORT_SCHEMAS])["SLOW"], queue="nobody-listens")
    fields = {"type": "SLOW", "task-id": job_id, "state": "QUEUED", "job-id": job_id}
    return Tracked("u", job_id, slow, tmp_path / f"{job_id}.SLOW", fields)


def test_known_reads_any_number_of_jobs_in_one_round_trip(
    publisher: Publisher, client: redis.Redis, sent: list[bytes]
) -> None:
    ids = [f"job-{i}" for i in range(2500)]  # more than one script call's worth
    client.set(states.meta_key("job-7"), json.dumps({"status": "PROGRESS", "result": {}}))
    client.hset(states.job_key("job-9"), "status", states.JOB_PUBLISHED)
    client.hset(states.job_key("job-1999"), mapping={"status": "publishing", "attempt": "2"})
    client.set(states.claim_key("job-1999"), "w1")
    client.set(states.claim_key("job-2"), "w2")
    sent.clear()  # what setting up the test sent
    known, run_id = publisher.known(ids)
    assert len(sent) == 1
    assert run_id
    assert known["job-7"].meta == {"status": "PROGRESS", "result": {}}
    assert known["job-9"].record == states.JOB_PUBLISHED and not known["job-9"].leased
    assert known["job-1"].record is None and known["job-1"].meta is None
    assert (known["job-1999"].record, known["job-1999"].attempt) == ("publishing", 2)
    assert known["job-1999"].leased and known["job-2"].leased
    assert sum(k.leased for k in known.values()) == 2
    assert sum(k.record is not None for k in known.values()) == 2


def test_a_published_job_is_recorded_and_found_in_its_queue(
    publisher: Publisher, client: redis.Redis, tmp_path: Path
) -> None:
    task = _task("job-queued-1", tmp_path)
    publisher.publish(task)
    assert client.hget(states.job_key("job-queued-1"), "status") == b"published"
    assert client.sismember(states.KEY_ACTIVE, "job-queued-1")
    assert publisher.in_flight(task)
    assert not publisher.in_flight(_task("job-never-sent", tmp_path))
    publisher.forget(["job-queued-1"])
    assert not client.exists(states.job_key("job-queued-1"))


def test_quiet_jobs_cost_only_their_state_and_come_back_when_it_appears(
    publisher: Publisher, client: redis.Redis, sent: list[bytes]
) -> None:
    from bridge.schedule import Known

    waiting = Known(states.JOB_PUBLISHED, None, attempt=0, leased=False)
    quiet = {f"quiet-{i}": waiting for i in range(200)}
    client.set(states.meta_key("quiet-5"), json.dumps({"status": "STARTED", "result": {}}))
    client.hset(states.job_key("hot-1"), "status", states.JOB_PUBLISHED)
    sent.clear()  # what setting up the test sent
    known, _ = publisher.known(["hot-1"], quiet)
    assert len(sent) == 1
    # The record and lease of the hot job only; the quiet ones cost their state's place alone.
    assert states.job_key("hot-1").encode() in sent[0]
    assert states.claim_key("hot-1").encode() in sent[0]
    assert all(states.job_key(q).encode() not in sent[0] for q in quiet)
    assert all(states.claim_key(q).encode() not in sent[0] for q in quiet)
    assert known["quiet-0"] is waiting  # nothing new: the very answer given
    assert known["quiet-5"].meta == {"status": "STARTED", "result": {}}
    assert known["quiet-5"].record == states.JOB_PUBLISHED
    assert known["hot-1"].record == states.JOB_PUBLISHED


def test_a_pass_of_jobs_is_sent_in_one_round_trip_with_their_sent_events(
    publisher: Publisher, client: redis.Redis, tmp_path: Path, sent: list[bytes]
) -> None:
    tasks = [_task(f"job-batch-{i}", tmp_path) for i in range(50)]
    publisher.publish_many(tasks[:1])  # the connection and the queue's declaration, once
    sent.clear()
    publisher.publish_many(tasks[1:])
    pushes = [c for c in sent if b"LPUSH" in c]
    assert len(pushes) == 1 and pushes[0].count(b"LPUSH") == 49  # one pipeline of messages
    assert pushes[0].count(b"PUBLISH") == 49  # and their task-sent events, for Flower
    assert len(sent) == 3  # recorded publishing, sent, recorded published
    assert all(publisher.in_flight(task) for task in tasks)
    publisher.forget([t.job_id for t in tasks])
