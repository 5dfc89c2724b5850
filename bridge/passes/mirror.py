"""The mirror pass: one Redis round trip for the state of every active job, then each file
whose fields changed is written (at most once a tick while it runs, at once when it ends)."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from functools import partial

from bridge import dispatch, schedule, writer
from bridge.core import Core, task_ids
from bridge.mirror import updates_for, utc_now
from bridge.model import Tracked
from bridge.schedule import Known
from taskd import jobs, outcomes, states

log = logging.getLogger(__name__)


def mirror_once(core: Core, now: float) -> dict[str, Known] | None:
    """Mirror every tracked job; returns what Redis said (the notify pass reads it too)."""
    tasks = list(core.table.by_job.values())
    ids = [t.job_id for t in tasks] + list(core.notifier.jobs)
    answer = core.redis.call(now, lambda: core.publisher.known(ids))
    if answer is None:
        return None
    known, run_id = answer
    _check_run_id(core, run_id)
    now_iso = utc_now()
    for task in tasks:
        info = known.get(task.job_id, Known(None, None))
        key = f"job {task.job_id}"  # not the path: a write that fails after the rename moves it
        if not core.guard.ready(key, now):
            continue  # held back by the machine (a full disk): tried again after its pause
        core.guard.run(
            key,
            "mirroring",
            now,
            lambda t=task, i=info: _mirror_one(core, t, i, now, now_iso),  # type: ignore[misc]
            end=lambda error, t=task: writer.fail(core, t, error, now),  # type: ignore[misc]
            log_ids=partial(task_ids, task),
            shown=lambda t=task: str(t.path),  # type: ignore[misc]
        )
    handed_out_once(core, now, tasks, known)
    core.metrics.mirrored(now, time.monotonic())
    return known


def _mirror_one(core: Core, task: Tracked, info: Known, now: float, now_iso: str) -> None:
    info = with_kept_outcome(core, task, info)
    dispatch.publish_when_due(core, task, info, now)
    if task.job_id in core.table.by_job:  # a recovery may have ended it
        writer.write(core, task, updates_for(info.meta, task.fields, now_iso), now)


def with_kept_outcome(core: Core, task: Tracked, info: Known) -> Known:
    """What Redis says, or the outcome the worker kept on disk where Redis could not be told:
    a FAILURE stored because the outcome could not be (Redis away too long), a job Redis lost,
    or one whose worker is gone. Looked up only in those cases (taskd/outcomes.py)."""
    status = jobs.status(info.meta)
    lost = info.meta is None and info.record is None
    orphan = status in schedule.RUNNING and not info.leased
    if status != states.FAILURE and not lost and not orphan:
        return info
    kept = outcomes.find(core.settings.data_root, task.job_id)
    if kept is None or (status == states.FAILURE and kept["state"] != states.SUCCESS):
        return info
    if kept["state"] == states.SUCCESS:
        meta = {"status": states.SUCCESS, "result": kept.get("result")}
    else:
        error = [str(kept.get("error", ""))]
        meta = {
            "status": states.FAILURE,
            "result": {"exc_type": "TaskFailed", "exc_message": error},
        }
    return replace(info, meta=meta)


def handed_out_once(core: Core, now: float, tasks: list[Tracked], known: dict[str, Known]) -> None:
    """Jobs a worker took but never started for a whole grace period: it died holding them."""
    overdue = []
    for task in tasks:
        info = known.get(task.job_id)
        if info is None or not schedule.waiting_unstarted(task.fields, info):
            core.unstarted.pop(task.job_id, None)
        elif now - core.unstarted.setdefault(task.job_id, now) >= core.settings.recovery_grace:
            overdue.append(task)
    if not overdue:
        return
    held = core.redis.call(now, lambda: core.publisher.handed_out(t.job_id for t in overdue))
    for task in overdue:
        core.unstarted[task.job_id] = now  # look again after another grace period
        if held is not None and task.job_id in held:
            core.guard.run(
                str(task.path),
                "recovering",
                now,
                lambda t=task: dispatch.recover(core, t, _retries(t), now),  # type: ignore[misc]
                end=lambda error, t=task: writer.fail(core, t, error, now),  # type: ignore[misc]
                log_ids=partial(task_ids, task),
            )


def _retries(task: Tracked) -> int:
    value = task.fields.get("retries")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _check_run_id(core: Core, run_id: str) -> None:
    """Logged for ops; the reconcile itself happens for every job on every tick."""
    if run_id and core.run_id and run_id != core.run_id:
        log.warning("Redis restarted (run_id changed): republishing what it lost")
    if run_id:
        core.run_id = run_id
