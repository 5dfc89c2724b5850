"""A standby says why it waits: another bridge, or what is wrong with Redis, once per change,
and /healthz says it too. Redis is a scripted fake here; tests/e2e/test_health_redis.py runs the
real cases."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import redis

from bridge import metrics
from bridge.leader import Leadership, explain
from bridge.metrics import Metrics

URL = "redis://:***@db.example:6380/2"


class Scripted:
    """A Redis client whose `eval` answers (or raises) what the test says next."""

    def __init__(self) -> None:
        self.answer: Any = 1
        self.holder: bytes | None = None

    def eval(self, *args: Any) -> Any:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def get(self, key: str) -> bytes | None:
        return self.holder


@pytest.mark.parametrize(
    ("exc", "kind", "words"),
    [
        (
            redis.exceptions.ConnectionError(
                "Error 111 connecting to db.example:6380. Connection refused."
            ),
            "down",
            f"no Redis answers at {URL}: connection refused",
        ),
        (
            redis.exceptions.ConnectionError(
                "Error -2 connecting to nohost:6379. Name or service not known."
            ),
            "down",
            f"no Redis answers at {URL}: name or service not known",
        ),
        (
            redis.exceptions.ConnectionError(
                "Error while reading from 127.0.0.1:6379 : (104, 'Connection reset by peer')"
            ),
            "down",
            f"no Redis answers at {URL}: connection reset by peer",
        ),
        (
            redis.exceptions.TimeoutError("Timeout connecting to server"),
            "timeout",
            f"no Redis answers at {URL}: timed out",
        ),
        (
            redis.exceptions.TimeoutError("Timeout reading from socket"),
            "timeout",
            "is TASKD_REDIS_URL pointing at the right port?",
        ),
        (
            redis.exceptions.AuthenticationError("invalid username-password pair"),
            "auth",
            f"Redis at {URL} refused the password (or needs one): set it in TASKD_REDIS_URL "
            "as redis://:PASSWORD@host:port/db",
        ),
        (
            redis.exceptions.AuthenticationError("Authentication required."),
            "auth",
            "(Redis said: Authentication required.)",
        ),
        (
            redis.exceptions.InvalidResponse("Protocol Error: b'HTTP/1.1 400 Bad Request'"),
            "not-redis",
            f"what answers at {URL} does not speak the Redis protocol: is TASKD_REDIS_URL "
            "pointing at the right port? (it answered b'HTTP/1.1 400 Bad Request')",
        ),
        (
            redis.exceptions.ConnectionError("Connection closed by server."),
            "not-redis",
            "does not speak the Redis protocol",
        ),
        (
            redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
            "loading",
            "is still loading",
        ),
        (
            redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
            "replica",
            "read-only replica",
        ),
        (
            redis.exceptions.ResponseError("OOM command not allowed"),
            "refused",
            f"Redis at {URL} refused the bridge's lease: OOM command not allowed",
        ),
    ],
)
def test_each_redis_problem_is_named_for_what_it_is(exc: Exception, kind: str, words: str) -> None:
    got_kind, text = explain(exc, URL)  # type: ignore[arg-type]
    assert got_kind == kind
    assert words in text


def test_the_password_never_shows(tmp_path: Path) -> None:
    client = Scripted()
    client.answer = redis.exceptions.AuthenticationError("invalid username-password pair")
    m = Metrics(1.0)
    leader = Leadership(client, tmp_path, "redis://:s3cret@127.0.0.1:6379/0", m)
    assert not leader.acquire_once()
    leader.release()
    reason = metrics.health(m.snapshot())[1]["reason"]
    assert "s3cret" not in reason and "redis://:***@127.0.0.1:6379/0" in reason


def test_a_standby_logs_each_reason_once_and_its_take_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = Scripted()
    m = Metrics(1.0)
    leader = Leadership(client, tmp_path, "redis://127.0.0.1:1/0", m)
    assert metrics.health(m.snapshot())[1]["role"] == "standby"  # until the first try
    caplog.set_level(logging.INFO, logger="bridge")
    script: list[Any] = [
        *[redis.exceptions.ConnectionError("Error 111 connecting to x:1. Connection refused.")]
        * 10,
        *[redis.exceptions.AuthenticationError("Authentication required.")] * 10,
        *[0] * 10,  # another bridge holds the lease
    ]
    for answer in script:
        client.answer = answer
        client.holder = b"other-host/4242/abcd1234"
        assert not leader.acquire_once()
    lines = [r for r in caplog.records if r.name == "bridge.leader"]
    assert [r.levelno for r in lines] == [logging.WARNING] * 3
    assert "no Redis answers at redis://127.0.0.1:1/0: connection refused" in lines[0].getMessage()
    assert "refused the password" in lines[1].getMessage()
    assert "another bridge (other-host/4242/abcd1234) is active on" in lines[2].getMessage()
    assert all(r.getMessage().endswith("standing by") for r in lines)
    body = metrics.health(m.snapshot())[1]
    assert body["status"] == "standby" and "other-host/4242/abcd1234" in body["reason"]
    assert body["redis"] is True

    client.answer = 1
    assert leader.acquire_once()
    leader.release()
    assert "taking over" in caplog.records[-1].getMessage()
    ok, body = metrics.health(m.snapshot())
    assert ok and body["role"] == "active"


def test_a_bridge_that_gets_the_lease_at_once_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    leader = Leadership(Scripted(), tmp_path, "redis://127.0.0.1:1/0", Metrics(1.0))
    assert leader.acquire(threading.Event())
    assert not [r for r in caplog.records if r.name == "bridge.leader"]
    leader.release()


def test_a_second_bridge_on_this_host_waits_on_the_lock_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = Leadership(Scripted(), tmp_path, "redis://127.0.0.1:1/0")
    assert first.acquire_once()
    caplog.set_level(logging.INFO, logger="bridge")
    m = Metrics(1.0)
    client = Scripted()
    client.holder = first.token.encode()
    second = Leadership(client, tmp_path, "redis://127.0.0.1:1/0", m)
    for _ in range(5):
        assert not second.acquire_once()
    client.get = lambda key: (_ for _ in ()).throw(  # type: ignore[method-assign]
        redis.exceptions.ConnectionError("Error 111 connecting to x:1. Connection refused.")
    )
    for _ in range(5):
        assert not second.acquire_once()  # Redis away: the lock file still says enough
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.leader"]
    assert len(lines) == 2
    assert f"another bridge ({first.token}) on this host is active" in lines[0]
    assert "another bridge on this host is active" in lines[1]
    first.release()
    assert second.acquire_once()
    second.release()
