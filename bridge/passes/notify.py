"""The notify pass: notify mails whose task has ended are sent (as jobs of their own), and what
became of each is written into its task file."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from bridge import contract, dispatch, files, intake
from bridge.core import Core, task_ids
from bridge.logs import ids
from bridge.model import Tracked
from bridge.notify import marker_task_id, read_marker, sent_marker, task_files
from bridge.schedule import Known
from taskd import states

log = logging.getLogger(__name__)


def mails_once(core: Core, now: float) -> None:
    """Notify mails that settled: send those whose task has already ended."""
    _refusals(core, now)
    for path, (since, closed) in list(core.mails.items()):
        if not closed and now - since < core.settings.settle:
            continue
        del core.mails[path]
        job = core.guard.run(
            str(path),
            "looking at the notify mail",
            now,
            lambda p=path: core.notifier.for_mail(p),  # type: ignore[misc]
            log_ids=ids(user_id=path.parent.name),
        )
        if job is not None:  # published by the next tick, once Redis has been asked
            log.info("%r: its task has ended, sending it", path.name, extra=task_ids(job))


def _refusals(core: Core, now: float) -> None:
    """Ended tasks whose mail is a link, FIFO or folder: say so in the task file."""
    refused, core.notifier.refused = core.notifier.refused, []
    for task_path, error in refused:
        core.guard.run(
            str(task_path),
            "refusing the notify mail of",
            now,
            lambda p=task_path, e=error: _write_refusal(core, p, e),  # type: ignore[misc]
            log_ids=ids(user_id=task_path.parent.name),
        )


def _write_refusal(core: Core, task_path: Path, error: str) -> None:
    limit = intake.owned_limit(core.settings.max_task_bytes)
    fields = contract.parse_content(contract.decode_utf8(files.read_regular(task_path, limit)))
    if states.NOTIFY_ERROR in fields or states.NOTIFIED_AT in fields:
        return
    files.atomic_write(
        task_path, contract.dump(contract.merge(fields, {states.NOTIFY_ERROR: error})), True
    )
    log.warning("%r: %s", task_path.name, error, extra=ids(user_id=task_path.parent.name))


def notify_once(core: Core, now: float, known: Mapping[str, Known]) -> None:
    """Write what became of each notify mail into its task file; publish retries when due."""
    for job_id, job in list(core.notifier.jobs.items()):
        info = known.get(job_id)
        if info is None:
            continue  # created (and published) during this tick: Redis was asked before
        if not core.guard.ready(str(job.path), now):
            continue  # held back by the machine (a full disk): tried again after its pause
        core.guard.run(
            str(job.path),
            "recording the notify outcome of",
            now,
            lambda j=job, i=info: _one(core, j, i, now),  # type: ignore[misc]
            end=lambda error, j=job: give_up(core, j, error),  # type: ignore[misc]
            log_ids=partial(task_ids, job),
        )


def _one(core: Core, job: Tracked, info: Known, now: float) -> None:
    updates = core.notifier.outcome(job, info.meta)
    if updates and not _note_outcome(core, job, updates):
        core.notifier.jobs.pop(job.job_id, None)
        return
    status = (info.meta or {}).get("status")
    if status in (states.SUCCESS, states.FAILURE, states.CELERY_REVOKED):
        core.notifier.jobs.pop(job.job_id, None)
        core.redis.call(now, functools.partial(core.publisher.forget, [job.job_id]))
    else:
        dispatch.publish_when_due(core, job, info, now)


def give_up(core: Core, job: Tracked, error: str) -> None:
    """Stop trying to send a task's mail: its file says why in notify-error."""
    core.notifier.jobs.pop(job.job_id, None)
    _note_outcome(core, job, {states.NOTIFY_ERROR: error, states.NOTIFY_RETRY_AT: None})


def _note_outcome(core: Core, job: Tracked, updates: Mapping[str, Any]) -> bool:
    """Merge a notify outcome into the ended task's file; False if the file is gone."""
    limit = intake.owned_limit(core.settings.max_task_bytes)
    try:
        fields = contract.parse_content(contract.decode_utf8(files.read_regular(job.path, limit)))
    except FileNotFoundError:
        return False
    merged = contract.merge(fields, updates)
    if merged != fields:
        files.atomic_write(job.path, contract.dump(merged), durable=True)
    if states.NOTIFIED_AT in merged:
        sent_marker(job.path, job.task_id).unlink(missing_ok=True)
    return True


def settle_markers(core: Core, markers: list[Path], now: float) -> None:
    for marker in markers:
        core.guard.run(
            str(marker),
            "settling the sent-marker",
            now,
            lambda m=marker: _settle_marker(core, m),  # type: ignore[misc]
            end=lambda _error, m=marker: m.unlink(missing_ok=True),  # type: ignore[misc]
            log_ids=ids(user_id=marker.parent.name),
        )


def _settle_marker(core: Core, marker: Path) -> None:
    """A mail was sent but its outcome never reached the task file (the bridge died, or
    Redis forgot the job): record it from the worker's sent-marker, then drop the marker."""
    outcome = read_marker(marker)
    task_id = marker_task_id(marker)
    for path, fields in task_files(marker.parent, task_id):
        if outcome and fields.get(states.JOB_ID) == outcome.get("job-id"):
            if states.NOTIFIED_AT not in fields:
                updates = {k: outcome.get(k) for k in (states.NOTIFIED_AT, states.NOTIFY_ERROR)}
                merged = contract.merge(fields, {**updates, states.NOTIFY_RETRY_AT: None})
                files.atomic_write(path, contract.dump(merged), durable=True)
                log.info(
                    "%r: notify outcome recorded from its sent-marker",
                    path.name,
                    extra=ids(task_id, path.parent.name, str(fields[states.JOB_ID])),
                )
            break
    marker.unlink(missing_ok=True)
