"""Intake: how soon a dropped task file is QUEUED, and how many files a second the bridge takes.

Latency: files dropped one at a time, `gap` apart; each is timed from the moment the writer closed
it until its new name `<stem>-0.NOOP` exists (looked for every 0.5 ms). The bridge renames after
the rewritten content was fsynced; the directory fsync follows the rename. Baseline: `bench.floor`,
a process reading inotify itself and doing only those durable steps, timed the same way.

Throughput: `n` files dropped at once into a running bridge, timed from the first write until
every file is renamed QUEUED and its message is in Redis. Baseline: the same number of raw
`send_task` calls (what `apply_async` does) from one process, on the same Redis.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

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
from bridge import contract, files
from bridge.model import Tracked
from bridge.passes.intake import TAKE_BATCH
from bridge.publish import Publisher
from taskd import states
from taskd.celeryconf import kombu_priority, make_app, publishing_app
from taskd.settings import Settings
from taskd.tasktypes import load_types
from tests.support.procs import stop_process, wait_until

P50_GOAL_MS = 5.0
P99_GOAL_MS = 20.0
RATE_GOAL = 1000.0
RATIO_GOAL = 0.6


POLL_S = 0.0005


def latencies(directory: Path, prefix: str, n: int, gap: float) -> list[float]:
    """Milliseconds from close to rename of `n` files dropped into `directory` `gap` apart.

    The rename is seen by looking for the new name every POLL_S (a stat of each file still
    waiting), not through inotify: the instrument must not share the bridge's event path.
    """
    closed: dict[str, float] = {}
    seen: dict[str, float] = {}
    waiting: dict[str, Path] = {}
    due = time.perf_counter()
    for i in range(n):
        stem = f"{prefix}{i:05d}"
        drop(directory, f"{stem}.{NOOP}")
        closed[stem] = time.perf_counter()
        waiting[stem] = directory / f"{stem}-0.{NOOP}"
        due += gap
        _watch_until(waiting, seen, due)
        time.sleep(max(0.0, due - time.perf_counter()))  # keep the pace
    _watch_until(waiting, seen, time.perf_counter() + 60)
    if waiting:
        raise AssertionError(f"{len(waiting)} files were never renamed")
    return [(seen[stem] - t) * 1000 for stem, t in closed.items()]


def _watch_until(waiting: dict[str, Path], seen: dict[str, float], until: float) -> None:
    while waiting and time.perf_counter() < until:
        for stem, path in list(waiting.items()):
            if os.path.lexists(path):
                seen[stem] = time.perf_counter()
                del waiting[stem]
        time.sleep(POLL_S)


def floor_latencies(base: Path, n: int, gap: float) -> list[float]:
    directory = base / "floor" / "7"
    directory.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.floor", str(directory)],
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
    name = "bench.floor: inotify + the durable steps"
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


def file_ops_rate(base: Path, n: int) -> float:
    """Files a second for the file system's part of a burst's takes alone, as the bridge batches
    them (`files.rewrite_then_rename_many`): the new contents to temp files, one flush of the
    file system, then the two renames each; no reading, judging or publishing."""
    directory = base / "file-ops" / "7"
    directory.mkdir(parents=True)
    for i in range(n):
        drop(directory, f"t{i:05d}.{NOOP}")
    data = contract.dump({"type": NOOP, "task-id": "t", "state": "QUEUED", "progress": 0})
    olds = [directory / f"t{i:05d}.{NOOP}" for i in range(n)]
    batch = [
        files.Take(old, old.with_name(f"{old.stem}-0.{NOOP}"), data, os.lstat(old)) for old in olds
    ]
    start = time.perf_counter()
    for at in range(0, n, TAKE_BATCH):
        errors = files.rewrite_then_rename_many(batch[at : at + TAKE_BATCH])
        assert not any(errors), errors
    files.fsync_dir(directory)
    return n / (time.perf_counter() - start)


def bridge_rate(system: Stack, n: int) -> tuple[float, float, float]:
    """Files a second a running bridge takes from `n` dropped at once; its CPU, in cores; and
    files a second the benchmark wrote them at meanwhile."""
    root = system.new_root()
    bridge = system.bridge(root)
    directory = task_dir(root, "7")
    meter = CpuMeter(pid_of(bridge)).start()
    start = time.perf_counter()
    for i in range(n):
        drop(directory, f"t{i:05d}.{NOOP}")
    written = n / (time.perf_counter() - start)

    def done() -> bool:
        renamed = sum(1 for name in os.listdir(directory) if "-" in name)
        return renamed >= n and queued_messages(system.r) >= n

    wait_until(done, 600, interval=0.02, what=f"{n} files to be QUEUED")
    elapsed = time.perf_counter() - start
    cores = meter.stop()
    system.stop(bridge)
    return n / elapsed, cores, written


def throughput(system: Stack, n: int, repeat: int) -> Outcome:
    ours: list[float] = []
    base: list[float] = []
    cores: list[float] = []
    written: list[float] = []
    for _ in range(repeat):  # interleaved, so load on the machine hits both alike
        base.append(raw_send_rate(system, system.new_root(), n))
        system.r.flushall()
        rate, used, wrote = bridge_rate(system, n)
        written.append(wrote)
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
    floor = [file_ops_rate(system.base / f"ops{i}", n) for i in range(repeat)]
    out.notes.append(
        f"intake throughput floor: the batched takes' file operations alone "
        f"{median(floor):,.0f} files/s ({min(floor):,.0f}-{max(floor):,.0f}); the benchmark "
        f"itself wrote the {n:,} files at {median(written):,.0f} files/s while the "
        "bridge took them"
    )
    return out


def _per_call_ms(fn: Callable[[int], object], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1000


def steps(system: Stack, n: int) -> str:
    """The bridge's own steps of a take, each timed alone in this process: where a file's
    milliseconds go, and what Celery's publishing costs with and without its sent event."""
    root = system.new_root()
    directory = task_dir(root, "7")
    settings = Settings.from_env(system.env(root))
    noop = load_types(settings.type_dirs)[NOOP]
    app = make_app(settings)
    publisher = Publisher(publishing_app(settings), system.r)
    fields = {"type": NOOP, states.TASK_ID: "s", states.STATE: states.QUEUED, "progress": 0}
    for i in range(n):
        drop(directory, f"s{i:05d}.{NOOP}")
    tasks = [
        Tracked("7", f"s{i:05d}", noop, directory / f"s{i:05d}-0.{NOOP}",
                {**fields, states.JOB_ID: str(uuid.uuid4())})
        for i in range(n)
    ]  # fmt: skip
    data = contract.dump(fields)
    write = _per_call_ms(
        lambda i: files.rewrite_then_rename(directory / f"s{i:05d}.{NOOP}", tasks[i].path, data),
        n,
    )
    publish = _per_call_ms(lambda i: publisher.publish(tasks[i]), n)
    batched = _per_call_ms(lambda _: publisher.publish_many(tasks), 1) / n
    spec = tasks[0].spec()

    def send(i: int) -> None:
        app.send_task(NOOP_TASK, args=[spec], task_id=str(uuid.uuid4()), queue=NOOP_QUEUE,
                      exchange="", routing_key=NOOP_QUEUE, priority=kombu_priority(0))  # fmt: skip

    with_event = _per_call_ms(send, n)
    app.conf.task_send_sent_event = False
    without_event = _per_call_ms(send, n)
    app.close()
    system.r.flushall()
    return (
        f"a take's steps alone, ms per file: durable rewrite + rename (1 file and 2 directory "
        f"fsyncs) {write:.2f}, Publisher.publish {publish:.2f} alone, {batched:.2f} in one pass "
        f"(Celery's send_task alone {with_event:.2f}; {without_event:.2f} without the "
        "task-sent event)"
    )


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
    out.notes.append(steps(system, 50 if quick else 500))
    return out
