"""End to end: NOOP tasks through bridge and worker, against the same task sent straight to Celery.

Through the bridge, `n` task files are dropped at once and timed until every file reads SUCCESS
(renamed `-100`): intake, publish, the worker, and the mirror's next tick. The baseline sends the
same NOOP task (taskd's task class: claim, outcome, heartbeat) straight to Celery from one process
and waits for every SUCCESS in the result backend; for reference, a bare Celery task that does
nothing too. Scaling repeats it with 1 and 2 worker processes and splits the CPU time between the
bridge, the worker (parent and pool), redis-server and the benchmark itself.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    BARE_TASK,
    NOOP,
    NOOP_QUEUE,
    NOOP_TASK,
    CpuMeter,
    Outcome,
    Row,
    Stack,
    describe,
    drop,
    median,
    pid_of,
    task_dir,
    verdict,
)
from taskd.celeryconf import kombu_priority, make_app
from taskd.settings import Settings
from tests.support.procs import wait_until

RATIO_GOAL = 0.5
POLL_S = 0.1
DONE_SUFFIX = f"-100.{NOOP}"


class Meters:
    """CPU of each part of the system over one run, in core-seconds."""

    def __init__(self, system: Stack, pids: dict[str, tuple[int, bool]]) -> None:
        assert system.redis.proc is not None
        self.meters = {name: CpuMeter(pid, tree) for name, (pid, tree) in pids.items()}
        self.meters["redis-server"] = CpuMeter(system.redis.proc.pid)
        self.meters["benchmark"] = CpuMeter(os.getpid())

    def start(self) -> None:
        for meter in self.meters.values():
            meter.start()

    def stop(self) -> dict[str, float]:
        for meter in self.meters.values():
            meter.stop()
        return {name: meter.cpu for name, meter in self.meters.items()}


def through_bridge(system: Stack, root: Path, user: str, n: int) -> float:
    directory = task_dir(root, user)
    start = time.perf_counter()
    for i in range(n):
        drop(directory, f"e{i:05d}.{NOOP}")

    def done() -> bool:
        return sum(1 for name in os.listdir(directory) if name.endswith(DONE_SUFFIX)) >= n

    wait_until(done, 600, interval=POLL_S, what=f"{n} task files to read SUCCESS")
    elapsed = time.perf_counter() - start
    for path in directory.iterdir():  # keep the next round's tree as small as this one's
        path.unlink()
    return n / elapsed


def straight(system: Stack, root: Path, n: int, bare: bool) -> float:
    """Send `n` jobs from one process, as the bridge would but without it; jobs a second."""
    app = make_app(Settings.from_env(system.env(root)))
    ids = [str(uuid.uuid4()) for _ in range(n)]
    spec = {"type": NOOP, "user-id": "8", "task-id": "direct", "fields": {"type": NOOP}}
    options = {
        "queue": NOOP_QUEUE,
        "exchange": "",
        "routing_key": NOOP_QUEUE,
        "priority": kombu_priority(0),
    }
    start = time.perf_counter()
    for job_id in ids:
        if bare:
            app.send_task(BARE_TASK, task_id=job_id, **options)
        else:
            app.send_task(NOOP_TASK, args=[{**spec, "retries": 0}], task_id=job_id, **options)
    pending = ids

    def done() -> bool:
        nonlocal pending
        metas = system.r.mget([f"celery-task-meta-{j}" for j in pending])
        pending = [j for j, m in zip(pending, metas, strict=True) if not m or b"SUCCESS" not in m]
        return not pending

    wait_until(done, 600, interval=POLL_S, what=f"{n} jobs to succeed")
    elapsed = time.perf_counter() - start
    app.close()
    return n / elapsed


Contender = Callable[[], float]


def one_round(system: Stack, root: Path, n: int, tag: str) -> dict[str, float]:
    contenders: dict[str, Contender] = {
        "bridge": lambda: through_bridge(system, root, f"{tag}", n),
        "direct": lambda: straight(system, root, n, bare=False),
        "bare": lambda: straight(system, root, n, bare=True),
    }
    return {name: fn() for name, fn in contenders.items()}


def run(system: Stack, quick: bool, repeat: int) -> Outcome:
    n = 300 if quick else 5000
    root = system.new_root()
    system.bridge(root)
    system.worker(root, concurrency=2)
    rounds = [one_round(system, root, n, f"{10 + i}") for i in range(repeat)]
    ours = [r["bridge"] for r in rounds]
    direct = [r["direct"] for r in rounds]
    bare = [r["bare"] for r in rounds]
    ratio = median(ours) / median(direct)
    rows = [
        Row(
            "end to end",
            f"{n:,} NOOP tasks, bridge + 1 worker -c 2",
            ours,
            "tasks/s",
            direct,
            "the same task sent straight to Celery",
            f">= {RATIO_GOAL:g}x straight",
            verdict(ratio >= RATIO_GOAL),
        ),
        Row(
            "end to end",
            "taskd's task class, sent straight (no bridge)",
            direct,
            "tasks/s",
            bare,
            "a bare Celery task doing nothing",
        ),
    ]
    for row in rows:
        print(describe(row), flush=True)
    return Outcome(rows=rows, series={"e2e": {"bridge": ours, "direct": direct, "bare": bare}})


def measured_round(system: Stack, root: Path, n: int, concurrency: int) -> tuple[dict, dict]:
    """One round with CPU meters on every process: rates, and core-seconds per contender."""
    bridge = system.bridge(root)
    worker = system.worker(root, concurrency=concurrency, name=f"c{concurrency}")
    pids = {"bridge": (pid_of(bridge), False), "worker": (pid_of(worker), True)}
    rates: dict[str, float] = {}
    cpu: dict[str, dict[str, float]] = {}
    for name in ("bridge", "direct", "bare"):
        meters = Meters(system, pids)
        meters.start()
        if name == "bridge":
            rates[name] = through_bridge(system, root, f"{20 + concurrency}", n)
        else:
            rates[name] = straight(system, root, n, bare=name == "bare")
        cpu[name] = meters.stop()
    system.stop(worker)
    system.stop(bridge)
    return rates, cpu


def cpu_note(concurrency: int, n: int, rates: dict[str, float], cpu: dict) -> str:
    parts = []
    for name in ("bridge", "direct"):
        per = {k: 1000 * v / n for k, v in cpu[name].items()}
        wall = n / rates[name]
        total = sum(cpu[name].values()) / wall
        split = ", ".join(f"{k} {v:.2f}" for k, v in per.items())
        parts.append(f"{name}: CPU s per 1,000 tasks: {split}; machine busy {total:.2f} cores")
    return f"-c {concurrency}: " + "; ".join(parts)


def run_scaling(system: Stack, quick: bool, repeat: int) -> Outcome:
    n = 300 if quick else 3000
    out = Outcome(series={"scaling": {}})
    for concurrency in (1, 2):
        rates, cpu = measured_round(system, system.new_root(), n, concurrency)
        row = Row(
            "scaling",
            f"{n:,} NOOP tasks, 1 worker -c {concurrency}",
            [rates["bridge"]],
            "tasks/s",
            [rates["direct"]],
            "straight to Celery",
        )
        print(describe(row) + f"; bare Celery {rates['bare']:.0f}/s", flush=True)
        out.rows.append(row)
        out.series["scaling"][concurrency] = {"rates": rates, "cpu": cpu, "n": n}
        out.notes.append(cpu_note(concurrency, n, rates, cpu))
    return out
