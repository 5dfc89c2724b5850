"""The bridge's guarded Redis calls name what went wrong, once per outage and once per change."""

from __future__ import annotations

import logging

import pytest
import redis
from kombu.exceptions import OperationalError

from bridge import metrics
from bridge.core import RedisLink

URL = "redis://127.0.0.1:6390/0"


def _failing(exc: BaseException) -> object:
    def call() -> None:
        raise exc

    return call


def _link() -> RedisLink:
    return RedisLink(client=None, metrics=metrics.Metrics(1.0), url=URL)


def test_each_kind_of_failure_is_logged_once_and_named(caplog: pytest.LogCaptureFixture) -> None:
    link = _link()
    caplog.set_level(logging.WARNING, logger="bridge.core")
    down = redis.exceptions.ConnectionError(
        "Error 111 connecting to 127.0.0.1:6390. Connection refused."
    )
    auth = redis.exceptions.AuthenticationError("invalid username-password pair")
    now = 0.0
    for exc in (down, down, down, auth, auth):
        now += 100
        assert link.call(now, _failing(exc)) is None  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith(f"no Redis answers at {URL}")
    assert lines[1].startswith(f"Redis at {URL} refused the password")
    health = metrics.health(link.metrics.snapshot())[1]
    assert any("refused the password" in p for p in health["problems"])
    assert link.call(now + 100, lambda: 7) == 7
    assert metrics.health(link.metrics.snapshot())[1]["status"] == "ok"


def test_an_error_kombu_wrapped_is_named_by_its_cause(caplog: pytest.LogCaptureFixture) -> None:
    link = _link()
    caplog.set_level(logging.WARNING, logger="bridge.core")
    try:
        try:
            raise redis.exceptions.AuthenticationError("WRONGPASS invalid password")
        except redis.exceptions.RedisError as inner:
            raise OperationalError(str(inner)) from inner
    except OperationalError as wrapped:
        link.call(1.0, _failing(wrapped))  # type: ignore[arg-type]
    assert "refused the password" in caplog.records[0].getMessage()


def test_a_connection_closed_under_a_working_bridge_is_an_outage_not_another_service(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = _link()
    caplog.set_level(logging.WARNING, logger="bridge.core")
    link.call(1.0, _failing(redis.exceptions.ConnectionError("Connection closed by server.")))  # type: ignore[arg-type]
    assert caplog.records[0].getMessage().startswith(f"no Redis answers at {URL}: it closed")


def test_a_cause_wrapped_twice_and_an_error_answer_are_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from kombu.exceptions import BatchPublishError

    link = _link()
    caplog.set_level(logging.WARNING, logger="bridge.core")
    try:
        try:
            try:
                raise redis.exceptions.AuthenticationError("invalid password")
            except redis.exceptions.RedisError as inner:
                raise BatchPublishError("delivery is uncertain") from inner
        except BatchPublishError as middle:
            raise OperationalError("publishing failed part way") from middle
    except OperationalError as wrapped:
        link.call(1.0, _failing(wrapped))  # type: ignore[arg-type]
    oom = redis.exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'")
    try:
        raise OperationalError("wrapped") from oom
    except OperationalError as wrapped_oom:
        link.call(400.0, _failing(wrapped_oom))  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records]
    assert "refused the password" in lines[0]
    assert any("answered with an error: OOM command not allowed" in line for line in lines)
