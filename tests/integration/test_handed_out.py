"""A job a worker took but never started, against a real redis-server: run again only when it
was handed out a whole recovery grace ago (kombu's index of when each message was handed out),
never the moment a live worker takes it after a long wait in its queue."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bridge.daemon import Bridge
from taskcli.status import queue_names
from tests.support.inproc import bridge_on
from tests.support.procs import RedisServer

DB = 12
GRACE = 0.5


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    yield from redis_server.emptied(DB)


@pytest.fixture
def bridge(tmp_path: Path, redis_server: RedisServer, client: redis.Redis) -> Bridge:
    return bridge_on(tmp_path, redis_server, DB, client, recovery_grace=GRACE)


def _queued(client: redis.Redis) -> list[bytes]:
    names = queue_names(["retrieve"])["retrieve"]
    return [m for name in names for m in client.lrange(name, 0, -1)]


def _take_like_a_worker(client: redis.Redis, handed_out_at: float) -> None:
    """What kombu does when a worker takes a message: off the list, into the unacked hash, and
    its delivery tag into the index of when each was handed out."""
    for name in queue_names(["retrieve"])["retrieve"]:
        message = client.lpop(name)
        if message is not None:
            client.hset("unacked", "tag-1", json.dumps([json.loads(message), "", "retrieve"]))
            client.zadd("unacked_index", {"tag-1": handed_out_at})
            return
    raise AssertionError("no message to take")


def test_a_job_taken_after_a_long_wait_is_not_run_again_until_held_a_whole_grace(
    bridge: Bridge, client: redis.Redis
) -> None:
    (bridge.settings.task_queue / "4" / "h1.SLOW").write_text('{"type": "SLOW"}')
    bridge.start()
    now = time.monotonic()
    bridge.rescan_once(now)
    assert len(_queued(client)) == 1  # published, waiting for a worker
    bridge.mirror_once(now)  # not started: its wait is timed from here
    now += 2 * GRACE  # a long wait in its queue
    _take_like_a_worker(client, handed_out_at=time.time())  # a live worker takes it now
    bridge.mirror_once(now)
    assert _queued(client) == []  # not sent again: it was handed out a moment ago
    client.zadd("unacked_index", {"tag-1": time.time() - 2 * GRACE})  # ...and never started
    now += 2 * GRACE
    bridge.mirror_once(now)
    assert len(_queued(client)) == 1  # its worker died holding it: sent again
