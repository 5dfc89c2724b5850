"""Writing a tracked task's new fields into its file: the name first, then the content.

Used by every pass that changes a running task (mirror, recovery, the guard ending a task); the
bytes themselves are written by `files`, the only code that writes task files.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from bridge import contract, files, metrics
from bridge.core import Core, task_ids
from bridge.history import Ended, cut
from bridge.mirror import utc_now
from bridge.model import Tracked
from taskd import states

log = logging.getLogger(__name__)

RATE_SLACK = 0.95


class Batch:
    """A pass's writes: those that change a task's state are staged and made durable together,
    then swapped in (`finish`), and their folders flushed once, before the pass acts on any of
    them (publishes, forgets, notifies)."""

    def __init__(self) -> None:
        self.folders: set[Path] = set()
        self.durable = files.Durable()
        self.pending: list[_Pending] = []


class _Pending(NamedTuple):
    task: Tracked
    fields: dict[str, Any]
    staged: files.Staged
    now: float


def write(
    core: Core,
    task: Tracked,
    updates: Mapping[str, Any],
    now: float,
    batch: Batch | None = None,
) -> bool:
    """Merge `updates` into the task's file, at most once a tick unless the state ends; False
    when the file was written less than a tick ago and must wait (the updates are not in it).

    With `batch`, a change of state is staged: its new content lands, durable, when the caller
    finishes the batch (`finish`), with every other change of the pass, before the caller acts
    on any of them. Without, it lands now, its file and folder fsynced.

    An OSError is raised to the caller's guard (which holds the file back while the disk is
    full, say); a file gone under the bridge is a cancel.
    """
    fields = contract.merge(task.fields, updates)
    if fields == task.fields:
        return True
    state_changed = fields[states.STATE] != task.state
    terminal = fields[states.STATE] in states.TERMINAL
    if not terminal and now - task.last_write < RATE_SLACK * core.settings.mirror_interval:
        return False
    new_path = task.path.with_name(
        contract.render_name(task.task_id, task.type.name, fields, task.type.runtime_info)
    )
    # The name first, then the content (file-contract.md); each step is tracked on its own,
    # so a rewrite that fails after the rename is retried under the new name.
    try:
        files.rename_noreplace(task.path, new_path)
    except FileNotFoundError:
        core.cancel(task)
        return True
    except FileExistsError:
        _name_taken(core, task, new_path, terminal)
        new_path = task.path  # keep ours, the content still says
    core.table.move(task, new_path)
    seen = files.regular_or_none(new_path)
    task.written = None if seen is None else files.signature_of(seen)  # a rename moves the ctime
    core.owners.note(task.user, task.task_id, new_path)
    data = contract.dump(fields)
    if batch is not None and state_changed:
        staged = batch.durable.stage(new_path, data, seen, task.spare)
        task.spare = None  # it holds the staged content now
        batch.pending.append(_Pending(task, fields, staged, now))
        return True
    try:
        task.written, task.spare = files.rewrite_existing(
            new_path, data, state_changed, seen, True, task.spare
        )
    except FileNotFoundError:
        core.cancel(task)  # deleted since it was renamed: the UI cancelled it
        return True
    except files.StagedChanged as exc:
        _replaced(task, exc)
        return False  # not in the file: written again at the next glance or tick
    _written(core, task, fields, now)
    return True


MISNAMED_MAX = 10_000
"""Ended files whose names wait for a free name, at most: the oldest is given up past this."""


def _name_taken(core: Core, task: Tracked, wanted: Path, terminal: bool) -> None:
    """Something is at the name the file should take (a folder, a link, another file): the file
    keeps its name, said once while the task runs and once for its final name; an ended one is
    renamed by a later rescan once the name is free (`rename_misnamed`), a running one by its
    next write."""
    said = 2 if terminal else 1
    if task.name_blocked < said:
        task.name_blocked = said
        log.warning(
            "%s cannot be renamed %s: something else is at that name; it keeps its name "
            "until the name is free",
            task.path.name,
            wanted.name,
            extra=task_ids(task),
        )
    if terminal:
        misnamed = core.misnamed
        misnamed.pop(task.path, None)
        misnamed[task.path] = (wanted, task)
        while len(misnamed) > MISNAMED_MAX:
            del misnamed[next(iter(misnamed))]


def rename_misnamed(core: Core) -> None:
    """Give ended files the names their content says, where the name is free now: only while
    each is still the file the bridge last wrote there."""
    for path, (wanted, task) in list(core.misnamed.items()):
        try:
            if files.signature(path) != task.written:
                raise FileNotFoundError(errno.ENOENT, "changed or gone since it was written")
            files.rename_noreplace(path, wanted)
        except FileExistsError:
            continue  # still in the way
        except OSError as exc:  # gone, changed or moved: nothing to rename
            log.info("%s was not renamed %s: %s", path.name, wanted.name, exc.strerror or exc)
        else:
            core.owners.note(task.user, task.task_id, wanted)
            log.info("%s renamed %s: its name is free now", path.name, wanted.name)
        del core.misnamed[path]


def _replaced(task: Tracked, exc: files.StagedChanged) -> None:
    log.warning("%s: %s; it is written again", task.path.name, exc.strerror, extra=task_ids(task))


def _written(core: Core, task: Tracked, fields: dict[str, Any], now: float) -> None:
    task.fields, task.last_write = fields, now
    if fields[states.STATE] in states.TERMINAL:
        ended(core, task, now)
    else:
        core.table.wrote(task, now)


def finish(core: Core, batch: Batch) -> None:
    """Land a pass's staged changes of state: one flush makes them durable (`files.Durable`),
    then each is swapped in under its task's guard (a failed flush is that file's failure, as
    a failed fsync would be), then their folders are flushed."""
    pending, batch.pending = batch.pending, []
    errors = batch.durable.flush([p.staged for p in pending])  # closes what it holds open
    for item, error in zip(pending, errors, strict=True):
        task = item.task
        core.guard.run(
            f"job {task.job_id}",
            "mirroring",
            item.now,
            lambda i=item, e=error: _land(core, i, e, batch.folders),  # type: ignore[misc]
            end=lambda message, t=task, n=item.now: fail(core, t, message, n),  # type: ignore[misc]
            log_ids=partial(task_ids, task),
            shown=lambda t=task: str(t.path),  # type: ignore[misc]
        )
    files.fsync_dirs(batch.folders)
    batch.folders.clear()


def _land(core: Core, item: _Pending, error: OSError | None, folders: set[Path]) -> None:
    task = item.task
    landed = False
    try:
        landed = _landed(core, item, error, folders)
    finally:
        if not landed:  # not in the file: the tick must look at it again, not skip it
            core.glanced.pop(task.job_id, None)


def _landed(core: Core, item: _Pending, error: OSError | None, folders: set[Path]) -> bool:
    task = item.task
    if core.table.by_job.get(task.job_id) is not task or task.path != item.staged.path:
        files.discard(item.staged)  # cancelled, or moved on meanwhile: nothing to land
        return False
    if error is not None:
        raise error
    try:
        task.written, task.spare = files.land(item.staged, sync_dir=False)
    except FileNotFoundError:
        core.cancel(task)  # deleted since it was renamed: the UI cancelled it
        return False
    except files.StagedChanged as exc:
        _replaced(task, exc)
        return False
    folders.add(item.staged.path.parent)
    _written(core, task, item.fields, item.now)
    return True


def ended(core: Core, task: Tracked, now: float) -> None:
    """A task's file says it ended: stop mirroring it, and send its notify mail if there is one."""
    core.untrack(task)
    core.ended_jobs.append(task.job_id)  # Redis forgets it with the others ended this tick
    fields = task.fields
    core.metrics.count(metrics.ENDED, fields[states.STATE])
    core.metrics.task_ended(
        Ended(
            time.time(),
            task.user,
            task.task_id,
            task.type.name,
            str(fields[states.STATE]),
            cut(fields.get(states.ERROR)),
            cut(fields.get("description")),
            cut(fields.get(states.WORKER)),
        )
    )
    log.info("%s ended %s", task.path.name, task.fields[states.STATE], extra=task_ids(task))
    # A notify job, if its mail is there: published by the next tick, once Redis was asked.
    core.notifier.job_for(task.path, task.fields)


def fail(core: Core, task: Tracked, error: str, now: float) -> None:
    """End a running task FAILURE with `error` (what the guard calls when its work broke)."""
    write(
        core,
        task,
        {
            states.STATE: states.FAILURE,
            states.FINISHED_AT: utc_now(),
            states.ERROR: contract.bounded(error),
            **dict.fromkeys(states.STEP_FIELDS),
        },
        now,
    )
    if task.job_id in core.table.by_job:  # the write could not happen: still stop mirroring
        ended(core, task, now)


def forget_ended(core: Core, now: float) -> None:
    """Redis forgets the jobs whose files ended since the last call, in one round trip (a
    round trip each cost more than the rest of an end)."""
    if core.ended_jobs:
        ids, core.ended_jobs = core.ended_jobs, []
        core.redis.call(now, lambda: core.publisher.forget(ids))
