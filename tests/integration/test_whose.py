"""A worker says whose task its job is beside every state it stores, run by Celery itself
against a real redis-server: a Redis that restarted under a running job, losing the bridge's
record, knows it again with the job's next report or its outcome, so a bridge that resumes the
task's file then can tell the job is this task's and not another's (test_adoption.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from taskd import jobs, states
from tasks.base import Job
from tests.support.inproc import task_app
from tests.support.procs import RedisServer

BODIES: dict[str, Callable[[Job], dict[str, Any]]] = {}
SEEN: dict[str, Any] = {}


def _body(job: Job) -> dict[str, Any]:
    return BODIES[job.job_id](job)


@pytest.fixture
def app(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celery]:
    yield from task_app(redis_server.db_url(10), tmp_path, monkeypatch, "tests.whose", _body)


def _run(app: Celery, body: Callable[[Job], dict[str, Any]]) -> str:
    job_id = str(uuid.uuid4())
    BODIES[job_id] = body
    spec = {"type": "PACKMS", "user-id": "3", "task-id": "t1", "fields": {}}
    app.tasks["tests.whose"].apply(args=[spec], task_id=job_id)
    return job_id


def _whose(app: Celery, job_id: str) -> tuple[str, str] | None:
    return jobs.parse_whose(app.backend.client.get(states.whose_key(job_id)))


def test_a_job_says_whose_it_is_when_it_starts(app: Celery) -> None:
    def body(job: Job) -> dict[str, Any]:
        SEEN[job.job_id] = _whose(app, job.job_id)
        return {}

    job_id = _run(app, body)
    assert SEEN[job_id] == ("3", "t1")


def test_after_redis_lost_everything_the_next_report_says_whose_the_job_is(app: Celery) -> None:
    def body(job: Job) -> dict[str, Any]:
        app.backend.client.flushdb()  # a Redis that keeps nothing restarted under the job
        job.progress(50, force=True)
        SEEN[job.job_id] = _whose(app, job.job_id)
        return {}

    job_id = _run(app, body)
    assert SEEN[job_id] == ("3", "t1")


def test_after_redis_lost_everything_the_outcome_says_whose_the_job_is(app: Celery) -> None:
    def body(job: Job) -> dict[str, Any]:
        app.backend.client.flushdb()  # lost, and the job ends before it reports again
        return {}

    job_id = _run(app, body)
    assert app.backend.client.get(states.done_key(job_id)) is not None  # its outcome
    assert _whose(app, job_id) == ("3", "t1")


@pytest.mark.parametrize("raw", [None, b"", b"[1, 2]", b'["3"]', b"{", b'"3/t1"', b"[" * 5000])
def test_anything_else_stored_there_says_nothing(raw: bytes | None) -> None:
    assert jobs.parse_whose(raw) is None
