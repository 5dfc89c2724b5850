"""A notify job whose worker died under it again and again, against a real redis-server: given
up, it leaves its task SUCCESS and says why in notify-error."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bridge import dispatch
from bridge.daemon import Bridge
from taskd import states
from tests.support.inproc import bridge_on, ended_with_mail
from tests.support.procs import RedisServer

DB = 13


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    yield from redis_server.emptied(DB)


@pytest.fixture
def bridge(tmp_path: Path, redis_server: RedisServer, client: redis.Redis) -> Bridge:
    return bridge_on(tmp_path, redis_server, DB, client, recovery_grace=0.5)


def test_a_notify_job_given_up_leaves_its_task_a_success_saying_why(
    bridge: Bridge, client: redis.Redis
) -> None:
    folder = bridge.settings.task_queue / "4"
    task = ended_with_mail(folder, "n2", "11111111-2222-4333-8444-666666666666")
    bridge.start()
    now = time.monotonic()
    bridge.mirror_once(now)
    (job,) = bridge.core.notifier.jobs.values()
    for n in range(dispatch.MAX_RECOVERIES + 1):  # its worker died under it every time
        dispatch.recover(bridge.core, job, 0, now + n)
    fields = json.loads(task.read_text())
    assert fields["state"] == states.SUCCESS
    assert "stopped" in fields["notify-error"]
    assert job.job_id not in bridge.core.notifier.jobs
