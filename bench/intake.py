"""Intake: how soon a dropped task file is QUEUED, and how many files a second the bridge takes.

Latency: files dropped one at a time, `gap` apart; each is timed from the moment the writer closed
it to the inotify event of its rename to `<stem>-0.NOOP`, which the bridge does after the content
rewrite was fsynced (the directory fsync follows the rename). Baseline: `bench.floor`, a process
doing only those durable steps, timed the same way in the same run.

Throughput: `n` files dropped at once into a running bridge, timed from the first write until
every file is renamed QUEUED and its message is in Redis. Baseline: the same number of raw
`send_task` calls (what `apply_async` does) from one process, on the same Redis.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from watchdog.events import FileMovedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from bench.common import (
    NOOP,
    NOOP_QUEUE,
    NOOP_TASK,
    REPO,
    CpuMeter,
    Outcome,
    Row,
    Stack,
    describe,
    drop,
    median,
    percentile,
    pid_of,
    queued_messages,
    task_dir,
    verdict,
)
from bridge.contract import BRIDGE_TEMP_SUFFIX
from taskd.celeryconf import kombu_priority, make_app
from taskd.settings import Settings
from tests.support.procs import stop_process, wait_until

P50_GOAL_MS = 5.0
P99_GOAL_MS = 20.0
RATE_GOAL = 1000.0
RATIO_GOAL = 0.6


class RenameWatch(FileSystemEventHandler):
    """When each task file was first renamed (inotify, through watchdog as the bridge uses)."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not isinstance(event, FileMovedEvent):
            return
        now = time.perf_counter()
        src = os.fsdecode(event.src_path)
        if src.endswith(BRIDGE_TEMP_SUFFIX):
            return
        stem = Path(src).stem
        with self._lock:
            self.seen.setdefault(stem, now)


def drop_paced(directory: Path, prefix: str, n: int, gap: float) -> dict[str, float]:
    """Drop `n` files `gap` seconds apart; when each was closed."""
    closed: dict[str, float] = {}
    due = time.perf_counter()
    for i in range(n):
        stem = f"{prefix}{i:05d}"
        drop(directory, f"{stem}.{NOOP}")
        closed[stem] = time.perf_counter()
        due += gap
        time.sleep(max(0.0, due - time.perf_counter()))
    return closed


def latencies(directory: Path, prefix: str, n: int, gap: float) -> list[float]:
    """Milliseconds from close to rename of `n` files dropped into `directory`."""
    watch = RenameWatch()
    observer = Observer()
    observer.schedule(watch, str(directory))
    observer.start()
    try:
        closed = drop_paced(directory, prefix, n, gap)
        wait_until(lambda: len(watch.seen) >= n, 60, what=f"{n} files to be renamed")
    finally:
        observer.stop()
        observer.join(5)
    return [(watch.seen[stem] - t) * 1000 for stem, t in closed.items()]


def floor_latencies(base: Path, n: int, gap: float) -> list[float]:
    directory = base / "floor" / "7"
    directory.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.floor", str(directory.parent)],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # "ready"
        return latencies(directory, "f", n, gap)
    finally:
        stop_process(proc)  # type: ignore[arg-type]


def latency(system: Stack, n: int, gap: float) -> Outcome:
    root = system.new_root()
    bridge = system.bridge(root)
    ours = latencies(task_dir(root, "7"), "l", n, gap)
    system.stop(bridge)
    floor = floor_latencies(system.base, n, gap)
    out = Outcome(series={"intake_ms": ours, "floor_ms": floor})
    name = f"bench.floor (durable steps only), {n} files"
    for q, goal in ((50, P50_GOAL_MS), (99, P99_GOAL_MS)):
        mine = percentile(ours, q)
        out.rows.append(
            Row(
                "intake latency",
                f"p{q}, {n} files {gap * 1000:g} ms apart",
                [mine],
                "ms",
                [percentile(floor, q)],
                name,
                f"<= {goal:g} ms",
                verdict(mine <= goal),
            )
        )
    out.notes.append(
        f"intake latency: max {max(ours):.1f} ms (floor {max(floor):.1f} ms); the old Taskd "
        "polled once a second: up to 1,000 ms, 500 ms at the median"
    )
    return out


def raw_send_rate(system: Stack, root: Path, n: int) -> float:
    """Jobs a second one process sends with Celery's own publishing, nothing else."""
    app = make_app(Settings.from_env(system.env(root)))
    spec = {"type": NOOP, "user-id": "7", "task-id": "raw", "fields": {"type": NOOP}}

    def send() -> None:
        app.send_task(
            NOOP_TASK,
            args=[{**spec, "retries": 0}],
            task_id=str(uuid.uuid4()),
            queue=NOOP_QUEUE,
            exchange="",
            routing_key=NOOP_QUEUE,
            priority=kombu_priority(0),
        )

    send()  # connect before the clock starts
    start = time.perf_counter()
    for _ in range(n):
        send()
    elapsed = time.perf_counter() - start
    app.close()
    return n / elapsed


def bridge_rate(system: Stack, n: int) -> tuple[float, float]:
    """Files a second a running bridge takes from `n` dropped at once; and its CPU, in cores."""
    root = system.new_root()
    bridge = system.bridge(root)
    directory = task_dir(root, "7")
    meter = CpuMeter(pid_of(bridge)).start()
    start = time.perf_counter()
    for i in range(n):
        drop(directory, f"t{i:05d}.{NOOP}")

    def done() -> bool:
        renamed = sum(1 for name in os.listdir(directory) if "-" in name)
        return renamed >= n and queued_messages(system.r) >= n

    wait_until(done, 600, interval=0.02, what=f"{n} files to be QUEUED")
    elapsed = time.perf_counter() - start
    cores = meter.stop()
    system.stop(bridge)
    return n / elapsed, cores


def throughput(system: Stack, n: int, repeat: int) -> Outcome:
    ours: list[float] = []
    base: list[float] = []
    cores: list[float] = []
    for _ in range(repeat):  # interleaved, so load on the machine hits both alike
        base.append(raw_send_rate(system, system.new_root(), n))
        system.r.flushall()
        rate, used = bridge_rate(system, n)
        ours.append(rate)
        cores.append(used)
        system.r.flushall()
    ratio = median(ours) / median(base)
    row = Row(
        "intake throughput",
        f"{n:,} files dropped at once -> all QUEUED",
        ours,
        "files/s",
        base,
        f"raw send_task of {n:,} jobs, one process",
        f">= {RATE_GOAL:,.0f}/s and >= {RATIO_GOAL:g}x raw",
        verdict(median(ours) >= RATE_GOAL and ratio >= RATIO_GOAL),
    )
    out = Outcome(rows=[row])
    out.notes.append(f"intake throughput: bridge CPU while taking {median(cores):.2f} cores")
    return out


def run(system: Stack, quick: bool, repeat: int) -> Outcome:
    n_lat, n_rate = (40, 500) if quick else (500, 10_000)
    out = latency(system, n_lat, 0.02)
    for row in out.rows:
        print(describe(row), flush=True)
    more = throughput(system, n_rate, repeat)
    for row in more.rows:
        print(describe(row), flush=True)
    out.rows += more.rows
    out.notes += more.notes
    return out
