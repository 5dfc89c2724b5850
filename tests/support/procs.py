"""Real processes for integration and end-to-end tests: redis-server, Celery workers, the bridge.

Each is started on a free port or a temporary directory, waited for until it answers, and
stopped with SIGTERM then SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SUPPORT_SCHEMAS = REPO / "tests" / "support" / "schemas"


def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition"
) -> Any:
    """The only wait in the tests: poll `predicate` until it is truthy or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class RedisServer:
    """A private redis-server the tests may kill and restart on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def db_url(self, db: int) -> str:
        """Another db of the same server: one db serves one data root (taskd/roots.py), so a
        test with a data root of its own takes a db of its own."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def emptied(self, db: int) -> Iterator[Any]:
        """A client of `db`, emptied before and after: a fixture's body (`yield from`)."""
        import redis

        conn = redis.Redis.from_url(self.db_url(db))
        conn.flushdb()
        yield conn
        conn.flushdb()
        conn.close()

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; `make test` installs it")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, 10, what="redis-server to answer")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def taskd_env(
    data_root: Path, redis_url: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TASKD_DATA_ROOT=str(data_root),
        TASKD_REDIS_URL=redis_url,
        TASKD_SCHEMA_PATH=str(SUPPORT_SCHEMAS),
        TASKD_ALLOWED_FILE_ROOTS=str(data_root / "files"),
        TASKD_MAIL_DB=str(data_root / "mail_db"),
        PYTHONPATH=str(REPO),
    )
    env.update(extra or {})
    return env


class Worker:
    """A `celery worker` process. With `supervise`, it is started again whenever it exits
    without being told to, as a supervisor (taskd up, systemd, compose) does in production:
    kombu can end a worker on a Redis reconnect ("Unrecoverable error")."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        name: str = "w1",
        concurrency: int = 4,
        queues: str = "retrieve,pack,notify",
        supervise: bool = False,
    ) -> None:
        self.env, self.log, self.name = env, log, name
        self.concurrency, self.queues = concurrency, queues
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self._stopping = threading.Event()
        self._watch: threading.Thread | None = None
        if supervise:
            self._watch = threading.Thread(target=self._supervise, daemon=True)

    def _spawn(self) -> None:
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "tasks",
                    "worker",
                    "-Q",
                    self.queues,
                    "-c",
                    str(self.concurrency),
                    "-n",
                    f"{self.name}@%h",
                    "--loglevel",
                    "INFO",
                    "--without-mingle",
                    "--without-gossip",
                ],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def start(self) -> None:
        self._spawn()
        wait_until(self.ready, 60, interval=0.2, what=f"worker {self.name} to answer a ping")
        if self._watch is not None and not self._watch.is_alive():
            self._watch.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(0.5):
            if self.proc is not None and self.proc.poll() is not None:
                self._spawn()

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited; see {self.log}")
        with open(self.log, "rb") as handle:
            handle.seek(self._offset)
            text = handle.read()
        return f"{self.name}@".encode() in text and b" ready." in text

    def stop(self) -> None:
        self._stopping.set()
        if self.proc is not None:
            stop_process(self.proc, grace=20)


class BridgeProc:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taskcli.cli", "bridge"],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@contextlib.contextmanager
def running(proc: Worker | BridgeProc) -> Iterator[Worker | BridgeProc]:
    """A worker or bridge started for the block, stopped after it whatever happens."""
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def process_gone(pid: int) -> bool:
    """Ended (a zombie whose parent never reaps it counts as ended: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def status_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    """`taskd status --json` in a process of its own, as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "taskcli.cli", "status", "--json", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    return dict(json.loads(done.stdout))
