"""Schedules: task files written at the times a cron expression names (poulpe's cron file,
Kingtask's timer tasks), by the active bridge only.

A schedule is a JSON file `<data-root>/schedules/<name>.json` (name: letters, digits, `_`):

    {"cron": "0 30 2 * * *", "user-id": "3", "type": "RETRMS",
     "task": {"type": "RETRMS", "criterion": {...}}, "missed": "run-once"}

`cron` has 5 fields (minute hour day month weekday), 6 (seconds first) or 7 (seconds first,
year last, as poulpe writes them); times are UTC. At each due time the bridge writes the task
file `task_queue/<user-id>/<name>_<YYYYMMDDTHHMMSSZ>.<type>` with `task` as its content: one
name per due time, never written when a file of that task-id is there already, and the due
time is recorded (`.taskd/schedules/<name>`) once the file is written, so restarts, a
take-over or two bridges racing never make two files of one due time. Due times missed while
no bridge ran (more than `LATE_S` late): `"missed": "run-once"` (the default) writes one file,
for the latest of them; `"skip"` writes none and waits for the next.

This module parses and computes (pure but for reading the clock's answer it is given); the
pass that lists, fires and records is `bridge/passes/schedules.py`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import croniter  # type: ignore[import-untyped]

from bridge import contract

NAME_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
SUFFIX = ".json"
MAX_BYTES = 65536
RUN_ONCE, SKIP = "run-once", "skip"
LATE_S = 60.0
"""A due time later than this when the bridge gets to it was missed (no bridge ran)."""
KEYS = frozenset({"cron", "user-id", "type", "task", "missed"})
_RANDOM = re.compile(r"(?<![A-Za-z])[RHrh](?![A-Za-z])")  # croniter's random and hashed


class ScheduleError(ValueError):
    """A schedule file is unusable; the message names the field and the fix."""


@dataclass(frozen=True)
class Schedule:
    name: str
    cron: str
    user: str
    type: str
    task: dict[str, Any]
    missed: str = RUN_ONCE

    def runs_after(self, after: datetime) -> Iterator[datetime]:
        """The due times after `after`, in order (UTC)."""
        fields = self.cron.split()
        it = croniter(self.cron, after, second_at_beginning=len(fields) > 5)
        while True:
            yield it.get_next(datetime)

    def latest_at(self, now: datetime) -> datetime | None:
        """The latest due time not after `now` (None: there is none, say before a year field)."""
        fields = self.cron.split()
        start = now + timedelta(seconds=1)
        try:
            value = croniter(self.cron, start, second_at_beginning=len(fields) > 5).get_prev(
                datetime
            )
        except Exception:  # noqa: BLE001 - croniter's "no such date" errors
            return None
        return value if isinstance(value, datetime) and value <= now else None

    def task_id(self, due: datetime) -> str:
        return f"{self.name}_{due.astimezone(UTC):%Y%m%dT%H%M%SZ}"

    def file_name(self, due: datetime) -> str:
        return f"{self.task_id(due)}.{self.type}"

    def content(self) -> bytes:
        return contract.dump(self.task)


def parse(
    name: str, raw: bytes, known_types: Mapping[str, Any], now: datetime | None = None
) -> Schedule:
    """A schedule file's content, checked; ScheduleError names what is wrong."""
    if not NAME_RE.fullmatch(name):
        raise ScheduleError(
            f"file name {name + SUFFIX!r}: name it <name>.json, the name letters, digits or _ "
            "(at most 64)"
        )
    try:
        fields = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ScheduleError(f"not JSON ({exc}); write one object") from None
    if not isinstance(fields, dict):
        raise ScheduleError('not a JSON object; write {"cron": ..., "user-id": ...}')
    unknown = sorted(set(fields) - KEYS)
    if unknown:
        raise ScheduleError(f"unknown field {unknown[0]!r}; the fields are {sorted(KEYS)}")
    cron = _cron(fields.get("cron"))
    user = fields.get("user-id")
    if not isinstance(user, str) or not contract.USER_RE.fullmatch(user):
        raise ScheduleError("field 'user-id': write the user's folder name ([A-Za-z0-9_]+)")
    kind, task = _task_of(fields, known_types)
    missed = fields.get("missed", RUN_ONCE)
    if missed not in (RUN_ONCE, SKIP):
        raise ScheduleError(f"field 'missed': write {RUN_ONCE!r} or {SKIP!r}")
    schedule = Schedule(name, cron, user, kind, {"type": kind, **task}, missed)
    try:
        schedule.content()
    except ValueError as exc:
        raise ScheduleError(f"field 'task': not strict JSON ({exc})") from None
    _due_again(schedule, now or datetime.now(UTC))
    return schedule


def _task_of(fields: Mapping[str, Any], known_types: Mapping[str, Any]) -> tuple[str, Any]:
    kind = fields.get("type")
    if not isinstance(kind, str) or kind not in known_types:
        raise ScheduleError(
            f"field 'type': {kind!r} is not a task type; known: {sorted(known_types)}"
        )
    task = fields.get("task")
    if not isinstance(task, dict):
        raise ScheduleError("field 'task': write the task file's JSON object")
    if task.get("type", kind) != kind:
        raise ScheduleError(f"field 'task': its type {task.get('type')!r} is not {kind!r}")
    return kind, task


def _due_again(schedule: Schedule, now: datetime) -> None:
    try:
        next(schedule.runs_after(now))
    except Exception as exc:  # noqa: BLE001 - croniter's "no such date" errors
        raise ScheduleError(
            f"field 'cron': {schedule.cron!r} is never due again (a date that does not exist, "
            f"or a year gone: {exc})"
        ) from None


def _cron(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ScheduleError("field 'cron': write a cron expression, like \"0 2 * * *\"")
    fields = value.split()
    if len(fields) not in (5, 6, 7):
        raise ScheduleError(
            f"field 'cron': {value!r} has {len(fields)} fields; write 5 (minute hour day month "
            "weekday), 6 (seconds first) or 7 (seconds first, year last)"
        )
    text = " ".join(fields)
    if _RANDOM.search(text):
        raise ScheduleError(
            f"field 'cron': {value!r}: R (random) and H (hashed) are not allowed; write the "
            "times themselves"
        )
    try:
        croniter(text, second_at_beginning=len(fields) > 5)
    except Exception as exc:  # noqa: BLE001 - croniter raises several kinds for a bad field
        raise ScheduleError(f"field 'cron': {value!r} is not a cron expression ({exc})") from None
    return text


def due(schedule: Schedule, last: datetime, now: datetime) -> datetime | None:
    """The due time to write a file for now, if any: the latest one not after `now`, if it is
    after `last`; one missed by more than LATE_S only if the schedule says `run-once`."""
    latest = schedule.latest_at(now)
    if latest is None or latest <= last:
        return None
    if schedule.missed == SKIP and (now - latest).total_seconds() > LATE_S:
        return None
    return latest


def next_runs(schedule: Schedule, now: datetime, n: int = 3) -> list[datetime]:
    """Up to `n` next due times (fewer when a year field leaves fewer)."""
    out: list[datetime] = []
    runs = schedule.runs_after(now)
    for _ in range(n):
        try:
            out.append(next(runs))
        except Exception:  # noqa: BLE001 - no further date
            break
    return out
