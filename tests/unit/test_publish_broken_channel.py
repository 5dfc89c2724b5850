"""A broker channel broken under kombu (its connection gone after a Redis restart) is an outage
the loop waits out, never a job's error: it must not end a task or its notify mail."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu.exceptions import OperationalError

from bridge import publish
from bridge.core import REDIS_ERRORS
from bridge.model import Tracked
from bridge.publish import Publisher
from taskd.tasktypes import notify_type


class _Pipe:
    def __enter__(self) -> _Pipe:
        return self

    def __exit__(self, *_: Any) -> None:
        return None

    def __getattr__(self, _name: str) -> Any:
        return lambda *a, **k: []


class _Client:
    def pipeline(self, **_: Any) -> _Pipe:
        return _Pipe()


class _BrokenChannel:
    """What kombu's Redis channel does when its connection is None: AttributeError on use."""

    def conn_or_acquire(self) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'client'")


class _BrokenApp:
    def __init__(self) -> None:
        self._pool: Any = object()
        self.amqp = type("Amqp", (), {"_producer_pool": object()})()

    @contextlib.contextmanager
    def producer_or_acquire(self) -> Iterator[Any]:
        yield type("Producer", (), {"channel": _BrokenChannel()})()


class _Wire:
    def __init__(self, _app: Any) -> None:
        pass

    def declare(self, _producer: Any) -> None:
        pass


def test_a_broken_channel_is_an_outage_and_the_broker_is_reconnected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish, "Wire", _Wire)
    app = _BrokenApp()
    publisher = Publisher(app, _Client())  # type: ignore[arg-type]
    fields = {"job-id": "0b6e4c1e-5f5e-4f4c-9d37-6f0c2a7d9e11", "state": "QUEUED"}
    task = Tracked("3", "0001", notify_type("1"), tmp_path / "0001-0.X", fields)
    with pytest.raises(OperationalError) as caught:
        publisher.publish(task)
    assert isinstance(caught.value, REDIS_ERRORS)
    assert app._pool is None and app.amqp._producer_pool is None  # fresh connections next time
    assert not task.published
