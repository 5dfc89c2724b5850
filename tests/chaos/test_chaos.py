"""Chaos: hundreds of tasks with notify mails while processes are killed -9 and Redis restarts.

A seeded random schedule kills the bridge, a worker (main process and pool children) or one pool
process, restarts Redis with nothing kept, while a reader polls the queue directory every few
milliseconds. Afterwards every task has succeeded once in effect: one output, one mail, nothing
left behind, and the reader never saw a task missing, doubled or half-written.

`make test` runs it small; `pytest tests/chaos --chaos-scale 10` runs it ten times larger.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bridge.notify import notify_job_id
from bridge.passes.reconcile import FULL_RESCAN_EVERY, WORKER_TEMP_AGE_S
from taskd.atomic import WORKER_TEMP_SUFFIX
from tests.conftest import Drop
from tests.e2e.test_worker_death import _children
from tests.support.procs import BridgeProc, RedisServer, Worker, wait_until
from tests.support.smtp import SmtpServer

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]


def _hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def _wait_for_no_hidden(directory: Path, rescan_s: float) -> None:
    """A sent-marker whose outcome is recorded goes at the next rescan at the latest. A worker
    killed mid-write leaves a temp file that is spared a minute (it may be a live write from
    another host) and goes at the first full rescan after that."""
    worker_temp = any(name.endswith(WORKER_TEMP_SUFFIX) for name in _hidden(directory))
    timeout = 10 + (WORKER_TEMP_AGE_S + FULL_RESCAN_EVERY * rescan_s if worker_temp else 0)
    try:
        wait_until(lambda: not _hidden(directory), timeout, what="no hidden files left")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {_hidden(directory)}") from None


@dataclass
class Reader:
    """Polls the directory like a UI would, and records anything the contract forbids."""

    directory: Path
    problems: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)
    looks: int = 0

    def run(self) -> None:
        while not self.stop.wait(0.005):
            self.look_once()

    def _listing(self) -> dict[str, list[str]]:
        tasks: dict[str, list[str]] = {}
        for name in os.listdir(self.directory):
            if not name.startswith(".") and not name.endswith(".notify.eml"):
                tasks.setdefault(name.split(".")[0].split("-")[0], []).append(name)
        return tasks

    def look_once(self) -> None:
        # readdir is no snapshot: a large directory is read in several chunks, and a file
        # renamed meanwhile can show under both names or under none. So what one listing
        # suggests is checked before it counts: both names present at once, or the task absent
        # from a second listing too.
        try:
            tasks = self._listing()
        except FileNotFoundError:
            return
        self.looks += 1
        for task_id, names in tasks.items():
            present = [n for n in names if (self.directory / n).exists()]
            if len(present) > 1:
                self.problems.append(f"two files for task {task_id}: {present}")
        missing = self.seen - set(tasks)
        if missing:
            missing -= set(self._listing())
            self.problems += [f"task {task_id} missing from a listing" for task_id in missing]
        self.seen |= set(tasks)
        self._read_some([n for names in tasks.values() for n in names])

    def _read_some(self, names: list[str]) -> None:
        for name in random.sample(names, min(5, len(names))):
            try:
                data = (self.directory / name).read_bytes()
            except FileNotFoundError:
                continue  # renamed since the listing: fine
            try:
                json.loads(data)
            except ValueError:
                self.problems.append(f"half-written {name}: {data[:80]!r}")


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.ui-tmp")
    tmp.write_bytes(data)
    tmp.rename(path)


def _drop(directory: Path, task_id: str, content: dict) -> None:
    """The UI's way: the notify mail, then the task file, each written whole."""
    mail = f"To: x@chaos.example\nSubject: {task_id} done\n\nbody\n".encode()
    _write_atomically(directory / f"{task_id}.notify.eml", mail)
    _write_atomically(directory / f"{task_id}.{content['type']}", json.dumps(content).encode())


@dataclass
class Cast:
    bridge: BridgeProc
    spare: Worker
    redis: RedisServer
    env: dict[str, str]
    data_root: Path
    log: list[str] = field(default_factory=list)

    def kill_bridge(self) -> None:
        self.bridge.kill()
        time.sleep(0.3)
        self.bridge = BridgeProc(self.env, self.data_root / "bridge-chaos.log")
        self.bridge.start()

    def kill_worker(self) -> None:
        assert self.spare.proc is not None
        for pid in [self.spare.proc.pid, *_children(self.spare.proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.spare.proc.wait(10)
        self.spare.start()

    def kill_pool_process(self) -> None:
        assert self.spare.proc is not None
        children = _children(self.spare.proc.pid)
        if children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(random.choice(children), signal.SIGKILL)

    def restart_redis(self) -> None:
        self.redis.kill()
        time.sleep(0.2)
        self.redis.start()


def _settled(drop: Drop, task_id: str) -> bool:
    fields = drop.fields(task_id)
    return fields.get("state") == "SUCCESS" and bool(
        fields.get("notified-at") or not (drop.dir / f"{task_id}.notify.eml").exists()
    )


def _story(
    data_root: Path, user: str, task_id: str, fields: dict, mails: int, actions: list[str]
) -> str:
    """What a failed check needs to be understood from a CI log alone: the task's file, the
    actions taken, and every log line naming the task, its job or its notify job."""
    wanted = {task_id, str(fields.get("job-id"))}
    if isinstance(fields.get("job-id"), str):
        wanted.add(notify_job_id(fields["job-id"], user, task_id))
    lines = [
        f"{log.name}: {line}"
        for log in sorted(data_root.glob("*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if any(w in line for w in wanted)
    ]
    return "\n".join(
        [f"{task_id}: {mails} mails; file {fields}", f"actions: {actions}", *lines[-80:]]
    )


def _tasks(drop: Drop, count: int, rng: random.Random, files: Path) -> dict[str, dict]:
    tasks: dict[str, dict] = {}
    for i in range(count):
        task_id = f"c{i:04d}"
        if i % 4 == 3:
            src = files / f"chaos-{i}.bin"
            src.write_bytes(rng.randbytes(rng.randint(1000, 200_000)))
            tasks[task_id] = {
                "type": "PACKMS",
                "description": f"chaos {task_id}",
                "files": [str(src)],
            }
        else:
            tasks[task_id] = {
                "type": "SLOW",
                "steps": rng.randint(2, 12),
                "step-seconds": rng.choice([0.05, 0.1, 0.2]),
            }
        tasks[task_id]["notify"] = [f"{task_id}.{drop.user}@chaos.example"]
    return tasks


def test_chaos(
    request: pytest.FixtureRequest,
    drop: Drop,
    worker: Worker,
    redis_server: RedisServer,
    smtp_server: SmtpServer,
    env: dict[str, str],
    data_root: Path,
) -> None:
    scale = int(request.config.getoption("--chaos-scale"))
    rng = random.Random(int(os.environ.get("TASKD_CHAOS_SEED", "20261125")))
    tasks = _tasks(drop, 60 * scale, rng, data_root / "files")
    spare = Worker(env, data_root / "worker-chaos.log", name="chaos", concurrency=2)
    spare.start()
    bridge = BridgeProc(env, data_root / "bridge-chaos.log")
    bridge.start()
    cast = Cast(bridge, spare, redis_server, env, data_root)
    reader = Reader(drop.dir)
    thread = threading.Thread(target=reader.run, daemon=True)
    thread.start()
    actions: list[Callable[[], None]] = [
        cast.kill_bridge,
        cast.kill_worker,
        cast.kill_pool_process,
        cast.restart_redis,
    ]
    try:
        pending = list(tasks.items())
        deadline = time.monotonic() + 25 * scale**0.5
        while time.monotonic() < deadline:
            for task_id, content in pending[: max(1, len(tasks) // 15)]:
                _drop(drop.dir, task_id, content)
            pending = pending[max(1, len(tasks) // 15) :]
            action = rng.choice(actions)
            cast.log.append(action.__name__)
            action()
            time.sleep(rng.uniform(1.0, 2.5))
        for task_id, content in pending:
            _drop(drop.dir, task_id, content)
        if cast.bridge.proc is None or cast.bridge.proc.poll() is not None:
            cast.kill_bridge()

        def settled() -> bool:
            return all(_settled(drop, t) for t in tasks)

        def mails_to(task_id: str) -> list:
            return smtp_server.handler.to(tasks[task_id]["notify"][0])

        try:
            wait_until(settled, 240 * scale, interval=1.0, what="all tasks done")
        except AssertionError as exc:
            late = [t for t in tasks if not _settled(drop, t)]
            stories = [
                _story(data_root, drop.user, t, drop.fields(t), len(mails_to(t)), cast.log)
                for t in late
            ]
            raise AssertionError("\n".join([f"{exc}: {late}", *stories[:3]])) from None
        _wait_for_no_hidden(drop.dir, float(env["TASKD_RESCAN_INTERVAL"]))
    finally:
        reader.stop.set()
        thread.join(5)
        cast.bridge.stop()
        cast.spare.stop()
    assert reader.problems == [], reader.problems[:10]
    assert reader.looks > 100
    for task_id, content in tasks.items():
        fields = drop.fields(task_id)
        assert fields["state"] == "SUCCESS", (task_id, fields)
        to = content["notify"][0]
        mails = len(smtp_server.handler.to(to))
        assert mails == 1, _story(data_root, drop.user, task_id, fields, mails, cast.log)
    outputs = sorted(p.name for p in (data_root / "download" / drop.user).glob("*.tar.gz"))
    packs = [t for t, c in tasks.items() if c["type"] == "PACKMS"]
    assert outputs == sorted(f"chaos {t}.tar.gz" for t in packs)
    wait_until(
        lambda: not any((data_root / "work_space" / drop.user).rglob("*")),
        30,
        what="every tmp-space removed",
    )
