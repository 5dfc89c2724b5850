"""What the bridge's passes share: settings, the Redis handle and its guard, the table of tracked
jobs, the per-file guard, and the few indexes that outlive one pass.

Passes import this module, never each other; the loop (`daemon`) owns the order they run in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from bridge import contract, files, leader, metrics
from bridge.caps import Caps
from bridge.guard import Guard
from bridge.intake import Intake
from bridge.logs import ids
from bridge.model import Table, Tracked
from bridge.notify import Notifier, is_regular
from bridge.publish import Publisher
from bridge.schedule import Known
from bridge.settledindex import Settled
from taskd import roots, states
from taskd.settings import Settings, redact_url
from taskd.tasktypes import TaskType, notify_type

log = logging.getLogger(__name__)

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OperationalError)
BACKOFF_MAX_S = 5.0
OWNED_READ_LIMIT = 1 << 24  # a rare check of who holds a task-id reads at most this much
T = TypeVar("T")


def task_ids(task: Tracked) -> dict[str, str]:
    """`extra=` for a log line about a tracked task."""
    return ids(task.task_id, task.user, task.job_id)


def path_ids(path: Path) -> dict[str, str]:
    """`extra=` for a log line about a file that is, or may become, a task."""
    name = contract.parse_name((path.parent.name, path.name))
    return ids(name.stem, name.user) if name else ids(user_id=path.parent.name)


@dataclass
class RedisLink:
    """Redis, guarded: a call while it is away returns None, logged once per outage and again
    only when the reason changes (down, a wrong password, not Redis at all: `leader.explain`)."""

    client: Any
    metrics: metrics.Metrics
    url: str = ""  # redacted, for messages
    ok: bool = True
    retry_at: float = 0.0
    backoff: float = 0.5
    reason: str = ""

    def call(self, now: float, fn: Callable[[], T]) -> T | None:
        if not self.ok and now < self.retry_at:
            return None
        try:
            value = fn()
        except REDIS_ERRORS as exc:
            reason, text = _why(exc, self.url)
            if self.ok or reason != self.reason:
                log.warning("%s; files keep their state and are caught up when Redis answers", text)
            self.ok, self.reason = False, reason
            self.metrics.redis_seen(False, text)
            self.retry_at = now + self.backoff
            self.backoff = min(BACKOFF_MAX_S, self.backoff * 2)
            return None
        if not self.ok:
            log.warning("Redis is back; catching up")
            self.metrics.redis_seen(True)
        self.ok, self.backoff, self.reason = True, 0.5, ""
        return value


def _why(exc: BaseException, url: str) -> tuple[str, str]:
    """The reason of a Redis failure, also when kombu wrapped Redis's own error."""
    url = url or "TASKD_REDIS_URL"
    cause: BaseException | None = exc
    for _ in range(8):  # kombu may wrap Redis's error twice (a failed publish pipeline)
        if cause is None:
            break
        if isinstance(cause, redis.exceptions.RedisError):
            if "closed by server" in str(cause):  # a Redis that answered before went away
                return "down", f"no Redis answers at {url}: it closed the connection"
            if isinstance(cause, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
                return leader.explain(cause, url)
            if isinstance(
                cause, redis.exceptions.ReadOnlyError | redis.exceptions.BusyLoadingError
            ):
                return leader.explain(cause, url)
            return "error", f"Redis at {url} answered with an error: {cause}"
        cause = cause.__cause__ or cause.__context__
    return "down", f"no Redis answers at {url} ({exc})"


@dataclass
class Owners:
    """Which file holds each task-id of a user, so a second file cannot take it.

    Filled as files are taken, adopted or rejected; an entry is checked against the disk when
    it is used, so a file deleted since never blocks its task-id.
    """

    # "<user>/<task-id>" -> the holder's file name: one compact entry for each of a tree's
    # 100,000 files (user folders are flat, so the name and the user give the path).
    by_id: dict[str, str] = field(default_factory=dict)

    def note(self, user: str, task_id: str, path: Path) -> None:
        self.by_id[f"{user}/{task_id}"] = path.name

    def note_name(self, user: str, task_id: str, name: str) -> None:
        """`note` for a finished file known from the index: an earlier holder stays."""
        self.by_id.setdefault(f"{user}/{task_id}", name)

    def holder(self, user: str, task_id: str, path: Path) -> Path | None:
        """The other file that holds `task_id`, if there still is one."""
        key = f"{user}/{task_id}"
        held = self.by_id.get(key)
        if held is None or held == path.name:
            return None
        holder = path.with_name(held)
        if not _says_task(holder, task_id):
            del self.by_id[key]
            return None
        return holder


def _says_task(path: Path, task_id: str) -> bool:
    try:
        raw = files.read_regular(path, OWNED_READ_LIMIT)
        fields = contract.parse_content(contract.decode_utf8(raw))
    except (OSError, ValueError):
        return False
    return fields.get(states.TASK_ID) == task_id


class Core:
    """The state the passes share, and the few actions every pass may ask for."""

    def __init__(
        self, settings: Settings, types: Mapping[str, TaskType], app: Celery, client: Any
    ) -> None:
        self.settings = settings
        self.types = types
        self.app = app
        self.client = client
        self.metrics = metrics.Metrics(settings.mirror_interval)
        self.redis = RedisLink(client, self.metrics, redact_url(settings.redis_url))
        self.guard = Guard()
        self.table = Table()
        self.owners = Owners()
        self.intake = Intake(settings, types)
        self.caps = Caps(settings.data_root, types)
        self.root_id = roots.root_id(settings.data_root)
        self.publisher = Publisher(app, client, self.root_id)
        self.notifier = Notifier(notify_type(settings.notify_retry_intervals))
        self.pending_cancels: set[str] = set()
        self.orphans: dict[str, float] = {}  # job id -> since when it has had no lease
        self.recoveries: dict[str, int] = {}  # job id -> how often it was run again
        self.unstarted: dict[str, float] = {}  # job id -> since when it has waited unstarted
        self.adopting: dict[Path, dict[str, Any]] = {}  # files to resume once Redis is asked
        self.touched: set[Path] = set()  # tracked files an event says changed
        self.intake_cut = False  # the last intake pass ran out of time: run the next at once
        self.mails: dict[Path, tuple[float, bool]] = {}  # notify mails seen: since, closed
        # Finished files (path -> a hash of their signature): a rescan stats them instead of
        # reading them again. Strings and ints: a tree of 100,000 finished files is the norm.
        # Finished files read once, by path: (signature, task-id); kept across restarts in
        # `.taskd/settled` (bridge/settledindex.py) and written again when it changed.
        self.settled: dict[str, Settled] = {}
        self.settled_changed = False
        self.settled_loaded = False  # entries from the index, whose task-ids are not noted yet
        self.rescans = 0
        self.folders: dict[str, Any] = {}  # user folder -> what its last listing found
        self.folders_noted: dict[str, Any] = {}  # the same, holding files still to be read
        # What a long pass calls now and then so that new files are taken meanwhile
        # (bridge/daemon.py sets it: drain the watcher, take what came).
        self.between: Callable[[], None] | None = None
        # A notify job given up (its worker died under it too often): its task file says so in
        # notify-error (bridge/passes/notify.py sets it; the file's own state stays).
        self.notify_gave_up: Callable[[Tracked, str], None] = lambda job, error: None
        # Whether a user folder is watched: only a watched one may be skipped by a rescan.
        self.watched: Callable[[str], bool] = lambda path: False
        self.run_id: str | None = None
        # Jobs the mirror only watches for a state (bridge/passes/mirror.py), and when it next
        # looks at every job in full.
        self.quiet: dict[str, Known] = {}
        self.glanced: dict[str, bytes] = {}  # job id -> the state a glance last mirrored
        # When the next glance is due to write a report the rate rule held back (`glance_once`).
        self.glance_due = float("inf")
        # Ended files whose last rename found their name taken (a link, a folder, another
        # file in the way): each rescan tries again (`writer.rename_misnamed`).
        self.misnamed: dict[Path, tuple[Path, Tracked]] = {}
        self.unsweepable: set[Path] = set()  # leftovers the sweep could not remove, said once
        self.ended_jobs: list[str] = []  # ended since the last `writer.forget_ended`
        self.full_look_at = 0.0

    def track(self, task: Tracked) -> None:
        """Mirror `task` from now on, instead of any task tracked under its job id."""
        replaced = self.table.add(task)
        if replaced is not None:
            _release_spare(replaced)

    def untrack(self, task: Tracked) -> None:
        """Mirror `task` no more (it ended, or was cancelled): its spare goes with it."""
        self.table.drop(task)
        self.glanced.pop(task.job_id, None)
        _release_spare(task)

    def drop_spares(self) -> None:
        """At a clean stop: no spare outlives the bridge that keeps it."""
        for task in self.table.by_job.values():
            _release_spare(task)

    def cancel(self, task: Tracked) -> None:
        """The UI deleted (or replaced) the file: the job must never run, or stop, and send
        nothing. The cancel pass tells Redis and the workers."""
        self.untrack(task)
        self.quiet.pop(task.job_id, None)
        self.pending_cancels.add(task.job_id)
        notify = task.path.with_name(contract.notify_mail_name(task.task_id))
        if is_regular(notify):  # a link or FIFO in its place is no mail: left as it is
            notify.unlink(missing_ok=True)
        log.info("%s deleted: cancelling job %s", task.path.name, task.job_id, extra=task_ids(task))


def _release_spare(task: Tracked) -> None:
    files.drop_spare(task.spare)
    task.spare = None
