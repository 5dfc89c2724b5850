"""The bridge's loop: it owns the order of the passes and nothing else.

Everything that touches files or Redis happens on this one thread, in passes that each take
`now` (bridge/passes/): intake, mirror, notify, reconcile, cancel. The watchdog thread only
enqueues paths; the HTTP thread (bridge/web.py) only reads the snapshot left in `metrics`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from functools import partial
from typing import Any

from celery import Celery

from bridge import metrics, schedule, taskfiles, watch, web, writer
from bridge.core import Core
from bridge.model import Table, Tracked
from bridge.passes import cancel, intake, mirror, notify, reconcile, schedules
from bridge.rootcheck import RootCheck
from bridge.settledindex import Settled
from bridge.web.door import open_door
from taskd import states
from taskd.alive import count as workers_alive
from taskd.roots import RootConflict
from taskd.settings import Settings
from taskd.tasktypes import TaskType

log = logging.getLogger(__name__)
TICK_FAILED_PAUSE_S = 1.0
SCHEDULE_EVERY_S = 0.5  # how often due schedules are looked for (cron has seconds)
WORKERS_LOOK_EVERY_S = 5.0  # how often the workers alive are counted (taskd/alive.py)
MIN_GLANCE_GAP_S = 0.05  # glances for held-back reports come no closer than this


ROW_TEXT_MAX = 200  # a field shown on the page is cut to this many characters


def _text(fields: Mapping[str, Any], key: str) -> str:
    value = fields.get(key)
    return value[:ROW_TEXT_MAX] if isinstance(value, str) else ""


def _row(task: Tracked, fields: Mapping[str, Any], state: str) -> metrics.TaskRow:
    """The page's row of `task`, as its `fields` and `state` were when it was observed."""
    progress = fields.get(states.PROGRESS_FIELD)
    percent = progress if isinstance(progress, int) and not isinstance(progress, bool) else 0
    return metrics.TaskRow(
        task.task_id,
        task.user,
        task.type.name,
        state,
        percent,
        taskfiles.doing_of(fields),
        description=_text(fields, "description"),
        worker=_text(fields, states.WORKER),
        started_at=_text(fields, states.STARTED_AT),
        queued_at=_text(fields, states.QUEUED_AT),
        due_at=_text(fields, states.RETRY_AT if state == states.RETRY else states.RUN_AT),
        # Parsed here for waiting tasks only; a running one's times the page parses when it
        # is looked at.
        due=_epoch(_due(fields, state)),
        waiting_since=_waiting_since(fields, state),
    )


def _epoch(when: datetime | None) -> float | None:
    return when.timestamp() if when is not None else None


def _due(fields: Mapping[str, Any], state: str) -> datetime | None:
    """When a waiting task may start: a retry's retry-at, else its run-at or delay (as the
    schedule reads them: a time without a zone is UTC)."""
    if state == states.RETRY:
        return schedule.parse_time(fields.get(states.RETRY_AT))
    return schedule.not_before(fields) if state == states.QUEUED else None


def _waiting_since(fields: Mapping[str, Any], state: str) -> float | None:
    """A waiting task: since when it has been (or will be) due, the later of when it was
    queued and its run-at, delay or retry-at; None when it is not waiting."""
    if state not in WAITING:
        return None
    queued = schedule.parse_time(fields.get(states.QUEUED_AT))
    due = _due(fields, state)
    if state == states.RETRY and due is None:
        return None  # its retry-at is not known yet: the worker's next report says it
    since = max(t for t in (queued, due) if t is not None) if (queued or due) else None
    return since.timestamp() if since is not None else None


WAITING = (states.QUEUED, states.RETRY)
_Seen = tuple[Tracked, dict[str, Any], str]


class _Rows:
    """The page's rows: what each task's file said is noted once a tick (`later`), and the
    rows are made from that only when the page is looked at, again only for tasks whose
    state or fields moved since the rows were last made."""

    def __init__(self) -> None:
        self._made: dict[int, tuple[Tracked, Any, Any, metrics.TaskRow]] = {}

    def later(
        self, tasks: Iterable[Tracked]
    ) -> tuple[Callable[[], tuple[metrics.TaskRow, ...]], int]:
        """What makes the rows of `tasks` as they are now, and how many of them wait. A write
        gives a task new fields (a new dict); only a publish changes its state in place
        (`dispatch.after_publish`), so the dict and the state say what the file said."""
        seen = [(task, task.fields, str(task.fields.get(states.STATE))) for task in tasks]
        waiting = sum(1 for _, _, state in seen if state in WAITING)
        return partial(self._of, seen), waiting

    def _of(self, seen: list[_Seen]) -> tuple[metrics.TaskRow, ...]:
        made: dict[int, tuple[Tracked, Any, Any, metrics.TaskRow]] = {}
        out = []
        for task, fields, state in seen:
            old = self._made.get(id(task))  # held in `old`, so no other task has its id
            if old and old[0] is task and old[1] is fields and old[2] == state:
                row = old[3]
            else:
                row = _row(task, fields, state)
            made[id(task)] = (task, fields, state, row)
            out.append(row)
        self._made = made
        return tuple(out)


class Bridge:
    def __init__(
        self, settings: Settings, types: Mapping[str, TaskType], app: Celery, client: Any
    ) -> None:
        self.core = Core(settings, types, app, client)
        self.watcher = watch.Watcher(settings.task_queue)
        self.core.between = self._intake_between
        self.core.notify_gave_up = partial(notify.give_up, self.core)
        self.core.watched = self.watcher.watches
        self._rows = _Rows()
        self.root = RootCheck(settings, client, self.core.root_id)
        self._last_failure: str | None = None
        self.glance_every = settings.mirror_interval / mirror.GLANCES_PER_TICK
        self.next_glance = 0.0
        self.next_workers_look = 0.0
        self.schedules = schedules.Schedules()
        self.next_schedule = 0.0

    # What tests and the HTTP endpoint read.
    @property
    def settings(self) -> Settings:
        return self.core.settings

    @property
    def table(self) -> Table:
        return self.core.table

    @property
    def metrics(self) -> metrics.Metrics:
        return self.core.metrics

    @property
    def settled(self) -> dict[str, Settled]:
        return self.core.settled

    @property
    def intake(self) -> Any:
        return self.core.intake

    # --- one pass each, as tests call them --------------------------------------------------

    def intake_once(self, now: float) -> None:
        intake.intake_once(self.core, now)

    def write(self, task: Tracked, updates: Mapping[str, Any], now: float) -> None:
        self.core.guard.run(
            str(task.path),
            "writing",
            now,
            lambda: writer.write(self.core, task, updates, now),
        )

    def rescan_once(self, now: float) -> None:
        """Catch what events missed, then take and send what it found."""
        markers = reconcile.rescan_once(self.core, now)
        notify.settle_markers(self.core, markers, now)
        intake.intake_once(self.core, now)
        reconcile.folders_read(self.core)
        notify.mails_once(self.core, now)

    def mirror_once(self, now: float) -> None:
        cancel.cancel_once(self.core, now)
        known = mirror.mirror_once(self.core, now)
        if known is not None:
            notify.notify_once(self.core, now, known)

    # --- the driver -------------------------------------------------------------------------

    def start(self) -> None:
        now = time.monotonic()
        self.root.check_once(now)
        self.watcher.start()
        reconcile.load_settled(self.core)
        self.rescan_once(now)
        self.core.caps.backlog = set(self.core.intake.pending)  # counted once resumed
        # Files the bridge wrote are adopted in that first pass (intake does not make them
        # wait to settle), so what Redis still lists beyond them lost its file.
        reconcile.cancel_orphans(self.core, now)
        self.mirror_once(now)
        self.observe()

    def _intake_between(self) -> None:
        """Within a long mirror tick: take the files that arrived since it began."""
        seen = self.watcher.drain()
        if not seen:
            return
        now = time.monotonic()
        for event in seen:
            intake.note_event(self.core, event, now)
        intake.intake_once(self.core, now)

    def observe(self) -> None:
        """Leave a snapshot of the active tasks for the HTTP thread (once a mirror tick)."""
        alive = self.watcher.alive()
        now = time.monotonic()
        rows, waiting = self._rows.later(self.table.by_job.values())
        self.metrics.observe_later(rows, waiting, alive)
        self.metrics.held_files(self.core.guard.held(now, self.settings.data_root))
        if now >= self.next_workers_look:
            self.next_workers_look = now + WORKERS_LOOK_EVERY_S
            found = self.core.redis.call(now, lambda: workers_alive(self.core.client, time.time()))
            if found is not None:
                self.metrics.workers_seen(found)

    def tick(self, now: float, next_mirror: float, next_rescan: float) -> tuple[float, float]:
        self.root.check_once(now)
        for seen in self.watcher.drain():
            intake.note_event(self.core, seen, now)
        intake.intake_once(self.core, now)
        if self.core.folders_noted and not self.core.intake.pending:
            reconcile.folders_read(self.core)  # a long first scan's folders, once all are read
        notify.mails_once(self.core, now)
        cancel.cancel_once(self.core, now)
        if now >= next_mirror:
            self.mirror_once(now)
            self.observe()
            next_mirror += self.settings.mirror_interval
            if next_mirror <= now:
                next_mirror = now + self.settings.mirror_interval
            self.next_glance = now + self.glance_every
        elif now >= self.next_glance:
            reported = mirror.glance_once(self.core, now)
            resting = self.core.glance_due < next_mirror  # files the rate rule frees before it
            self.next_glance = self._next_glance(now) if reported or resting else next_mirror
        if now >= self.next_schedule:
            schedules.schedules_once(self.core, self.schedules, now)
            self.next_schedule = now + SCHEDULE_EVERY_S
        if now >= next_rescan:
            self.rescan_once(now)
            reconcile.cancel_orphans(self.core, now)
            next_rescan = now + self.settings.rescan_interval
        writer.forget_ended(self.core, now)  # what other passes ended this tick
        return next_mirror, next_rescan

    def _next_glance(self, now: float) -> float:
        """A glance's share of a tick on, or sooner when a report the rate rule held back may
        be written then: a file written just before its job's next report would otherwise
        show that report up to a glance late, every second, for as long as the two keep step
        (the lag's tail on a slow disk)."""
        held = max(self.core.glance_due, now + MIN_GLANCE_GAP_S)
        return min(now + self.glance_every, held)

    def run(self, stop: threading.Event, server: web.StatusServer | None = None) -> None:
        # Served from the start, so /healthz reports a long first scan as mirror lag; `server`
        # is one the caller started already on `self.metrics` (it answered while standing by).
        if server is None:
            door = open_door(self.settings, self.core.types)
            server = web.serve(
                self.settings.http_host, self.settings.serve_port, self.metrics, door
            )
        try:
            self._loop(stop)
        finally:
            if server is not None:
                server.stop()

    def _loop(self, stop: threading.Event) -> None:
        try:
            self.start()
        except RootConflict as exc:
            log.error("%s", exc)
            raise
        now = time.monotonic()
        next_mirror = now + self.settings.mirror_interval
        next_rescan = now + self.settings.rescan_interval
        try:
            while not stop.is_set():
                now = time.monotonic()
                try:
                    next_mirror, next_rescan = self.tick(now, next_mirror, next_rescan)
                except RootConflict as exc:  # not a file's or a tick's: this bridge must not act
                    log.error("%s", exc)
                    raise
                except Exception as exc:  # a bug outside any file's guard: never the loop
                    self._tick_failed(exc, stop)
                    continue
                wake = min(next_mirror, next_rescan, self.next_glance)
                if self.schedules.known:
                    wake = min(wake, self.next_schedule)
                if self.core.intake_cut:
                    wake = now
                elif self._busy(now):
                    wake = min(wake, now + 0.05)
                self.watcher.wait(max(0.0, wake - time.monotonic()), stop)
        finally:
            self.watcher.stop()
            self.core.drop_spares()
            reconcile.save_settled(self.core)

    def _tick_failed(self, exc: Exception, stop: threading.Event) -> None:
        """Log a failed tick once per kind of error, pause, and carry on."""
        kind = f"{type(exc).__name__}: {exc}"
        if kind != self._last_failure:
            log.exception("a pass failed outside any file's guard (%s); carrying on", kind)
            self._last_failure = kind
        stop.wait(TICK_FAILED_PAUSE_S)

    def _busy(self, now: float) -> bool:
        """Work that cannot wait for the next tick: files settling, mails, a file held back
        that is due again."""
        core = self.core
        pending = len(core.intake.pending)
        return bool(core.mails) or pending > len(core.guard.troubles)
