"""The bridge's own message building (bridge/wire.py) against Celery's `send_task`, on a real
redis-server: the same message in the same priority list, the same `task-sent` event on the
same topic, field for field, but for what is new each time (delivery tag, clock, timestamp)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bridge.wire import Wire
from taskd.celeryconf import kombu_priority, publishing_app
from taskd.settings import Settings
from tests.support.procs import RedisServer

DB = 14
QUEUE = "wire-parity"
LABEL = "{'user-id': '3', 'task-id': '0001', 'type': 'PACKMS'}"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    yield from redis_server.emptied(DB)


def _spec(n: int) -> dict[str, Any]:
    fields: dict[str, Any] = {"type": "PACKMS", "task-id": "0001"}
    if n:
        fields["mails"] = [f"m{i}" for i in range(n)]  # nested past Celery's repr levels
    return {"type": "PACKMS", "user-id": "3", "task-id": "0001", "fields": fields, "retries": 0}


def _by_celery(app: Any, job_id: str, spec: dict[str, Any], priority: int) -> None:
    app.send_task(
        "tasks.packms",
        args=[spec],
        task_id=job_id,
        queue=QUEUE,
        exchange="",
        routing_key=QUEUE,
        priority=priority,
        time_limit=600,
        soft_time_limit=540,
        kwargsrepr=LABEL,
    )


def _by_wire(app: Any, job_id: str, spec: dict[str, Any], priority: int) -> None:
    wire = Wire(app)
    with app.producer_or_acquire() as producer:
        wire.declare(producer)
        pipe = producer.channel.client.pipeline(transaction=False)
        wire.send(
            pipe,
            producer.channel,
            name="tasks.packms",
            job_id=job_id,
            arg=spec,
            queue=QUEUE,
            priority=priority,
            limits=(600, 540),
            kwargsrepr=LABEL,
        )
        pipe.execute()


def _decoded(raw: bytes) -> dict[str, Any]:
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    message["properties"].pop("delivery_tag")
    return message


def _sent(client: redis.Redis, how: Any, app: Any, job_id: str, n: int) -> tuple[Any, Any]:
    """The message `how` pushed, and the event it published (both decoded)."""
    listener = client.pubsub()
    # Pub/sub spans every database of the server, and workers of other tests share it: listen
    # only to this database's event topics (kombu prefixes them with `/<db>.`).
    listener.psubscribe(f"/{DB}.celeryev*")
    listener.get_message(timeout=1)
    how(app, job_id, _spec(n), kombu_priority(7))
    keys = [k for k in client.keys(f"{QUEUE}*") if not k.startswith(b"_kombu")]
    assert len(keys) == 1, keys
    message = _decoded(client.rpop(keys[0]))
    deadline, event = time.monotonic() + 5, None
    while event is None and time.monotonic() < deadline:
        got = listener.get_message(timeout=1)
        if got and got["type"] == "pmessage":
            event = (got["channel"], _decoded(got["data"]))
    listener.close()
    assert event is not None, "no task-sent event"
    for volatile in ("clock", "timestamp"):
        event[1]["body"].pop(volatile)
    return (keys[0], message), event


@pytest.mark.parametrize(
    "n", [0, 2, 400], ids=["flat args", "nested args", "args past the repr limit"]
)
def test_wire_sends_what_send_task_sends(
    redis_server: RedisServer, client: redis.Redis, n: int
) -> None:
    app = publishing_app(Settings(redis_url=redis_server.db_url(DB)))
    job_id = "5d0c1f7e-3a52-4bb0-8d65-0123456789ab"
    theirs = _sent(client, _by_celery, app, job_id, n)
    ours = _sent(client, _by_wire, app, job_id, n)
    assert ours == theirs
    (queue_key, message), (topic, event) = ours
    assert queue_key.startswith(QUEUE.encode()) and queue_key != QUEUE.encode()  # its priority
    assert message["headers"]["id"] == job_id and message["body"][0] == [_spec(n)]
    assert topic.endswith(b"celeryev/task.sent") and event["body"]["uuid"] == job_id
    app.close()
