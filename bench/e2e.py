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

RATIO_GOAL = 0.8  # the bridge costs at most a fifth of the throughput
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
        path.unlink(missing_ok=True)  # a spare may go with its ended task meanwhile
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


RATES = ("bridge", "direct", "bare")
_measured: dict[int, list[Round]] = {}  # worker processes -> rounds of this invocation


class Round:
    """Jobs a second of each contender in one round, and the CPU each process spent on it."""

    def __init__(self) -> None:
        self.rates: dict[str, float] = {}
        self.cpu: dict[str, dict[str, float]] = {}


def one_round(system: Stack, root: Path, n: int, user: str, pids: dict, bare: bool) -> Round:
    out = Round()
    for name in RATES if bare else RATES[:2]:
        meters = Meters(system, pids)
        meters.start()
        if name == "bridge":
            out.rates[name] = through_bridge(system, root, user, n)
        else:
            out.rates[name] = straight(system, root, n, bare=name == "bare")
        out.cpu[name] = meters.stop()
    return out


def rounds(system: Stack, n: int, concurrency: int, repeat: int) -> list[Round]:
    """`repeat` rounds against one bridge and one worker of `concurrency` processes."""
    users = [f"{10 * concurrency + i}" for i in range(repeat)]
    root = system.new_root(users=users)
    bridge = system.bridge(root)
    worker = system.worker(root, concurrency=concurrency, name=f"c{concurrency}")
    pids = {"bridge": (pid_of(bridge), False), "worker": (pid_of(worker), True)}
    # The bare task is a reference, not a baseline: one round of it is enough.
    done = [one_round(system, root, n, user, pids, bare=k == 0) for k, user in enumerate(users)]
    system.stop(worker)
    system.stop(bridge)
    _measured[concurrency] = done
    return done


def size(quick: bool) -> int:
    return 300 if quick else 5000


def run(system: Stack, quick: bool, repeat: int) -> Outcome:
    n = size(quick)
    done = rounds(system, n, 2, repeat)
    ours, direct, bare = ([r.rates[k] for r in done if k in r.rates] for k in RATES)
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
    notes = [cpu_note(2, n, done[0])]
    return Outcome(rows=rows, notes=notes)


def cpu_note(concurrency: int, n: int, one: Round) -> str:
    parts = []
    for name in ("bridge", "direct"):
        per = {k: 1000 * v / n for k, v in one.cpu[name].items()}
        wall = n / one.rates[name]
        total = sum(one.cpu[name].values()) / wall
        split = ", ".join(f"{k} {v:.2f}" for k, v in per.items())
        parts.append(f"{name}: CPU s per 1,000 tasks: {split}; machine busy {total:.2f} cores")
    return f"-c {concurrency} (first round): " + "; ".join(parts)


def run_scaling(system: Stack, quick: bool, repeat: int) -> Outcome:
    """1 and 2 worker processes, one round each (the end-to-end rounds when they ran)."""
    n = size(quick)
    out = Outcome(series={"scaling": {}})
    for concurrency in (1, 2):
        done = _measured.get(concurrency) or rounds(system, n, concurrency, 1)
        one = done[0]
        row = Row(
            "scaling",
            f"{n:,} NOOP tasks, 1 worker -c {concurrency}",
            [one.rates["bridge"]],
            "tasks/s",
            [one.rates["direct"]],
            "straight to Celery",
        )
        print(describe(row) + f"; bare Celery {one.rates['bare']:.0f}/s", flush=True)
        out.rows.append(row)
        out.series["scaling"][concurrency] = {"rates": one.rates, "cpu": one.cpu, "n": n}
        out.notes.append(cpu_note(concurrency, n, one))
    return out
