"""What `taskd status` reports: task counts from the files, queue depths and workers from Redis.

Counts come from the task files under task_queue/, so the history survives restarts of Redis and
of the bridge; cancelled tasks (their files are gone) from the cancel marks Redis keeps 7 days.
Gathering only: rendering is `taskcli.statusview`'s job.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bridge.schedule import not_before, parse_time
from bridge.taskfiles import NEW, TaskFile, doing_of, read_task_files
from taskd import states
from taskd.celeryconf import PRIORITY_STEPS
from taskd.roots import serves_another

log = logging.getLogger(__name__)

CANCELLED = "CANCELLED"
"""A task whose file was deleted; counted from its cancel mark while Redis keeps it."""
RUNNING = frozenset({states.STARTED, states.PROGRESS})
UNACKED_KEY = "unacked"  # kombu's Redis transport: delivered to a worker, not yet acknowledged
INSPECT_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Running:
    user: str
    task_id: str
    type: str
    job_id: str
    state: str
    progress: int
    worker: str
    started_at: str
    doing: str = ""  # `step 1/2: searching 12/30 MB`, when the task says


@dataclass(frozen=True)
class Oldest:
    user: str
    task_id: str
    queued_at: str
    age_s: float


@dataclass
class Status:
    at: str
    today: dict[str, int]
    total: dict[str, int]
    running: list[Running]
    oldest_queued: Oldest | None
    queues: dict[str, int] = field(default_factory=dict)
    unacked: int = 0
    workers: dict[str, list[str]] = field(default_factory=dict)
    redis_error: str | None = None
    caps: dict[str, dict[str, int]] = field(default_factory=dict)  # capped types: cap, counts

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def count(tasks: Iterable[TaskFile], today: date) -> tuple[dict[str, int], dict[str, int]]:
    """Tasks by state: those that last moved today (UTC), and all of them."""
    on_day: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for task in tasks:
        total[task.state] += 1
        if task.state == NEW or task.last_change().date() == today:
            on_day[task.state] += 1
    return dict(on_day), dict(total)


def running(tasks: Iterable[TaskFile]) -> list[Running]:
    out = [
        Running(
            user=t.user,
            task_id=t.task_id,
            type=t.name.rsplit(".", 1)[-1],
            job_id=str(t.fields.get(states.JOB_ID, "")),
            state=t.state,
            progress=int(t.fields.get(states.PROGRESS_FIELD) or 0),
            worker=str(t.fields.get(states.WORKER, "")),
            started_at=str(t.fields.get(states.STARTED_AT, "")),
            doing=doing_of(t.fields),
        )
        for t in tasks
        if t.state in RUNNING
    ]
    return sorted(out, key=lambda r: (r.started_at, r.user, r.task_id))


def oldest_queued(tasks: Iterable[TaskFile], now: datetime) -> Oldest | None:
    """The QUEUED task that has waited longest since it was due (its run-at, or when queued)."""
    best: tuple[datetime, TaskFile] | None = None
    for task in tasks:
        if task.state != states.QUEUED:
            continue
        queued = parse_time(task.fields.get(states.QUEUED_AT))
        due = not_before(task.fields) or queued
        if due is None or due > now:
            continue
        if best is None or due < best[0]:
            best = (due, task)
    if best is None:
        return None
    due, task = best
    return Oldest(
        user=task.user,
        task_id=task.task_id,
        queued_at=str(task.fields.get(states.QUEUED_AT, "")),
        age_s=round((now - due).total_seconds(), 1),
    )


def from_files(tasks: list[TaskFile], now: datetime) -> Status:
    today, total = count(tasks, now.date())
    return Status(
        at=now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        today=today,
        total=total,
        running=running(tasks),
        oldest_queued=oldest_queued(tasks, now),
    )


def with_caps(tasks: Iterable[TaskFile], limits: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Each capped type: its cap, and its tasks running and queued by their files."""
    out = {name: {"cap": cap, "running": 0, "queued": 0} for name, cap in sorted(limits.items())}
    for task in tasks:
        row = out.get(task.name.rsplit(".", 1)[-1])
        if row is not None and task.state in RUNNING:
            row["running"] += 1
        elif row is not None and task.state == states.QUEUED:
            row["queued"] += 1
    return out


def queue_names(queues: Iterable[str]) -> dict[str, list[str]]:
    """Each Celery queue and its Redis lists, one per priority step: `retrieve`, `retrieve:1`..."""
    return {q: [q] + [f"{q}:{p}" for p in PRIORITY_STEPS if p] for q in sorted(set(queues))}


def queue_depths(client: Any, queues: Iterable[str]) -> tuple[dict[str, int], int]:
    """Messages waiting per queue (priority sub-queues summed), and those delivered unacked."""
    lists = queue_names(queues)
    with client.pipeline(transaction=False) as pipe:
        for names in lists.values():
            for name in names:
                pipe.llen(name)
        pipe.hlen(UNACKED_KEY)
        replies = iter(pipe.execute())
    depths = {queue: sum(int(next(replies)) for _ in names) for queue, names in lists.items()}
    return depths, int(next(replies))


def cancelled(client: Any, now: datetime) -> list[datetime]:
    """When each cancel mark still in Redis was set (its TTL counts down from CANCEL_TTL_S)."""
    keys = list(client.scan_iter(match=states.KEY_CANCEL.format(job_id="*"), count=1000))
    if not keys:
        return []
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.ttl(key)
        ttls = pipe.execute()
    return [
        now - timedelta(seconds=states.CANCEL_TTL_S - int(ttl))
        for ttl in ttls
        if isinstance(ttl, int) and ttl >= 0
    ]


def add_cancelled(status: Status, marks: list[datetime], today: date) -> None:
    if not marks:
        return
    status.total[CANCELLED] = len(marks)
    on_day = sum(1 for when in marks if when.date() == today)
    if on_day:
        status.today[CANCELLED] = on_day


def workers(app: Any, timeout: float = INSPECT_TIMEOUT_S) -> dict[str, list[str]]:
    """Workers that answer within `timeout`, each with the job ids it runs now."""
    replies = app.control.inspect(timeout=timeout).active() or {}
    return {
        name: sorted(str(job.get("id")) for job in jobs or [])
        for name, jobs in sorted(replies.items())
    }


def gather(
    task_queue: Path,
    max_bytes: int,
    client: Any,
    app: Any,
    queues: Iterable[str],
    user_id: str | None = None,
    now: datetime | None = None,
    limits: Mapping[str, int] | None = None,
    redis_url: str = "TASKD_REDIS_URL",
) -> Status:
    """The whole picture. Redis being away leaves the file counts and says why in redis_error.

    With `user_id`, the task counts are that user's; queues, workers and cancels stay global.
    """
    now = now or datetime.now(UTC)
    tasks = list(read_task_files(task_queue, max_bytes, user_id))
    status = from_files(tasks, now)
    status.caps = with_caps(tasks, limits or {})
    try:
        status.redis_error = serves_another(client, task_queue.parent, redis_url)
        if status.redis_error is not None:
            return status  # its queues, workers and cancels are another data root's
        status.queues, status.unacked = queue_depths(client, queues)
        add_cancelled(status, cancelled(client, now), now.date())
        status.workers = workers(app)
    except Exception as exc:  # noqa: BLE001 - report what is known, and why the rest is not
        status.redis_error = f"{type(exc).__name__}: {exc}"
    return status
