"""`taskd up`: bridge, workers and Flower on one machine, and a private Redis when none answers.

A small supervisor: each child is restarted with a back-off if it dies, and all are stopped
(SIGTERM, then SIGKILL) when `up` is told to stop. SIGTERM is a Celery worker's warm shutdown:
it finishes the jobs it runs within its grace, and a job it cannot finish goes back to the queue
(late acks). The private Redis stops last, once nothing talks to it any more.

Children run in their own process group, so a Ctrl-C in the terminal reaches `up` alone and each
child gets exactly one SIGTERM from it; and they are told to stop should `up` itself die.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import redis

from taskd.celeryconf import QUEUES
from taskd.settings import Settings
from taskd.tasktypes import load_types

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX_S = 30.0
STOP_GRACE_S = 15.0
"""Bridge, Flower and Redis: time to stop after SIGTERM before they are killed."""
WORKER_STOP_GRACE_S = 60.0
"""A worker's warm shutdown: time for its running jobs to finish (others are run again)."""
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when `up` dies, however it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: up's own stop still works
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    grace: float = STOP_GRACE_S
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)

    def start(self, now: float) -> None:
        log.info("starting %s", self.name)
        self.proc = subprocess.Popen(
            self.argv, env=self.env, process_group=0, preexec_fn=_die_with_parent
        )
        self.started_at = now

    def poll_once(self, now: float) -> None:
        """Restart a child that died, waiting longer each time it dies young."""
        if self.proc is None or self.proc.poll() is None:
            if self.proc is None and now >= self.next_start:
                self.start(now)
            return
        code = self.proc.returncode
        self.proc = None
        young = now - self.started_at < 60
        self.restarts = self.restarts + 1 if young else 0
        delay = min(RESTART_BACKOFF_MAX_S, 2.0**self.restarts) if young else 1.0
        log.warning("%s exited with %s; restarting in %.0f s", self.name, code, delay)
        self.next_start = now + delay

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, started: float) -> None:
        """Wait out the child's grace from `started`, then kill it."""
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.1, started + self.grace - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", self.name, self.grace)
            self.proc.kill()
            self.proc.wait(5)


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.exceptions.RedisError:
        return False


def private_redis(settings: Settings, env: dict[str, str]) -> Child | None:
    """A persistent redis-server under the data root, when none answers at a local URL."""
    if redis_answers(settings.redis_url):
        return None
    parsed = urlparse(settings.redis_url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"no Redis answers at {settings.redis_url}, and it is not local")
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "no Redis answers and redis-server is not installed (make run installs it)"
        )
    workdir = settings.data_root / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "--port",
        str(parsed.port or 6379),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
    ]
    return Child("redis-server", argv, env)


def worker_queues(settings: Settings) -> str:
    """Every queue a task type names, the built-in ones included (site types may add more)."""
    types = load_types(settings.schema_dirs)
    return ",".join(sorted(set(QUEUES) | {t.queue for t in types.values()}))


def children(settings: Settings, workers: int, flower_port: int | None) -> list[Child]:
    env = dict(os.environ)
    env.update(TASKD_DATA_ROOT=str(settings.data_root), TASKD_REDIS_URL=settings.redis_url)
    if settings.mail_db is not None:
        env["TASKD_MAIL_DB"] = str(settings.mail_db)
    py = sys.executable
    out = []
    redis_child = private_redis(settings, env)
    if redis_child is not None:
        out.append(redis_child)
    out.append(Child("bridge", [py, "-m", "bridge.cli", "bridge"], env))
    for n in range(1, workers + 1):
        out.append(
            Child(
                f"worker{n}",
                [
                    py,
                    "-m",
                    "celery",
                    "-A",
                    "tasks",
                    "worker",
                    "-Q",
                    worker_queues(settings),
                    "-n",
                    f"worker{n}@%h",
                    "--loglevel",
                    "INFO",
                ],
                env,
                grace=WORKER_STOP_GRACE_S,
            )
        )
    if flower_port:
        out.append(
            Child(
                "flower",
                [
                    py,
                    "-m",
                    "celery",
                    "-A",
                    "tasks",
                    "flower",
                    f"--port={flower_port}",
                    "--address=127.0.0.1",
                ],
                env,
            )
        )
    return out


def start_all(kids: list[Child]) -> None:
    for kid in kids:
        kid.start(time.monotonic())
        if kid.name == "redis-server":
            deadline = time.monotonic() + 10
            while not redis_answers(kid.env["TASKD_REDIS_URL"]) and time.monotonic() < deadline:
                time.sleep(0.1)


def stop_all(kids: list[Child]) -> None:
    """Redis last, so the others can finish talking to it."""
    others = [k for k in kids if k.name != "redis-server"]
    last = [k for k in kids if k.name == "redis-server"]
    for group in (others, last):
        for kid in group:
            kid.stop()
        started = time.monotonic()
        for kid in group:
            kid.wait(started)


def supervise(kids: list[Child], stop: threading.Event) -> None:
    start_all(kids)
    try:
        while not stop.wait(1.0):
            now = time.monotonic()
            for kid in kids:
                kid.poll_once(now)
    finally:
        stop_all(kids)
