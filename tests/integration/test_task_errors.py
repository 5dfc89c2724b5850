"""How a task's errors end its job, run by Celery itself against a real redis-server.

A bug (an exception no code expected) fails the job with a sentence naming it; only Redis or
the broker out of reach makes it wait and run again. Before, any exception while claiming the
job requeued it, so a job Redis answered nonsense for came back for ever.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu.exceptions
import pytest
import redis
from celery import Celery

from taskd import states
from tasks.base import Job
from tasks.errors import TaskFailed
from tests.support.inproc import task_app
from tests.support.procs import RedisServer

RAISED: dict[str, BaseException] = {}


def _body(job: Job) -> dict[str, Any]:
    raise RAISED[job.job_id]


@pytest.fixture
def app(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celery]:
    yield from task_app(redis_server.db_url(12), tmp_path, monkeypatch, "tests.raises", _body)


def _run(app: Celery, job_id: str) -> Any:
    spec = {"type": "PACKMS", "user-id": "3", "task-id": "t1", "fields": {}}
    return app.tasks["tests.raises"].apply(args=[spec], task_id=job_id)


def _done(app: Celery, job_id: str) -> dict[str, Any]:
    return dict(json.loads(app.backend.client.get(states.done_key(job_id))))


def test_a_bug_in_the_body_fails_the_job_with_a_sentence_not_a_traceback(app: Celery) -> None:
    job_id = str(uuid.uuid4())
    RAISED[job_id] = ValueError("max() arg is an empty sequence")
    result = _run(app, job_id)
    assert result.state == states.FAILURE
    error = _done(app, job_id)["error"]
    assert error.startswith(
        "internal error in PACKMS: ValueError: max() arg is an empty sequence; report it"
    )
    assert job_id in error and "Traceback" not in error


def test_redis_answering_nonsense_while_claiming_fails_the_job_instead_of_requeueing_it(
    app: Celery,
) -> None:
    job_id = str(uuid.uuid4())
    RAISED[job_id] = AssertionError("the body must not run")
    app.backend.client.hset(states.done_key(job_id), "not", "a string")  # GET: WRONGTYPE
    result = _run(app, job_id)
    assert result.state == states.FAILURE  # before: REJECTED with requeue, again and again
    error = _done(app, job_id)["error"]
    assert error.startswith("internal error in PACKMS: ResponseError: ") and "WRONGTYPE" in error


@pytest.mark.parametrize(
    "exc",
    [
        redis.exceptions.ConnectionError("Connection refused"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        kombu.exceptions.OperationalError("Error 111 connecting to broker"),
    ],
    ids=["redis connection", "redis timeout", "broker"],
)
def test_redis_or_the_broker_out_of_reach_waits_for_a_retry(
    app: Celery, exc: BaseException
) -> None:
    job_id = str(uuid.uuid4())
    RAISED[job_id] = exc
    result = _run(app, job_id)
    assert result.state == "IGNORED"  # ended here, to run again at retry-at
    meta = json.loads(app.backend.client.get(states.meta_key(job_id)))
    assert meta["status"] == states.RETRY
    assert app.backend.client.get(states.done_key(job_id)) is None


def test_a_users_mistake_is_one_warning_line_not_an_error_with_a_traceback(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = str(uuid.uuid4())
    RAISED[job_id] = TaskFailed("field 'files': /etc/passwd is outside the allowed roots")
    with caplog.at_level(logging.INFO):
        result = _run(app, job_id)
    assert result.state == states.FAILURE
    mine = [r for r in caplog.records if job_id in r.getMessage()]
    warnings = [r for r in mine if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "outside the allowed roots" in warnings[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.exc_info]
