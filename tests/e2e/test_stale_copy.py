"""A copy of a try that already asked for a retry, delivered to a real worker: dropped, never
run, and the RETRY that says when the next try is due stays as it was (the worker stores
STARTED only once it knows its delivery is the try due)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import redis

from bridge.model import Tracked
from bridge.publish import Publisher
from taskd import states
from taskd.celeryconf import publishing_app
from taskd.settings import Settings
from taskd.tasktypes import load_types
from tests.conftest import Drop
from tests.support.procs import SUPPORT_SCHEMAS, Worker, wait_until


def test_a_copy_of_a_try_that_asked_for_a_retry_is_dropped_not_run(
    worker: Worker, env: dict[str, str], data_root: Path, drop: Drop
) -> None:
    settings = Settings.from_env(env)
    client = redis.Redis.from_url(settings.redis_url)
    app = publishing_app(settings)
    job_id = str(uuid.uuid4())
    retry = {"retries": 1, "retry-at": "2099-01-01T00:00:00Z", "error": "busy"}
    stored = json.dumps({"status": states.RETRY, "result": retry, "task_id": job_id})
    client.set(states.meta_key(job_id), stored)  # the first try asked for a second, far off
    fields = {"type": "SLOW", "steps": 0, "task-id": "s1", "job-id": job_id}
    task = Tracked(drop.user, "s1", load_types([SUPPORT_SCHEMAS])["SLOW"], drop.dir, fields)
    try:
        Publisher(app, client).publish(task, attempt=0)  # and a copy of the first try comes
        wait_until(
            lambda: f"job {job_id}: a later try is already scheduled" in worker.log.read_text(),
            30,
            what="the worker to drop the copy",
        )
        assert client.get(states.meta_key(job_id)) == stored.encode()  # not STARTED
        assert not [line for line in drop.runs() if line.startswith(job_id)]  # never ran
    finally:
        client.delete(states.meta_key(job_id), states.job_key(job_id))
        client.srem(states.KEY_ACTIVE, job_id)
        client.close()
        app.close()
