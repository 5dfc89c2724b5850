"""What the bridge benchmarks share: results and their table, statistics, process CPU and
memory from /proc, and a private Redis, bridge and workers on a temporary data root."""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from taskd import states
from tests.support.procs import REPO, BridgeProc, RedisServer, Worker, taskd_env, wait_until

BENCH_SCHEMAS = REPO / "bench" / "schemas"
# Not /tmp: on the machine these figures come from, creating a file anywhere under /tmp cost
# 10-20x what it costs elsewhere on the same ext4 file system, which would be measured instead
# of taskd.
DEFAULT_WORKDIR = REPO / "var" / "bench"
NOOP = "NOOP"
NOOP_TASK = "bench.nooptask.run"
BARE_TASK = "bench.nooptask.bare"
NOOP_QUEUE = "retrieve"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- results -----------------------------------------------------------------------------------


@dataclass
class Row:
    """One figure of the table: ours and its baseline, each a list of samples (one a round)."""

    bench: str
    what: str
    ours: list[float]
    unit: str
    base: list[float] = field(default_factory=list)
    base_name: str = ""
    goal: str = ""
    verdict: str = ""  # PASS, FAIL, or empty when the row carries no goal

    @property
    def ratio(self) -> float | None:
        if not self.base or not self.ours or median(self.base) == 0:
            return None
        return median(self.ours) / median(self.base)


@dataclass
class Outcome:
    rows: list[Row] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)  # raw samples for the plots
    notes: list[str] = field(default_factory=list)


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank: a value that was measured."""
    data = sorted(values)
    if not data:
        return float("nan")
    rank = max(0, min(len(data) - 1, round(q / 100 * len(data) + 0.5) - 1))
    return float(data[rank])


def fmt(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def spread(values: list[float]) -> str:
    """The median, and the range when there is more than one sample."""
    if not values:
        return ""
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(median(values))} ({fmt(min(values))}-{fmt(max(values))}, n={len(values)})"


def describe(row: Row) -> str:
    """The line a benchmark prints as soon as it has a figure."""
    text = f"  {row.what}: {spread(row.ours)} {row.unit}"
    if row.base:
        text += f"; {row.base_name}: {spread(row.base)} {row.unit}"
    if row.ratio is not None:
        text += f"; ratio {row.ratio:.2f}"
    if row.goal:
        text += f"; goal {row.goal}: {row.verdict}"
    return text


def table(rows: list[Row]) -> list[str]:
    head = ("benchmark", "measure", "ours", "baseline", "ratio", "goal", "verdict")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else ""
        base = f"{spread(row.base)} ({row.base_name})" if row.base else row.base_name
        cells = (row.bench, row.what, f"{spread(row.ours)} {row.unit}", base, ratio, row.goal)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in (*cells, row.verdict)) + " |")
    return lines


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# --- processes ---------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Every live descendant of a process (a prefork worker's pool, say)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for child in Path(f"/proc/{pid}/task/{tid}/children").read_text().split():
                out += [int(child), *children(int(child))]
    return out


def cpu_seconds(pid: int, tree: bool = False) -> float:
    """User + system CPU of a process (and its live descendants), in seconds."""
    total = 0.0
    for one in [pid, *children(pid)] if tree else [pid]:
        try:
            raw = Path(f"/proc/{one}/stat").read_text()
        except FileNotFoundError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class CpuMeter:
    """CPU used by a process between `start()` and `stop()`, as cores (seconds per second)."""

    def __init__(self, pid: int, tree: bool = False) -> None:
        self.pid, self.tree = pid, tree
        self._cpu0 = self._wall0 = 0.0
        self.cpu = self.wall = 0.0

    def start(self) -> CpuMeter:
        self._cpu0, self._wall0 = cpu_seconds(self.pid, self.tree), time.monotonic()
        return self

    def stop(self) -> float:
        self.cpu = cpu_seconds(self.pid, self.tree) - self._cpu0
        self.wall = time.monotonic() - self._wall0
        return self.cores

    @property
    def cores(self) -> float:
        return self.cpu / self.wall if self.wall > 0 else float("nan")


def pid_of(proc: Any) -> int:
    assert proc is not None and proc.proc is not None
    return int(proc.proc.pid)


# --- a private system --------------------------------------------------------------------------


PACKAGES = ("bridge", "taskd", "taskcli", "tasks")


def compile_project() -> None:
    """The project's modules compiled, as an installed package has them (pip compiles at
    install time): a process started from the checkout would otherwise compile every module
    at each start where PYTHONDONTWRITEBYTECODE is set, and a start-up figure would time it."""
    for package in PACKAGES:
        compileall.compile_dir(REPO / package, quiet=1)


class Stack:
    """redis-server, and on demand bridges and workers, on a temporary data root.

    Each bridge gets a data root of its own (`new_root`); workers serve the NOOP queue."""

    def __init__(self, base: Path, env_extra: dict[str, str] | None = None) -> None:
        self.base = base
        self.redis = RedisServer(base / "redis")
        self.env_extra = {"TASKD_SCHEMA_PATH": str(BENCH_SCHEMAS), **(env_extra or {})}
        self.procs: list[Any] = []
        self._roots = 0
        self._dbs: dict[Path, int] = {}
        self.client: Any = None

    def start(self) -> Stack:
        compile_project()
        self.redis.start()
        self.client = redis.Redis.from_url(self.redis.url)
        return self

    @property
    def r(self) -> Any:
        assert self.client is not None
        return self.client

    def new_root(self, users: Iterable[str] = ("7",), db: int = 0) -> Path:
        """A data root with its user directories made before any bridge watches it: a file
        written into a directory the bridge has just seen appear may come with no close
        event, and waits TASKD_SETTLE instead (bridge/watch.py).

        One Redis db serves one data root (taskd/roots.py): the new root takes `db` over from
        the one before it (whose processes are stopped by then); a root whose bridge runs
        beside another's needs a `db` of its own."""
        self._roots += 1
        root = self.base / f"data{self._roots}"
        (root / "files").mkdir(parents=True)
        for user in users:
            (root / "task_queue" / user).mkdir(parents=True)
        self._dbs[root] = db
        with redis.Redis.from_url(self.redis.db_url(db)) as client:
            client.delete(states.KEY_ROOT)
        return root

    def env(self, root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        url = self.redis.db_url(self._dbs.get(root, 0))
        return taskd_env(root, url, {**self.env_extra, **(extra or {})})

    def bridge(self, root: Path, ready_probe: bool = True) -> BridgeProc:
        proc = BridgeProc(self.env(root), root / "bridge.log")
        proc.start()
        self.procs.append(proc)
        if ready_probe:
            with redis.Redis.from_url(self.redis.db_url(self._dbs.get(root, 0))) as client:
                wait_taken(root, proc, client)
        return proc

    def worker(self, root: Path, concurrency: int, name: str = "bench") -> Worker:
        worker = Worker(
            self.env(root), root / f"{name}.log", name=name, concurrency=concurrency,
            queues=NOOP_QUEUE,
        )  # fmt: skip
        worker.start()
        self.procs.append(worker)
        return worker

    def stop(self, proc: Any) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        if self.client is not None:
            self.client.close()
        self.redis.stop()


@contextlib.contextmanager
def stack(workdir: Path, env_extra: dict[str, str] | None = None) -> Iterator[Stack]:
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="taskd-bench-", dir=workdir) as tmp:
        system = Stack(Path(tmp), env_extra)
        try:
            yield system.start()
        finally:
            system.close()


def task_dir(root: Path, user: str) -> Path:
    path = root / "task_queue" / user
    path.mkdir(parents=True, exist_ok=True)
    return path


def drop(directory: Path, name: str, content: dict[str, Any] | None = None) -> None:
    """Write a task file the way the UI does: create, write, close."""
    with open(directory / name, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(content or {"type": NOOP}))


def renamed(directory: Path, stem: str) -> Path | None:
    for path in directory.glob(f"{stem}-*.{NOOP}"):
        return path
    return None


def wait_taken(root: Path, bridge: BridgeProc, client: Any, timeout: float = 60) -> None:
    """The bridge is up and watching, and has published once: a probe file was taken and its
    job sent. (The first publish sets up Celery's producer, a few hundred ms once.)"""
    directory = task_dir(root, "999")
    drop(directory, "probe.NOOP")

    def taken() -> Path | None:
        if bridge.proc is not None and bridge.proc.poll() is not None:
            raise RuntimeError(f"the bridge exited; see {bridge.log}")
        return renamed(directory, "probe")

    path = wait_until(taken, timeout, interval=0.01, what="the bridge to take a probe file")
    job_id = json.loads(path.read_text())[states.JOB_ID]

    def sent() -> bool:
        status = client.hget(states.job_key(job_id), "status")
        return status == states.JOB_PUBLISHED.encode() or bool(
            client.exists(states.meta_key(job_id))
        )

    wait_until(sent, timeout, interval=0.01, what="the probe's job to be published")


def queued_messages(client: Any, queue: str = NOOP_QUEUE) -> int:
    """Messages waiting in a queue, over all of kombu's priority lists."""
    keys = [queue, *(f"{queue}:{p}" for p in range(10))]
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.llen(key)
        return sum(int(n) for n in pipe.execute())


def states_of(client: Any, job_ids: list[str]) -> list[str | None]:
    """Each job's Celery state, read with one MGET."""
    metas = client.mget([f"celery-task-meta-{j}" for j in job_ids]) if job_ids else []
    return [json.loads(m)["status"] if m else None for m in metas]
