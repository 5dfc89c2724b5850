"""`taskd up`: bridge, workers and Flower on one machine, and a private Redis when none answers.

A small supervisor: each child is restarted with a back-off if it dies, and all are stopped
when `up` is told to stop (SIGTERM, SIGINT or SIGHUP alike), in order: workers first (SIGTERM is
Celery's warm shutdown: they finish the jobs they run within their grace, a job they cannot
finish goes back to the queue) while the bridge still mirrors what they finish; then the bridge
and Flower; the private Redis last, once nothing talks to it any more.

Children run in their own process group, so a Ctrl-C in the terminal reaches `up` alone and each
child gets exactly one SIGTERM from it; and they are told to stop should `up` itself die.

Secrets stay off every command line (`ps` shows argv to all users): the private Redis reads its
password from a config file only its owner may read, and the children get the Redis URL with
the password, and Flower its login, through the environment.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from taskcli.child import WORKER_STOP_GRACE_S, Child
from taskcli.privateredis import RedisPlan, plan_redis, redis_answers
from taskcli.secretfile import private_dir, secret, with_password
from taskcli.stopsignals import StopSignals
from taskd.celeryconf import QUEUES
from taskd.settings import Settings, redact_url
from taskd.tasktypes import load_types

log = logging.getLogger(__name__)

LAST_MIRROR_TICKS = 2
"""Mirror ticks the bridge keeps running after the workers stopped, so what they finished
reaches the task files before the bridge stops."""
STOP_ORDER = (("worker",), ("bridge", "flower"), ("redis",))
"""Roles stopped together, group after group."""
FLOWER_PASSWORD_FILE = "flower.pass"
"""Under <data-root>/.taskd/: Flower's password under `up`, unless FLOWER_BASIC_AUTH is set."""
FLOWER_USER = "taskd"
PRIVATE_ONLY = ("FLOWER_BASIC_AUTH",)
"""Environment a child other than Flower never needs."""


# --- Flower ------------------------------------------------------------------------------------


def flower_file(settings: Settings) -> Path:
    return private_dir(settings) / FLOWER_PASSWORD_FILE


def flower_login(settings: Settings, environ: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """Flower's FLOWER_BASIC_AUTH (the operator's when set) and how to log in, in words."""
    given = environ.get("FLOWER_BASIC_AUTH")
    if given:
        return {"FLOWER_BASIC_AUTH": given}, "log in as FLOWER_BASIC_AUTH says"
    path = flower_file(settings)
    auth = f"{FLOWER_USER}:{secret(path)}"
    return {"FLOWER_BASIC_AUTH": auth}, f"user {FLOWER_USER}, password in {path}"


def flower_options(extra: list[str], environ: Mapping[str, str]) -> list[str]:
    """Flower's options for `taskd flower`: loopback unless the operator named an address."""
    named = any(a == "--address" or a.startswith("--address=") for a in extra)
    if named or environ.get("FLOWER_ADDRESS"):
        return list(extra)
    return ["--address=127.0.0.1", *extra]


# --- the children ------------------------------------------------------------------------------


def worker_queues(settings: Settings) -> str:
    """Every queue a task type names, the built-in ones included (site types may add more)."""
    types = load_types(settings.type_dirs)
    return ",".join(sorted(set(QUEUES) | {t.queue for t in types.values()}))


@dataclass
class Plan:
    """What `up` runs, and what its banner tells."""

    kids: list[Child]
    redis: RedisPlan
    flower_login: str = ""
    flower_file: Path | None = None  # Flower's password file, when `up` made the login


def _worker(settings: Settings, n: int, env: dict[str, str]) -> Child:
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "worker"]
    argv += ["-Q", worker_queues(settings), "-n", f"worker{n}@%h", "--loglevel", "INFO"]
    return Child(f"worker{n}", argv, env, role="worker", grace=WORKER_STOP_GRACE_S)


def children(settings: Settings, workers: int, flower_port: int | None) -> Plan:
    redis_plan = plan_redis(settings)
    env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ONLY}
    env.update(TASKD_DATA_ROOT=str(settings.data_root), TASKD_REDIS_URL=redis_plan.url)
    if settings.mail_db is not None:
        env["TASKD_MAIL_DB"] = str(settings.mail_db)
    py = sys.executable
    kids = [] if redis_plan.child is None else [redis_plan.child]
    kids.append(Child("bridge", [py, "-m", "taskcli.cli", "bridge"], env, role="bridge"))
    kids += [_worker(settings, n, env) for n in range(1, workers + 1)]
    login, password_file = "", None
    if flower_port:
        auth, login = flower_login(settings, os.environ)
        password_file = None if os.environ.get("FLOWER_BASIC_AUTH") else flower_file(settings)
        argv = [py, "-m", "celery", "-A", "tasks", "flower", f"--port={flower_port}"]
        argv.append("--address=127.0.0.1")
        kids.append(Child("flower", argv, {**env, **auth}, role="flower"))
    return Plan(kids, redis_plan, login, password_file)


def taskd_command() -> str:
    """`taskd` as the user can type it: the bare name when it is this one on PATH, else its
    path (relative to here, like `.venv/bin/taskd`, when it is below)."""
    ours = Path(sys.executable).parent / "taskd"
    found = shutil.which("taskd")
    if found is not None and Path(found).resolve() == ours.resolve():
        return "taskd"
    try:
        return str(ours.relative_to(Path.cwd()))
    except ValueError:
        return str(ours)


def _redis_line(planned: Plan) -> str:
    shown = redact_url(planned.redis.url)
    if planned.redis.child is None:
        line = f"  Redis: {shown} (one answered there; set TASKD_REDIS_URL for another)"
    else:
        line = f"  Redis: {shown} (started privately, kept in {planned.redis.folder})"
    if planned.redis.password_file is not None:
        line += f", password in {planned.redis.password_file}"
    return line


def banner(settings: Settings, planned: Plan, flower_port: int | None) -> str:
    """What `up` prints once its children are planned: never a password, only where it is;
    each command as it can be typed here."""
    root, taskd = settings.data_root, taskd_command()
    redis_plan = planned.redis
    watch = f"{taskd} status --watch --data-root {root}"
    if redis_plan.password_file is not None:
        shown = with_password(redis_plan.url, f"$(cat {redis_plan.password_file})")
        watch = f'TASKD_REDIS_URL="{unquote(shown)}" {watch}'
    lines = [
        f"taskd is up on {root}",
        f"  drop task files into {settings.task_queue}/<user-id>/",
        f"  try:   {taskd} submit 3 examples/0001.RETRMS --data-root {root}",
        f"  watch: {watch}",
        _redis_line(planned),
    ]
    if flower_port:
        where = f"http://127.0.0.1:{flower_port}"
        lines.append(f"  Flower: {where} ({planned.flower_login})")
        if planned.flower_file is not None:
            login = f"{FLOWER_USER}:$(cat {planned.flower_file})"
            lines.append(f'  Flower API: curl -u "{login}" "{where}/api/workers?refresh=1"')
    if settings.serve_port:
        lines.append(f"  bridge: http://{settings.http_host}:{settings.serve_port}/")
    return "\n".join(lines)


# --- running and stopping ----------------------------------------------------------------------


def start_all(kids: list[Child], redis_url: str) -> None:
    for kid in kids:
        kid.start(time.monotonic())
        if kid.role == "redis":
            deadline = time.monotonic() + 10
            while not redis_answers(redis_url) and time.monotonic() < deadline:
                time.sleep(0.1)


def _pause(seconds: float, tick: Callable[[], None]) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        tick()
        time.sleep(min(0.1, left))


def stop_all(kids: list[Child], signals: StopSignals, last_mirror_s: float) -> None:
    """Group after group (STOP_ORDER); the bridge gets `last_mirror_s` after the workers."""
    for roles in STOP_ORDER:
        group = [k for k in kids if k.role in roles and k.running()]
        if not group:
            continue
        log.info("stopping %s", ", ".join(k.name for k in group))
        for kid in group:
            kid.stop()
        started = time.monotonic()
        for kid in group:
            kid.wait(started, signals.report)
        if roles == STOP_ORDER[0] and any(k.role == "bridge" and k.running() for k in kids):
            _pause(last_mirror_s, signals.report)
    signals.report()
    log.info("all stopped")


def supervise(
    kids: list[Child], redis_url: str, signals: StopSignals, mirror_interval: float
) -> bool:
    """Run the children until told to stop; False when one refused to start (its setup is
    wrong), which stops the others too."""
    try:
        start_all(kids, redis_url)
        while not signals.requested.wait(1.0):
            now = time.monotonic()
            for kid in kids:
                kid.poll_once(now)
            refused = [k.name for k in kids if k.refused]
            if refused:
                log.error("stopping everything: %s cannot run as set up", ", ".join(refused))
                return False
        signals.report()
        return True
    finally:
        stop_all(kids, signals, LAST_MIRROR_TICKS * mirror_interval)
