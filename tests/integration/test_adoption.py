"""Resuming a file that says the bridge wrote it, against a real redis-server: its job, if Redis
knows it, must be this user's and this task's (file-contract.md, "New file or the bridge's own?").
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bridge.daemon import Bridge
from taskd import jobs, states
from tests.support.inproc import bridge_on
from tests.support.procs import RedisServer


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_server.db_url(11))
    yield conn
    conn.close()


@pytest.fixture
def bridge(tmp_path: Path, redis_server: RedisServer, client: redis.Redis) -> Bridge:
    client.delete(states.KEY_ROOT)  # each test's data root claims the db anew
    return bridge_on(tmp_path, redis_server, 11, client)


def _running(bridge: Bridge, job_id: str, name: str = "b-ABCDEFGHJK_40.SLOW", **extra: Any) -> Path:
    path = bridge.settings.task_queue / "4" / name
    fields: dict[str, Any] = {
        "type": "SLOW",
        "steps": 1,
        "task-id": "b",
        "state": "PROGRESS",
        "progress": 40,
        "job-id": job_id,
        "queued-at": "2026-12-01T10:00:00Z",
        "ticket": "ABCDEFGHJK",
        **extra,
    }
    path.write_text(json.dumps(fields))
    return path


def _state_of(bridge: Bridge) -> tuple[str, dict[str, Any]]:
    (path,) = [p for p in (bridge.settings.task_queue / "4").iterdir()]
    return path.name, json.loads(path.read_text())


def test_a_job_id_of_another_users_task_is_rejected(bridge: Bridge, client: redis.Redis) -> None:
    job_id = str(uuid.uuid4())
    client.hset(states.job_key(job_id), mapping={"user": "3", "task-id": "a", "type": "SLOW"})
    _running(bridge, job_id)
    bridge.rescan_once(0.0)
    name, fields = _state_of(bridge)
    assert fields["state"] == "REJECTED"
    assert fields["error"].startswith(f"field 'job-id': job {job_id} belongs to another task")
    assert name == "b-ERR.SLOW" and fields["steps"] == 1
    assert job_id not in bridge.table.by_job


def test_a_job_id_whose_result_alone_is_left_is_rejected(
    bridge: Bridge, client: redis.Redis
) -> None:
    # Another user's finished job: its record is gone, its result (with its output) is not.
    job_id = str(uuid.uuid4())
    meta = {"status": "SUCCESS", "result": {"fields": {"output": "/data/download/3/x.tar.gz"}}}
    client.set(states.meta_key(job_id), json.dumps(meta))
    _running(bridge, job_id)
    bridge.rescan_once(0.0)
    _, fields = _state_of(bridge)
    assert fields["state"] == "REJECTED" and "output" not in fields


def test_a_job_whose_record_redis_lost_is_resumed_when_its_worker_said_it_is_this_tasks(
    bridge: Bridge, client: redis.Redis
) -> None:
    # Redis restarted under the running job, then the bridge was killed: the job's state and
    # its worker's word of whose it is are all Redis knows.
    job_id = str(uuid.uuid4())
    meta = {"status": "SUCCESS", "result": {"progress": 100, "fields": {"steps-done": 1}}}
    client.set(states.meta_key(job_id), json.dumps(meta))
    client.set(states.whose_key(job_id), jobs.whose("4", "b"))
    path = _running(bridge, job_id)
    bridge.rescan_once(0.0)
    assert bridge.table.by_job[job_id].path == path


def test_a_job_its_worker_said_is_another_tasks_is_rejected(
    bridge: Bridge, client: redis.Redis
) -> None:
    job_id = str(uuid.uuid4())
    meta = {"status": "SUCCESS", "result": {"fields": {"output": "/data/download/3/x.tar.gz"}}}
    client.set(states.meta_key(job_id), json.dumps(meta))
    client.set(states.whose_key(job_id), jobs.whose("3", "b"))  # same task-id, another user
    _running(bridge, job_id)
    bridge.rescan_once(0.0)
    _, fields = _state_of(bridge)
    assert fields["state"] == "REJECTED" and "output" not in fields
    assert fields["error"].startswith(f"field 'job-id': job {job_id} belongs to another task")


def test_the_tasks_own_job_is_resumed(bridge: Bridge, client: redis.Redis) -> None:
    job_id = str(uuid.uuid4())
    client.hset(states.job_key(job_id), mapping={"user": "4", "task-id": "b", "type": "SLOW"})
    path = _running(bridge, job_id)
    bridge.rescan_once(0.0)
    assert bridge.table.by_job[job_id].path == path
    assert _state_of(bridge)[1]["state"] == "PROGRESS"


def test_a_job_redis_never_knew_is_resumed_to_be_published(bridge: Bridge) -> None:
    # As after `taskd retry`, or a Redis that lost everything: the file is the truth.
    job_id = str(uuid.uuid4())
    _running(bridge, job_id)
    bridge.rescan_once(0.0)
    assert job_id in bridge.table.by_job


def test_a_file_whose_job_was_cancelled_is_rejected_not_resumed(
    bridge: Bridge, client: redis.Redis
) -> None:
    """A job cancelled when its file left the queue: the file brought back cannot run it again
    (a worker drops it), so it ends REJECTED saying why, instead of waiting for it forever."""
    job_id = str(uuid.uuid4())
    client.set(states.cancel_key(job_id), "1")
    _running(bridge, job_id, **{"tmp-space": f"/data/work_space/4/b/{job_id}"})
    bridge.rescan_once(0.0)
    name, fields = _state_of(bridge)
    assert (name, fields["state"]) == ("b-ERR.SLOW", "REJECTED")
    assert fields["error"].startswith(f"job {job_id} was cancelled: this file left task_queue/")
    assert "tmp-space" not in fields  # removed with the job; the UI's fields stay
    assert (fields["steps"], fields["type"]) == (1, "SLOW")
    assert job_id not in bridge.table.by_job


def test_a_running_file_moved_out_and_straight_back_is_rejected_not_resumed(
    bridge: Bridge, client: redis.Redis, tmp_path: Path
) -> None:
    """Out and back within a moment: the bridge sees its file changed by someone else, cancels
    the job, and judges what came back before the cancel reached Redis; that file's job is the
    cancelled one, so it is rejected, not resumed to wait for a job no worker will run."""
    job_id = str(uuid.uuid4())
    client.hset(states.job_key(job_id), mapping={"user": "4", "task-id": "b", "type": "SLOW"})
    path = _running(bridge, job_id)
    bridge.rescan_once(0.0)
    assert job_id in bridge.table.by_job
    outside = tmp_path / "outside"
    outside.mkdir()
    path.rename(outside / path.name)
    (outside / path.name).rename(path)  # the same bytes back, a new ctime
    bridge.rescan_once(1.0)  # the rescan sees it changed
    bridge.rescan_once(2.0)  # and judges what it found
    name, fields = _state_of(bridge)
    assert (name, fields["state"]) == ("b-ERR.SLOW", "REJECTED")
    assert fields["error"].startswith(f"job {job_id} was cancelled")
    assert job_id not in bridge.table.by_job


def test_a_running_file_renamed_in_its_folder_is_rejected_as_cancelled(
    bridge: Bridge, client: redis.Redis
) -> None:
    """Names are the bridge's: the file it was writing is gone, so its job is cancelled, and the
    file under the new name, naming that job, ends REJECTED saying so."""
    job_id = str(uuid.uuid4())
    client.hset(states.job_key(job_id), mapping={"user": "4", "task-id": "b", "type": "SLOW"})
    path = _running(bridge, job_id)
    bridge.rescan_once(0.0)
    assert job_id in bridge.table.by_job
    path.rename(path.with_name("b.SLOW"))
    bridge.rescan_once(1.0)  # the rescan finds the tracked file gone, and a new one
    bridge.rescan_once(2.0)
    name, fields = _state_of(bridge)
    assert (name, fields["state"]) == ("b-ERR.SLOW", "REJECTED")
    assert fields["error"].startswith(f"job {job_id} was cancelled")
    assert job_id not in bridge.table.by_job
