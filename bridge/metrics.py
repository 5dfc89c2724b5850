"""What the bridge has done and how it is doing: recorded by its loop, read by the HTTP thread.

The loop calls `count`, `redis_seen`, `mirrored`, `observe` and `held_files`; while the bridge
stands by, its leadership calls `standby` (why) and `active` (it took over). The HTTP thread only
calls `snapshot`, which copies everything under one lock. Nothing here touches files or Redis, so
a slow or stuck loop shows up as a growing mirror lag instead of a hung page.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric as Metric_
from prometheus_client.registry import Collector, CollectorRegistry

from bridge.history import Ended, History
from taskd import states

COUNTER = "counter"
GAUGE = "gauge"
HEALTHY_LAG_S = 5.0
"""A mirror further behind than this makes /healthz answer 503."""
ACTIVE_ROLE = "active"
STANDBY_ROLE = "standby"
OK, DEGRADED, UNHEALTHY = "ok", "degraded", "unhealthy"
"""/healthz's `status`: all well; files held back by the machine (a full disk); anything else."""
MAX_HELD_SHOWN = 20
"""/healthz names at most this many held files, and counts the rest."""

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
BRIDGE_ACTIVE = Metric(
    "taskd_bridge_active", GAUGE, "1 if this bridge is the active one, 0 while it stands by."
)
DEGRADED_GAUGE = Metric(
    "taskd_bridge_degraded",
    GAUGE,
    "1 while files are held back by an error of the machine (a full disk, say).",
)
HELD = Metric(
    "taskd_bridge_held_files",
    GAUGE,
    "Files held back now, by the error that holds them.",
    "reason",
)
WORKERS_ALIVE = Metric(
    "taskd_workers_alive",
    GAUGE,
    "Workers heard from in the last 20 s (each says so every 5 s); -1 before the first look.",
)
QUEUE_OLDEST = Metric(
    "taskd_queue_oldest_seconds",
    GAUGE,
    "How long the queued task that has waited longest has waited since it was due.",
)
WAITING = Metric(
    "taskd_tasks_waiting",
    GAUGE,
    "Tasks queued or waiting for a retry, by type.",
    "type",
)
COUNTERS = (TAKEN, REJECTED, ENDED, REPUBLISHED, RESCANS, RECONNECTS)
ALL = (
    *COUNTERS,
    ACTIVE,
    REDIS_UP,
    WATCHER_UP,
    MIRROR_LAG,
    MIRROR_TICK,
    BRIDGE_ACTIVE,
    DEGRADED_GAUGE,
    HELD,
    WORKERS_ALIVE,
    QUEUE_OLDEST,
    WAITING,
)
LABELLED_GAUGES = (HELD, WAITING)
DRAWN = {
    (TAKEN.name, None): "taken",
    (ENDED.name, states.SUCCESS): "succeeded",
    (ENDED.name, states.FAILURE): "failed",
    (REJECTED.name, None): "rejected",
}
"""Counters the page draws a minute at a time (bridge/history.py), by name and label."""


@dataclass(frozen=True)
class TaskRow:
    """One active task as the status page shows it."""

    task_id: str
    user_id: str
    type: str
    state: str
    progress: int
    doing: str = ""  # `step 1/2: searching 12/30 MB`, when the task says
    description: str = ""
    worker: str = ""
    started_at: str = ""
    queued_at: str = ""
    due_at: str = ""  # a queued task's run-at, a retrying one's retry-at
    due: float | None = None  # a waiting task: when it may start (epoch s)
    waiting_since: float | None = None  # a waiting task: since when it has been due (epoch s)


@dataclass(frozen=True)
class Snapshot:
    counts: Mapping[tuple[str, Labels], float]
    redis_ok: bool
    watcher_ok: bool
    mirror_lag: float
    mirror_tick: float
    tasks: tuple[TaskRow, ...] = ()
    role: str = ACTIVE_ROLE
    standby_reason: str | None = None  # why a standby waits
    held: tuple[tuple[str, str], ...] = ()  # files held back: (error, reason naming the file)
    redis_why: str = ""  # what the last failed Redis call said, in an operator's words
    workers_alive: int = -1  # -1: not looked yet
    at: float = 0.0  # the wall clock when it was taken
    version: int = 0  # moves on with each observed set of tasks (the page's cache key)

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
            BRIDGE_ACTIVE.name: float(self.role == ACTIVE_ROLE),
            DEGRADED_GAUGE.name: float(bool(self.held)),
            WORKERS_ALIVE.name: float(self.workers_alive),
            QUEUE_OLDEST.name: self.queue_oldest(),
        }

    def queue_oldest(self) -> float:
        since = [s for r in self.tasks if (s := r.waiting_since) is not None and s <= self.at]
        return max(0.0, self.at - min(since)) if since else 0.0

    def waiting_by_type(self) -> dict[str, int]:
        """Tasks due and waiting, by type (one scheduled for later is not backlog yet)."""
        out: dict[str, int] = {}
        for row in self.tasks:
            if row.state in (states.QUEUED, states.RETRY) and (
                row.waiting_since is None or row.waiting_since <= self.at
            ):
                out[row.type] = out.get(row.type, 0) + 1
        return out

    def held_by_error(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for error, _ in self.held:
            out[error] = out.get(error, 0) + 1
        return out


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
        self._redis_why = ""
        self._watcher_ok = True
        self._mirrored_at = clock()
        self._tick = 0.0
        self._tasks: tuple[TaskRow, ...] = ()
        self._make_rows: Callable[[], tuple[TaskRow, ...]] | None = None
        self._role = ACTIVE_ROLE
        self._standby_reason: str | None = None
        self._held: tuple[tuple[str, str], ...] = ()
        self._workers_alive = -1
        self._history = History()
        self._version = 0

    def count(self, metric: Metric, label: str | None = None, n: float = 1) -> None:
        key = ((metric.label, label),) if metric.label and label is not None else ()
        drawn = DRAWN.get((metric.name, label))
        with self._lock:
            self._counts[(metric.name, key)] = self._counts.get((metric.name, key), 0.0) + n
            if drawn is not None:
                self._history.count(drawn, time.time(), int(n))

    def task_ended(self, ended: Ended) -> None:
        """A task that ended (or was rejected), for the page's list of recent ones."""
        with self._lock:
            self._history.task_ended(ended)

    def redis_seen(self, ok: bool, why: str = "") -> None:
        """What the loop's last Redis call found (and, when it failed, why); a return after an
        outage is a reconnect."""
        with self._lock:
            if ok and not self._redis_ok:
                key = (RECONNECTS.name, ())
                self._counts[key] = self._counts.get(key, 0.0) + 1
            self._redis_ok, self._redis_why = ok, "" if ok else why

    def mirrored(self, started: float, ended: float) -> None:
        """A mirror tick that reached Redis and wrote what changed, on the loop's clock."""
        with self._lock:
            # How far behind the loop was when this tick began: the lag a slow tick leaves.
            self._history.lag(max(0.0, started - self._mirrored_at - self._interval), time.time())
            self._mirrored_at, self._tick = ended, max(0.0, ended - started)

    def observe(self, tasks: Iterable[TaskRow], watcher_ok: bool) -> None:
        rows = tuple(tasks)
        waiting = sum(1 for row in rows if row.state in (states.QUEUED, states.RETRY))
        self.observe_later(lambda: rows, waiting, watcher_ok)

    def observe_later(
        self, make: Callable[[], tuple[TaskRow, ...]], waiting: int, watcher_ok: bool
    ) -> None:
        """The active tasks as `make()` gives their rows, made only when a snapshot is taken
        (on the thread that asks for it): a second's rows of 2,000 running tasks are made once
        when the page is looked at, not every second; `waiting` of them wait."""
        with self._lock:
            self._make_rows, self._watcher_ok = make, watcher_ok
            self._version += 1
            self._history.level(waiting, time.time())

    def held_files(self, held: Iterable[tuple[str, str]]) -> None:
        """The files held back now, as (error, reason) pairs (bridge/guard.py's `held`)."""
        rows = tuple((str(error), str(reason)) for error, reason in held)
        with self._lock:
            self._held = rows

    def workers_seen(self, alive: int) -> None:
        with self._lock:
            self._workers_alive = alive

    def standby(self, reason: str) -> None:
        """This bridge waits, and why (another bridge is active, Redis does not answer...)."""
        with self._lock:
            self._role, self._standby_reason = STANDBY_ROLE, reason

    def active(self) -> None:
        """This bridge took over: its mirror lag counts from now."""
        with self._lock:
            self._role, self._standby_reason = ACTIVE_ROLE, None
            self._mirrored_at = self._clock()

    def snapshot(self) -> Snapshot:
        now, wall = self._clock(), time.time()
        with self._lock:
            if self._make_rows is not None:
                self._tasks, self._make_rows = self._make_rows(), None
            standby = self._role == STANDBY_ROLE
            return Snapshot(
                counts=dict(self._counts),
                redis_ok=self._redis_ok,
                watcher_ok=self._watcher_ok,
                # A standby mirrors nothing, so it is behind on nothing.
                mirror_lag=0.0 if standby else max(0.0, now - self._mirrored_at - self._interval),
                mirror_tick=self._tick,
                tasks=self._tasks,
                role=self._role,
                standby_reason=self._standby_reason,
                held=self._held,
                redis_why=self._redis_why,
                workers_alive=self._workers_alive,
                at=wall,
                version=self._version,
            )

    def drawn(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """For the page: the last hour a minute at a time, and the tasks that ended last. A
        loop stuck in a tick shows here too, as the lag of the minute it is stuck in."""
        now, wall = self._clock(), time.time()
        with self._lock:
            if self._role != STANDBY_ROLE:
                self._history.lag(max(0.0, now - self._mirrored_at - self._interval), wall)
            return self._history.last_hour(wall), self._history.recent()


def health(snap: Snapshot) -> tuple[bool, dict[str, Any]]:
    """/healthz: active, Redis reachable, watcher alive, mirror not lagging, no file held back;
    the body's `status` says which of ok, degraded (files held back only), unhealthy or standby,
    and `problems` names what is wrong."""
    if snap.role == STANDBY_ROLE:
        return False, _standby(snap)
    body: dict[str, Any] = {
        "status": OK,
        "role": ACTIVE_ROLE,
        "redis": snap.redis_ok,
        "watcher": snap.watcher_ok,
        "mirror_lag_s": round(snap.mirror_lag, 3),
    }
    problems = []
    if not snap.redis_ok:
        problems.append(
            f"redis unreachable: {snap.redis_why}" if snap.redis_why else "redis unreachable"
        )
    if not snap.watcher_ok:
        problems.append("watcher thread dead")
    if snap.mirror_lag >= HEALTHY_LAG_S:
        problems.append(f"mirror {snap.mirror_lag:.1f} s behind")
    if problems:
        body["status"] = UNHEALTHY
    elif snap.held:
        body["status"] = DEGRADED
    if snap.held:
        body["held_files"] = len(snap.held)
        problems.extend(_held_problems(snap.held))
    if problems:
        body["problems"] = problems
    return not problems, body


def _standby(snap: Snapshot) -> dict[str, Any]:
    """A standby is not healthy for traffic: it acts on nothing. Its body says why it waits."""
    reason = snap.standby_reason or "waiting to become the active bridge"
    return {
        "status": STANDBY_ROLE,
        "role": STANDBY_ROLE,
        "reason": reason,
        "redis": snap.redis_ok,
        "problems": [f"standby: {reason}"],
    }


def _held_problems(held: tuple[tuple[str, str], ...]) -> list[str]:
    reasons = sorted(reason for _, reason in held)
    shown = reasons[:MAX_HELD_SHOWN]
    if len(reasons) > len(shown):
        shown.append(f"and {len(reasons) - len(shown)} more files held back")
    return shown


class SnapshotCollector(Collector):
    """One snapshot as prometheus_client's metric families (a registry of its own per request:
    the snapshot is all there is, and nothing is kept between scrapes)."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric_]:
        snap, gauges = self.snap, self.snap.gauges()
        for metric in ALL:
            labels = [metric.label] if metric.label else []
            if metric.kind == COUNTER:
                counter = CounterMetricFamily(metric.name, metric.help, labels=labels)
                for (name, pairs), value in sorted(snap.counts.items()):
                    if name == metric.name:
                        counter.add_metric([v for _, v in pairs], value)
                yield counter
            elif metric in LABELLED_GAUGES:
                family = GaugeMetricFamily(metric.name, metric.help, labels=labels)
                by = snap.held_by_error() if metric is HELD else snap.waiting_by_type()
                for label, n in sorted(by.items()):
                    family.add_metric([label], n)
                yield family
            else:
                yield GaugeMetricFamily(metric.name, metric.help, value=gauges[metric.name])


def exposition(snap: Snapshot) -> str:
    """The Prometheus text format (version 0.0.4) of a snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap))
    return generate_latest(registry).decode("utf-8")
