"""`taskd retry`: run a FAILURE task again under its task-id, with a new job id.

A job whose work was done, but whose outcome Redis could not take, is not run again: its kept
outcome (taskd/outcomes.py) is written into the file as the SUCCESS it was.

The file goes back to QUEUED and keeps what went wrong before in `previous-errors`. The bridge
then finds a file it owns whose job Redis does not know, and publishes it, as after a restart.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bridge import contract, files
from bridge.mirror import updates_for, utc_now
from taskd import outcomes, states
from taskd.tasktypes import TaskType

# Fields of the failed run that must not leak into the new one.
CLEARED = (
    states.STARTED_AT,
    states.FINISHED_AT,
    states.WORKER,
    states.ERROR,
    states.RETRIES,
    states.RETRY_AT,
    states.NOTIFIED_AT,
    states.NOTIFY_RETRY_AT,
    states.NOTIFY_ERROR,
    "tmp-space",
    "output",
    *states.STEP_FIELDS,
)


class RetryError(ValueError):
    """The file cannot be retried; the message says why."""


def requeued(fields: Mapping[str, Any], now_iso: str) -> dict[str, Any]:
    if not contract.owned_by_bridge(fields):
        raise RetryError("not a task file taskd has taken (no task-id and state)")
    if fields.get(states.STATE) != states.FAILURE:
        raise RetryError(f"state is {fields.get(states.STATE)}; only a FAILURE task is retried")
    previous = list(fields.get(states.PREVIOUS_ERRORS) or [])
    previous.append(
        {
            states.JOB_ID: fields.get(states.JOB_ID),
            states.ERROR: fields.get(states.ERROR),
            states.FINISHED_AT: fields.get(states.FINISHED_AT),
        }
    )
    updates: dict[str, Any] = dict.fromkeys(CLEARED)
    updates.update(
        {
            states.STATE: states.QUEUED,
            states.PROGRESS_FIELD: 0,
            states.JOB_ID: str(uuid.uuid4()),
            states.QUEUED_AT: now_iso,
            states.PREVIOUS_ERRORS: previous,
        }
    )
    return contract.merge(fields, updates)


def finished_outcome(fields: Mapping[str, Any], data_root: Path) -> dict[str, Any] | None:
    """The file updates of a SUCCESS its job really ended with, when its FAILURE was only that
    Redis could not be told (taskd/outcomes.py): restored, never run a second time."""
    if fields.get(states.STATE) != states.FAILURE:
        return None
    kept = outcomes.find(data_root, str(fields.get(states.JOB_ID, "")))
    if kept is None or kept.get("state") != states.SUCCESS:
        return None
    meta = {"status": states.SUCCESS, "result": kept.get("result")}
    current = {k: v for k, v in fields.items() if k not in (states.FINISHED_AT, states.ERROR)}
    return {**updates_for(meta, current, utc_now()), states.ERROR: None}


def retry_file(path: Path, types: Mapping[str, TaskType], task_queue: Path) -> tuple[Path, bool]:
    """Requeue one FAILURE file of `task_queue/<user-id>/`; returns its new path, and whether
    its job's real SUCCESS was restored instead (see `finished_outcome`)."""
    folder = path.absolute().parent
    if folder.parent != task_queue.absolute() or not contract.USER_RE.fullmatch(folder.name):
        raise RetryError(f"not a task file of {task_queue}/<user-id>/ (see --data-root)")
    name = contract.parse_name(("u", path.name))
    task_type = types.get(name.type) if name else None
    if task_type is None:
        raise RetryError("not a task file of a known type")
    try:
        fields = contract.parse_content(contract.decode_utf8(files.read_regular(path, 1 << 24)))
    except (OSError, ValueError) as exc:
        raise RetryError(f"cannot read it: {exc}") from None
    done = finished_outcome(fields, task_queue.parent)
    new_fields = contract.merge(fields, done) if done else requeued(fields, utc_now())
    task_id = str(new_fields[states.TASK_ID])
    target = path.with_name(
        contract.render_name(task_id, task_type.name, new_fields, task_type.runtime_info)
    )
    # The content first, as when a file is taken: it must say what it is before the name moves.
    files.rewrite_then_rename(path, target, contract.dump(new_fields))
    return target, done is not None
