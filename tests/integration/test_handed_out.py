"""A job a worker took but never started, against a real redis-server: run again only when it
was handed out a whole recovery grace ago (kombu's index of when each message was handed out),
never the moment a live worker takes it after a long wait in its queue; the dead worker's copy
is dropped, so it is neither counted again nor delivered twice. A first try, a retry and a
notify mail alike."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bridge import dispatch
from bridge.daemon import Bridge
from taskcli.status import queue_names
from taskd import states
from tests.support.inproc import bridge_on, ended_with_mail
from tests.support.procs import RedisServer

DB = 12
GRACE = 0.5


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    yield from redis_server.emptied(DB)


@pytest.fixture
def bridge(tmp_path: Path, redis_server: RedisServer, client: redis.Redis) -> Bridge:
    return bridge_on(tmp_path, redis_server, DB, client, recovery_grace=GRACE)


def _queued(client: redis.Redis, queue: str = "retrieve") -> list[bytes]:
    names = queue_names([queue])[queue]
    return [m for name in names for m in client.lrange(name, 0, -1)]


def _take_like_a_worker(
    client: redis.Redis, handed_out_at: float, queue: str = "retrieve", tag: str = "tag-1"
) -> None:
    """What kombu does when a worker takes a message: off the list, into the unacked hash, and
    its delivery tag into the index of when each was handed out."""
    for name in queue_names([queue])[queue]:
        message = client.lpop(name)
        if message is not None:
            client.hset("unacked", tag, json.dumps([json.loads(message), "", queue]))
            client.zadd("unacked_index", {tag: handed_out_at})
            return
    raise AssertionError("no message to take")


def _published(bridge: Bridge, task_id: str) -> tuple[float, str]:
    """A SLOW task's file taken and its job published: the bridge's clock, and the job id."""
    (bridge.settings.task_queue / "4" / f"{task_id}.SLOW").write_text('{"type": "SLOW"}')
    bridge.start()
    now = time.monotonic()
    bridge.rescan_once(now)
    (job_id,) = bridge.core.table.by_job
    return now, job_id


def _attempt_of(message: bytes) -> int:
    """The retry a queued message carries (0 for a first try)."""
    body = json.loads(base64.b64decode(json.loads(message)["body"]))
    return int(body[0][0]["retries"])


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


def test_the_dead_workers_copy_is_dropped_so_a_long_queue_does_not_count_it_again(
    bridge: Bridge, client: redis.Redis
) -> None:
    now, _ = _published(bridge, "h2")
    _take_like_a_worker(client, handed_out_at=time.time() - 2 * GRACE)  # and died holding it
    bridge.mirror_once(now)
    now += 2 * GRACE
    bridge.mirror_once(now)
    assert len(_queued(client)) == 1  # sent again...
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0  # ...its copy gone
    for _ in range(6):  # the new copy waits in a long queue, many graces
        now += 2 * GRACE
        bridge.mirror_once(now)
    assert len(_queued(client)) == 1  # never sent a third time
    (tracked,) = bridge.core.table.by_job.values()  # nor given up as lost
    assert json.loads(tracked.path.read_text())["state"] == states.QUEUED


def test_a_retry_a_worker_took_and_died_holding_is_sent_again_as_that_retry(
    bridge: Bridge, client: redis.Redis
) -> None:
    now, job_id = _published(bridge, "h3")
    (first,) = _queued(client)
    client.delete(*queue_names(["retrieve"])["retrieve"])  # a worker ran the first try...
    retry = {"retries": 1, "retry-at": "2026-01-01T00:00:00Z", "error": "busy"}
    client.set(states.meta_key(job_id), json.dumps({"status": "RETRY", "result": retry}))
    bridge.mirror_once(now)  # ...which asked for a retry, due now: sent
    (second,) = _queued(client)
    assert (_attempt_of(first), _attempt_of(second)) == (0, 1)
    _take_like_a_worker(client, handed_out_at=time.time() - 2 * GRACE)  # and died holding it
    bridge.mirror_once(now)
    assert _queued(client) == []
    now += 2 * GRACE
    bridge.mirror_once(now)
    (third,) = _queued(client)
    assert _attempt_of(third) == 1
    assert client.hlen("unacked") == 0


def test_a_notify_mail_a_worker_took_and_died_holding_is_sent_again(
    bridge: Bridge, client: redis.Redis
) -> None:
    folder = bridge.settings.task_queue / "4"
    ended_with_mail(folder, "h4", "11111111-2222-4333-8444-777777777777")
    bridge.start()
    now = time.monotonic()
    bridge.mirror_once(now)
    assert len(_queued(client, "notify")) == 1
    _take_like_a_worker(client, time.time() - 2 * GRACE, queue="notify")  # and died holding it
    bridge.mirror_once(now)
    assert _queued(client, "notify") == []
    now += 2 * GRACE
    bridge.mirror_once(now)
    assert len(_queued(client, "notify")) == 1
    assert client.hlen("unacked") == 0


def test_a_started_job_whose_worker_died_is_run_again_once_and_its_copy_dropped(
    bridge: Bridge, client: redis.Redis
) -> None:
    now, job_id = _published(bridge, "h5")
    _take_like_a_worker(client, handed_out_at=time.time() - 2 * GRACE)
    client.set(states.meta_key(job_id), json.dumps({"status": "STARTED", "result": {}}))
    bridge.mirror_once(now)  # started (taken to hold its lease until a full look says not)
    bridge.mirror_once(now)  # started, and no lease: its worker died under it
    now += 2 * GRACE
    bridge.mirror_once(now)
    assert len(_queued(client)) == 1  # run again...
    assert client.hlen("unacked") == 0  # ...and the dead worker's copy dropped
    for _ in range(6):  # the new copy waits in a long queue
        now += 2 * GRACE
        bridge.mirror_once(now)
    assert len(_queued(client)) == 1  # the old copy is not taken for a new dead worker's


def test_a_job_given_up_as_its_workers_died_holding_it_leaves_no_copy_to_come_back(
    bridge: Bridge, client: redis.Redis
) -> None:
    now, _ = _published(bridge, "h6")
    for n in range(dispatch.MAX_RECOVERIES + 1):  # each copy taken by a worker that died
        _take_like_a_worker(client, handed_out_at=time.time() - 2 * GRACE, tag=f"tag-{n}")
        bridge.mirror_once(now)
        now += 2 * GRACE
        bridge.mirror_once(now)
    (path,) = (bridge.settings.task_queue / "4").iterdir()
    assert json.loads(path.read_text())["state"] == states.FAILURE  # given up...
    assert client.hlen("unacked") == 0 and _queued(client) == []  # ...and nothing left to run


def test_a_copy_of_an_earlier_try_is_dropped_not_taken_for_the_retry_now_due(
    bridge: Bridge, client: redis.Redis
) -> None:
    now, job_id = _published(bridge, "h7")
    # The first try asked for a retry, and its worker was killed before it acknowledged it.
    _take_like_a_worker(client, handed_out_at=time.time() - 2 * GRACE)
    retry = {"retries": 1, "retry-at": "2026-01-01T00:00:00Z", "error": "busy"}
    client.set(states.meta_key(job_id), json.dumps({"status": "RETRY", "result": retry}))
    bridge.mirror_once(now)  # the retry, due: sent, and it waits in a long queue
    for _ in range(3):
        now += 2 * GRACE
        bridge.mirror_once(now)
    (queued,) = _queued(client)  # not sent again: no worker took it
    assert _attempt_of(queued) == 1
    assert client.hlen("unacked") == 0  # the first try's copy will not come back to run again


def test_what_was_counted_for_a_job_goes_once_it_has_ended(
    bridge: Bridge, client: redis.Redis
) -> None:
    now, job_id = _published(bridge, "h8")
    _take_like_a_worker(client, handed_out_at=time.time() - 2 * GRACE)
    bridge.mirror_once(now)
    now += 2 * GRACE
    bridge.mirror_once(now)
    assert bridge.core.recoveries[job_id] == 1 and job_id in bridge.core.unstarted
    done = {"status": "SUCCESS", "result": {"progress": 100, "fields": {}}}
    client.set(states.meta_key(job_id), json.dumps(done))
    bridge.mirror_once(now)  # it ends
    assert job_id not in bridge.core.table.by_job
    now += bridge.settings.rescan_interval
    bridge.mirror_once(now)  # the next full look
    counted = (bridge.core.recoveries, bridge.core.unstarted, bridge.core.orphans)
    assert all(job_id not in counts for counts in counted)


def test_a_job_whose_lease_a_worker_holds_is_not_sent_again_whatever_its_state_says(
    bridge: Bridge, client: redis.Redis
) -> None:
    now, job_id = _published(bridge, "h9")
    _take_like_a_worker(client, handed_out_at=time.time() - 2 * GRACE)
    client.set(states.claim_key(job_id), "w1@h/42/abcd", ex=60)  # it runs; its start unsaid
    for _ in range(3):
        bridge.mirror_once(now)
        now += 2 * GRACE
    bridge.mirror_once(now)
    assert _queued(client) == [] and client.hlen("unacked") == 1  # left to its worker
