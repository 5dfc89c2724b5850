"""A bridge run in the test's own process against a real redis-server: its passes are called
one by one, so a test sets Redis up between them. And a taskd task body run by Celery in the
test's process (`apply`), against the same real Redis."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from bridge.daemon import Bridge
from taskd import states
from taskd.celeryconf import make_app, publishing_app
from taskd.settings import Settings
from taskd.tasktypes import load_types
from tasks.base import Job, TaskdTask
from tests.support.procs import SUPPORT_SCHEMAS, RedisServer


def bridge_on(
    data_root: Path, redis_server: RedisServer, db: int, client: redis.Redis, **settings: Any
) -> Bridge:
    """A bridge on `data_root` and Redis database `db`, user 4's folder made, the test types."""
    url = redis_server.db_url(db)
    config = Settings(data_root=data_root, redis_url=url, settle=0.0, **settings)
    (config.task_queue / "4").mkdir(parents=True)
    return Bridge(config, load_types([SUPPORT_SCHEMAS]), publishing_app(config), client)


def ended_with_mail(folder: Path, task_id: str, job_id: str) -> Path:
    """A SLOW task that ended well, its notify mail beside it: what the notify pass sends."""
    (folder / f"{task_id}.notify.eml").write_text("To: a@example.com\nSubject: done\n\ndone\n")
    task = folder / f"{task_id}-ABCDEFGHJK_100.SLOW"
    task.write_text(
        json.dumps(
            {
                "type": "SLOW",
                "task-id": task_id,
                "state": states.SUCCESS,
                "progress": 100,
                "job-id": job_id,
                "queued-at": "2026-12-01T10:00:00Z",
                "finished-at": "2026-12-01T10:01:00Z",
                "ticket": "ABCDEFGHJK",
            }
        )
    )
    return task


def task_app(
    url: str,
    data_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    body: Callable[[Job], dict[str, Any]],
) -> Iterator[Celery]:
    """A Celery app on Redis `url` whose task `name` runs `body` as a taskd task on
    `data_root` (for a fixture to yield from)."""
    settings = Settings(data_root=data_root, redis_url=url)
    monkeypatch.setattr(TaskdTask, "_settings", settings)
    app = make_app(settings)
    app.task(base=TaskdTask, name=name)(body)
    app.backend.client.delete(states.KEY_ROOT)  # each test's data root claims the db anew
    yield app
    app.close()
