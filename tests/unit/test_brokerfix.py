"""The narrow kombu fix: a channel whose transport was detached says "Redis is away"."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import redis
from kombu import Connection
from kombu.transport import redis as kombu_redis

import tasks.app  # noqa: F401 - applies the fix, as every `celery -A tasks` process does
from tasks import brokerfix


def test_a_detached_transport_is_a_connection_error_not_an_attribute_error() -> None:
    detached = SimpleNamespace(connection=SimpleNamespace(client=None, default_port=6379))
    with pytest.raises(redis.exceptions.ConnectionError, match="closed"):
        kombu_redis.Channel._connparams(detached)  # type: ignore[arg-type]
    # What the channel's callers catch: the transport's connection errors.
    assert redis.exceptions.ConnectionError in kombu_redis.Transport.connection_errors


def test_an_attached_transport_gets_its_parameters_as_before() -> None:
    connection = Connection("redis://:pw@redis.example:6390/2")
    channel = kombu_redis.Channel.__new__(kombu_redis.Channel)  # not connected
    channel.connection = connection.transport
    params = channel._connparams()
    assert (params["host"], params["port"], params["db"]) == ("redis.example", 6390, 2)
    connection.collect()  # what Celery's consumer does when the broker is lost
    with pytest.raises(redis.exceptions.ConnectionError):
        channel._connparams()


def test_applying_twice_wraps_once() -> None:
    before = kombu_redis.Channel._connparams
    brokerfix.apply()
    assert kombu_redis.Channel._connparams is before


def test_flowers_event_retry_pause_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    import flower.events

    monkeypatch.setattr(flower.events, "time", time)
    brokerfix.apply()
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    flower.events.time.sleep(512)
    flower.events.time.sleep(1)
    assert slept == [brokerfix.FLOWER_RETRY_MAX_S, 1]
    assert flower.events.time.monotonic is time.monotonic
