"""What the bridge has done and how it is doing: recorded by its loop, read by the HTTP thread.

The loop calls `count`, `redis_seen`, `mirrored` and `observe`; the HTTP thread only calls
`snapshot`, which copies everything under one lock. Nothing here touches files or Redis, so a
slow or stuck loop shows up as a growing mirror lag instead of a hung page.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from taskd import states

COUNTER = "counter"
GAUGE = "gauge"
HEALTHY_LAG_S = 5.0
"""A mirror further behind than this makes /healthz answer 503."""

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str
    help: str
    label: str | None = None  # the one label a labelled metric carries
    values: tuple[str, ...] = ()  # its values, shown at 0 before they first happen


TAKEN = Metric("taskd_files_taken_total", COUNTER, "Task files taken and published as jobs.")
REJECTED = Metric("taskd_files_rejected_total", COUNTER, "Task files rejected (state REJECTED).")
ENDED = Metric(
    "taskd_tasks_ended_total",
    COUNTER,
    "Taken tasks that reached a final state, by state.",
    "state",
    (states.SUCCESS, states.FAILURE),
)
WORKER_LOST = "worker_lost"
REDIS_LOST = "redis_lost"
REPUBLISHED = Metric(
    "taskd_jobs_republished_total",
    COUNTER,
    "Jobs published again: their worker died (worker_lost) or Redis lost them (redis_lost).",
    "reason",
    (WORKER_LOST, REDIS_LOST),
)
RESCANS = Metric("taskd_rescans_total", COUNTER, "Full rescans of task_queue/.")
RECONNECTS = Metric(
    "taskd_redis_reconnects_total", COUNTER, "Times Redis answered again after being unreachable."
)
ACTIVE = Metric("taskd_jobs_active", GAUGE, "Jobs the bridge mirrors now (taken, not ended).")
REDIS_UP = Metric("taskd_redis_up", GAUGE, "1 if the bridge's last Redis call succeeded.")
WATCHER_UP = Metric("taskd_watcher_up", GAUGE, "1 if the inotify watcher thread is alive.")
MIRROR_LAG = Metric(
    "taskd_mirror_lag_seconds",
    GAUGE,
    "How far mirroring is behind: seconds since the last complete mirror tick, less one interval.",
)
MIRROR_TICK = Metric(
    "taskd_mirror_tick_seconds", GAUGE, "How long the last complete mirror tick took."
)
COUNTERS = (TAKEN, REJECTED, ENDED, REPUBLISHED, RESCANS, RECONNECTS)
ALL = (*COUNTERS, ACTIVE, REDIS_UP, WATCHER_UP, MIRROR_LAG, MIRROR_TICK)


@dataclass(frozen=True)
class TaskRow:
    """One active task as the status page shows it."""

    task_id: str
    user_id: str
    type: str
    state: str
    progress: int


@dataclass(frozen=True)
class Snapshot:
    counts: Mapping[tuple[str, Labels], float]
    redis_ok: bool
    watcher_ok: bool
    mirror_lag: float
    mirror_tick: float
    tasks: tuple[TaskRow, ...] = ()

    def count(self, metric: Metric, label: str | None = None) -> float:
        key = ((metric.label, label),) if metric.label and label is not None else ()
        return self.counts.get((metric.name, key), 0.0)

    def gauges(self) -> dict[str, float]:
        return {
            ACTIVE.name: float(len(self.tasks)),
            REDIS_UP.name: float(self.redis_ok),
            WATCHER_UP.name: float(self.watcher_ok),
            MIRROR_LAG.name: self.mirror_lag,
            MIRROR_TICK.name: self.mirror_tick,
        }


def _zeros() -> dict[tuple[str, Labels], float]:
    out: dict[tuple[str, Labels], float] = {}
    for metric in COUNTERS:
        if metric.label is None:
            out[(metric.name, ())] = 0.0
        for value in metric.values:
            out[(metric.name, ((str(metric.label), value),))] = 0.0
    return out


class Metrics:
    def __init__(self, mirror_interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = mirror_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._counts = _zeros()
        self._redis_ok = True
        self._watcher_ok = True
        self._mirrored_at = clock()
        self._tick = 0.0
        self._tasks: tuple[TaskRow, ...] = ()

    def count(self, metric: Metric, label: str | None = None, n: float = 1) -> None:
        key = ((metric.label, label),) if metric.label and label is not None else ()
        with self._lock:
            self._counts[(metric.name, key)] = self._counts.get((metric.name, key), 0.0) + n

    def redis_seen(self, ok: bool) -> None:
        """What the loop's last Redis call found; a return after an outage is a reconnect."""
        with self._lock:
            if ok and not self._redis_ok:
                key = (RECONNECTS.name, ())
                self._counts[key] = self._counts.get(key, 0.0) + 1
            self._redis_ok = ok

    def mirrored(self, started: float, ended: float) -> None:
        """A mirror tick that reached Redis and wrote what changed, on the loop's clock."""
        with self._lock:
            self._mirrored_at, self._tick = ended, max(0.0, ended - started)

    def observe(self, tasks: Iterable[TaskRow], watcher_ok: bool) -> None:
        rows = tuple(tasks)
        with self._lock:
            self._tasks, self._watcher_ok = rows, watcher_ok

    def snapshot(self) -> Snapshot:
        now = self._clock()
        with self._lock:
            return Snapshot(
                counts=dict(self._counts),
                redis_ok=self._redis_ok,
                watcher_ok=self._watcher_ok,
                mirror_lag=max(0.0, now - self._mirrored_at - self._interval),
                mirror_tick=self._tick,
                tasks=self._tasks,
            )


def health(snap: Snapshot) -> tuple[bool, dict[str, object]]:
    """/healthz: Redis reachable, watcher alive, mirror not lagging; the body names what is not."""
    body: dict[str, object] = {
        "redis": snap.redis_ok,
        "watcher": snap.watcher_ok,
        "mirror_lag_s": round(snap.mirror_lag, 3),
    }
    problems = []
    if not snap.redis_ok:
        problems.append("redis unreachable")
    if not snap.watcher_ok:
        problems.append("watcher thread dead")
    if snap.mirror_lag >= HEALTHY_LAG_S:
        problems.append(f"mirror {snap.mirror_lag:.1f} s behind")
    if problems:
        body["problems"] = problems
    return not problems, body


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample(name: str, labels: Labels, value: float) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    number = repr(float(value)) if value != int(value) else str(int(value))
    return f"{name}{{{inner}}} {number}" if inner else f"{name} {number}"


def exposition(snap: Snapshot) -> str:
    """The Prometheus text format (version 0.0.4) of a snapshot."""
    gauges = snap.gauges()
    lines: list[str] = []
    for metric in ALL:
        lines.append(f"# HELP {metric.name} {metric.help}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        if metric.kind == GAUGE:
            lines.append(_sample(metric.name, (), gauges[metric.name]))
            continue
        for (name, labels), value in sorted(snap.counts.items()):
            if name == metric.name:
                lines.append(_sample(name, labels, value))
    return "\n".join(lines) + "\n"
