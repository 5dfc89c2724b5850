"""The schedules pass: write the task files of schedules that are due (`bridge/schedules.py`).

Run by the active bridge only (a standby runs no pass), once a loop turn; the folder is listed
again when it changed or every `RELIST_S`, and a file is read again only when its signature
changed. A bad schedule file is logged once per content and its error written beside it
(`<name>.error`, removed once it is fixed); the others go on.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bridge import files, schedules, watch
from bridge.core import Core
from bridge.schedules import Schedule, ScheduleError
from taskd import atomic, names

log = logging.getLogger(__name__)

FOLDER = "schedules"
RELIST_S = 30.0
ERROR_SUFFIX = ".error"
RECORDS = "schedules"  # under <data-root>/.taskd/: the last due time written, by schedule


@dataclass
class _Known:
    sig: tuple[int, int, int, int] | None
    schedule: Schedule | None
    error: str | None = None


@dataclass
class Schedules:
    """What the pass remembers between turns."""

    listed_at: float = float("-inf")
    folder_sig: tuple[int, int] | None = None
    known: dict[str, _Known] = field(default_factory=dict)
    last: dict[str, datetime] = field(default_factory=dict)


def folder(core: Core) -> Path:
    return core.settings.data_root / FOLDER


def records(core: Core) -> Path:
    return records_in(core.settings.data_root)


def records_in(data_root: Path) -> Path:
    """Where the last due time written of each schedule is kept."""
    return data_root / names.PRIVATE_DIR / RECORDS


def schedules_once(core: Core, state: Schedules, now: float, wall: datetime | None = None) -> None:
    """List and read what changed, then write the task file of each schedule that is due."""
    where = folder(core)
    try:
        st = os.stat(where)
    except FileNotFoundError:
        state.known.clear()
        return
    sig = (st.st_mtime_ns, st.st_ctime_ns)
    if sig != state.folder_sig or now - state.listed_at >= RELIST_S:
        state.folder_sig, state.listed_at = sig, now
        _relist(core, state, where)
    wall = wall or datetime.now(UTC).replace(microsecond=0)
    for name, known in state.known.items():
        key = f"schedule {name}"
        if known.schedule is None or not core.guard.ready(key, now):
            continue
        problem = _folder_problem(core, known.schedule)
        if problem != known.error:  # said beside it, once, and taken back once it works
            known.error = problem
            if problem:
                log.error("schedule %s%s: %s", name, schedules.SUFFIX, problem)
            _write_error(where / f"{name}{schedules.SUFFIX}", problem)
        if problem is None:
            core.guard.run(
                key,
                "scheduling",
                now,
                lambda s=known.schedule: _fire_if_due(core, state, s, wall),  # type: ignore[misc]
            )


def _folder_problem(core: Core, schedule: Schedule) -> str | None:
    """Why the schedule's user folder cannot be written to, or None: it must be a folder of
    task_queue/, made by the UI (never made here), not a link."""
    try:
        st = os.lstat(core.settings.task_queue / schedule.user)
    except OSError:
        st = None
    if st is None or not stat.S_ISDIR(st.st_mode):
        return (
            f"field 'user-id': task_queue/{schedule.user} is not a folder (missing, or a link); "
            "name a user whose folder the UI made"
        )
    return None


def _relist(core: Core, state: Schedules, where: Path) -> None:
    seen: dict[str, _Known] = {}
    for entry in watch.listed(where):
        if not entry.name.endswith(schedules.SUFFIX):
            continue
        name = entry.name[: -len(schedules.SUFFIX)]
        path = where / entry.name
        try:
            sig = files.signature(path)
        except OSError:
            sig = None
        was = state.known.get(name)
        if was is not None and was.sig == sig:
            seen[name] = was
        else:
            seen[name] = _read(core, name, path, sig)
            state.last.pop(name, None)  # read again from its record, which knows its cron
    state.known = seen


def _read(core: Core, name: str, path: Path, sig: tuple[int, int, int, int] | None) -> _Known:
    try:
        raw = files.read_regular(path, schedules.MAX_BYTES)
        schedule = schedules.parse(name, raw, core.types)
    except (OSError, ScheduleError) as exc:
        error = _why(exc)
        log.error("schedule %s: %s", path.name, error)
        _write_error(path, error)
        return _Known(sig, None, error)
    _write_error(path, None)
    log.info(
        "schedule %s: %s, user %s, type %s", path.name, schedule.cron, schedule.user, schedule.type
    )
    return _Known(sig, schedule)


def _why(exc: Exception) -> str:
    if isinstance(exc, files.TooLarge):
        return f"{exc.size} bytes, over the limit of {exc.limit}; a schedule is a small file"
    if isinstance(exc, files.NotRegularFile):
        return "not a regular file (a link, folder or device); write the schedule itself here"
    return str(exc)


def _write_error(path: Path, error: str | None) -> None:
    """`<name>.error` beside a bad schedule, saying what to fix; removed once it is fixed."""
    target = path.with_suffix(ERROR_SUFFIX)
    try:
        if error is None:
            target.unlink(missing_ok=True)
        else:
            atomic.write_atomic(target, (error + "\n").encode(), durable=False)
    except OSError as exc:
        log.warning("cannot write %s (%s)", target, exc)


def _fire_if_due(core: Core, state: Schedules, schedule: Schedule, wall: datetime) -> None:
    last = state.last.get(schedule.name) or _load_last(core, schedule, wall)
    state.last[schedule.name] = last
    when = schedules.due(schedule, last, wall)
    if when is None:
        return
    _write_task(core, schedule, when)
    _save_last(core, schedule, when)
    state.last[schedule.name] = when


def _write_task(core: Core, schedule: Schedule, when: datetime) -> None:
    """The task file of one due time, unless a file of its task-id is there already (written
    before a restart or by another bridge): one file per due time, whatever happens."""
    user_dir = core.settings.task_queue / schedule.user
    task_id = schedule.task_id(when)
    for entry in watch.listed(user_dir):
        if entry.name.startswith((f"{task_id}.", f"{task_id}-")):
            return
    target = user_dir / schedule.file_name(when)
    tmp = atomic.write_temp(
        target, schedule.content(), durable=True, suffix=atomic.BRIDGE_TEMP_SUFFIX
    )
    try:
        files.place_new(tmp, target)
    except FileExistsError:
        return  # another bridge wrote it a moment ago
    finally:
        tmp.unlink(missing_ok=True)
    files.fsync_dir(user_dir)
    log.info("schedule %s: wrote %s/%s", schedule.name, schedule.user, target.name)


def _load_last(core: Core, schedule: Schedule, wall: datetime) -> datetime:
    """The last due time written for this schedule as it is now; a schedule never seen, one
    whose cron changed, or a record that cannot be believed (no zone, in the future) starts
    now."""
    path = records(core) / schedule.name
    try:
        when_text, _, cron = path.read_text().strip().partition(" ")
        when = datetime.fromisoformat(when_text)
    except (OSError, ValueError):
        when, cron = None, ""
    if when is None or when.tzinfo is None or when > wall or cron != schedule.cron:
        if when is not None:
            log.info("schedule %s: starts from now (%s)", schedule.name, _why_reset(when, wall))
        _save_last(core, schedule, wall)
        return wall
    return when


def _why_reset(when: datetime, wall: datetime) -> str:
    if when.tzinfo is None:
        return "its record has no time zone"
    return "its record is in the future" if when > wall else "its cron changed"


def _save_last(core: Core, schedule: Schedule, when: datetime) -> None:
    where = records(core)
    atomic.make_dirs(where, 0o700)
    record = f"{when.isoformat()} {schedule.cron}\n".encode()
    atomic.write_atomic(where / schedule.name, record, durable=True)
