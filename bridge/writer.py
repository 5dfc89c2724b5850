"""Writing a tracked task's new fields into its file: the name first, then the content.

Used by every pass that changes a running task (mirror, recovery, the guard ending a task); the
bytes themselves are written by `files`, the only code that writes task files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bridge import contract, files, metrics
from bridge.core import Core, task_ids
from bridge.history import Ended, cut
from bridge.mirror import utc_now
from bridge.model import Tracked
from taskd import states

log = logging.getLogger(__name__)

RATE_SLACK = 0.95


def write(
    core: Core,
    task: Tracked,
    updates: Mapping[str, Any],
    now: float,
    folders: set[Path] | None = None,
) -> bool:
    """Merge `updates` into the task's file, at most once a tick unless the state ends; False
    when the file was written less than a tick ago and must wait (the updates are not in it).

    With `folders`, a change of state leaves its folder's fsync to the caller, who flushes the
    folders gathered (`files.fsync_dirs`) before acting on any of the writes: one flush a folder
    for a tick's starts and ends instead of one a file.

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
        new_path = task.path  # another file took the name: keep ours, the content still says
    core.table.move(task, new_path)
    seen = files.regular_or_none(new_path)
    task.written = None if seen is None else files.signature_of(seen)  # a rename moves the ctime
    core.owners.note(task.user, task.task_id, new_path)
    try:
        sync_dir = folders is None or not state_changed
        task.written, task.spare = files.rewrite_existing(
            new_path, contract.dump(fields), state_changed, seen, sync_dir, task.spare
        )
        if not sync_dir and folders is not None:
            folders.add(new_path.parent)
    except FileNotFoundError:
        core.cancel(task)  # deleted since it was renamed: the UI cancelled it
        return True
    task.fields, task.last_write = fields, now
    if terminal:
        ended(core, task, now)
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
