"""A bridge whose Redis is down, refuses its password, or is no Redis at all: it says so at
WARNING, once, and /healthz answers 503 with role standby and that reason; when Redis comes up,
the bridge takes over and /healthz turns 200. SIGHUP stops it cleanly.

Real processes throughout: the bridge as a subprocess, redis-server on a free port, and for the
wrong port a TCP server that answers garbage or Python's HTTP server.
"""

from __future__ import annotations

import contextlib
import http.server
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Drop
from tests.e2e.test_http_metrics import get, health, samples
from tests.support.procs import (
    BridgeProc,
    RedisServer,
    free_port,
    stop_process,
    taskd_env,
    wait_until,
)

WINDOW_S = 4.0
"""How long a standby is watched for repeated lines: eight of its polls."""


@dataclass
class Standby:
    bridge: BridgeProc
    base: str
    data_root: Path

    def log(self) -> str:
        return self.bridge.log.read_text()

    def lines(self, needle: str) -> list[str]:
        return [line for line in self.log().splitlines() if needle in line]

    def standby_body(self) -> dict[str, object] | None:
        answer = get(self.base + "/healthz")
        if answer is None or answer[0] != 503:
            return None
        status, body = health(self.base)
        return body if status == 503 and body.get("role") == "standby" else None


def start_bridge(tmp_path: Path, url: str) -> Standby:
    data_root = tmp_path / "data"
    (data_root / "files").mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = taskd_env(data_root, url, {"TASKD_HTTP_PORT": str(port)})
    bridge = BridgeProc(env, tmp_path / "bridge.log")
    bridge.start()
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: get(base + "/healthz"), 30, interval=0.1, what="the HTTP endpoint")
    return Standby(bridge, base, data_root)


def said_once_at_warning(standby: Standby, needle: str) -> str:
    """The one line that names the reason, after a window of polls that must not repeat it."""
    wait_until(lambda: standby.lines(needle), 15, what=f"a line saying {needle!r}")
    time.sleep(WINDOW_S)  # the standby polls twice a second meanwhile: no line may repeat
    lines = standby.lines(needle)
    assert len(lines) == 1, lines
    assert " WARNING bridge.leader: " in lines[0]
    assert lines[0].endswith("standing by")
    return lines[0]


@pytest.fixture
def bridges() -> Iterator[list[BridgeProc]]:
    started: list[BridgeProc] = []
    yield started
    for bridge in started:
        bridge.stop()


def test_redis_down_is_named_and_the_bridge_takes_over_when_it_comes_up(
    tmp_path: Path, bridges: list[BridgeProc]
) -> None:
    redis = RedisServer(tmp_path / "redis")  # its port is free, and nothing listens there yet
    url = redis.url
    standby = start_bridge(tmp_path, url)
    bridges.append(standby.bridge)
    line = said_once_at_warning(standby, "no Redis answers")
    assert f"no Redis answers at {url}: connection refused; standing by" in line
    body = wait_until(standby.standby_body, 10, what="/healthz to report the standby")
    assert body["status"] == "standby"
    assert body["reason"] == f"no Redis answers at {url}: connection refused"
    assert body["redis"] is False
    values = samples(standby.base)
    assert values["taskd_bridge_active"] == 0 and values["taskd_redis_up"] == 0
    assert "another bridge" not in standby.log()

    redis.start()
    try:
        wait_until(lambda: health(standby.base)[0] == 200, 30, interval=0.1, what="/healthz 200")
        status, body = health(standby.base)
        assert (body["status"], body["role"]) == ("ok", "active")
        assert "taking over as the active bridge" in standby.log()
        assert samples(standby.base)["taskd_bridge_active"] == 1
        drop = Drop(standby.data_root, "r1")
        drop.write("up1.SLOW", {"type": "SLOW", "steps": 0})
        drop.wait_state("up1", "QUEUED", timeout=15)  # no worker here: taken is enough

        # SIGHUP (a closed terminal, a supervisor's reload) stops it cleanly, saying so once.
        proc = standby.bridge.proc
        assert proc is not None
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(15) == 0
        assert len(standby.lines("SIGHUP received: stopping")) == 1
    finally:
        redis.stop()


def test_a_standby_stopped_by_sighup_says_so_and_exits_0(
    tmp_path: Path, bridges: list[BridgeProc]
) -> None:
    standby = start_bridge(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    bridges.append(standby.bridge)
    wait_until(lambda: standby.lines("standing by"), 15, what="the standby")
    proc = standby.bridge.proc
    assert proc is not None
    proc.send_signal(signal.SIGHUP)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(15) == 0
    assert len(standby.lines("SIGHUP received: stopping")) == 1


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[int]:
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed; `make test` installs it"
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--requirepass", "right-password", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"-NOAUTH")
        except OSError:
            return False

    try:
        wait_until(answers, 10, what="redis-server with a password to answer")
        yield port
    finally:
        stop_process(proc)


@pytest.mark.parametrize("given", ["wrong-password", None], ids=["wrong", "missing"])
def test_a_password_redis_refuses_is_named_and_never_shown(
    tmp_path: Path, bridges: list[BridgeProc], redis_with_password: int, given: str | None
) -> None:
    auth = f":{given}@" if given else ""
    standby = start_bridge(tmp_path, f"redis://{auth}127.0.0.1:{redis_with_password}/0")
    bridges.append(standby.bridge)
    shown = f"redis://{':***@' if given else ''}127.0.0.1:{redis_with_password}/0"
    line = said_once_at_warning(standby, "refused the password")
    assert (
        f"Redis at {shown} refused the password (or needs one): set it in TASKD_REDIS_URL as "
        "redis://:PASSWORD@host:port/db"
    ) in line
    body = wait_until(standby.standby_body, 10, what="/healthz to report the standby")
    assert str(body["reason"]).startswith(f"Redis at {shown} refused the password")
    for text in (standby.log(), str(body), get(standby.base + "/metrics")):
        assert "wrong-password" not in str(text)
    assert "another bridge" not in standby.log()


class Garbage:
    """A TCP server that answers every connection with bytes no Redis would send."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = int(self.sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.recv(4096)
                    conn.sendall(b"\x16\x03\x01 hello, I am not Redis\r\n")
                except OSError:
                    continue

    def close(self) -> None:
        with contextlib.suppress(OSError):  # shutdown wakes the accept: a close alone does not
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)
        assert not self._thread.is_alive()


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class Http:
    """Python's own HTTP server: what a wrong port often turns out to be."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("kind", [Garbage, Http], ids=["garbage", "http"])
def test_a_port_that_is_not_redis_is_named(
    tmp_path: Path, bridges: list[BridgeProc], kind: type[Garbage] | type[Http]
) -> None:
    server = kind()
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        standby = start_bridge(tmp_path, url)
        bridges.append(standby.bridge)
        line = said_once_at_warning(standby, "does not speak the Redis protocol")
        assert (
            f"what answers at {url} does not speak the Redis protocol: is TASKD_REDIS_URL "
            "pointing at the right port?"
        ) in line
        body = wait_until(standby.standby_body, 10, what="/healthz to report the standby")
        assert "does not speak the Redis protocol" in str(body["reason"])
        assert "another bridge" not in standby.log()
    finally:
        server.close()
