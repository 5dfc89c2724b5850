"""Publishing a tracked job when it is due: the first try, each retry, and a recovery after its
worker died. Intake, mirror and notify all publish through here; `schedule.decide` decides.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import partial

from bridge import metrics, schedule, writer
from bridge.core import Core, task_ids
from bridge.mirror import STOPPED_ERROR
from bridge.model import Tracked
from bridge.schedule import Known
from taskd import states

log = logging.getLogger(__name__)

MAX_RECOVERIES = 3
JUST_PUBLISHED = Known(states.JOB_PUBLISHED, None)
"""A job's record and state right after `publish_many` sent it (attempt 0, no lease)."""


def publish_when_due(
    core: Core, task: Tracked, info: Known, now: float, batch: list[Tracked] | None = None
) -> None:
    """Publish a job exactly once (and each retry once), when it is due; a first try is
    added to `batch` instead, when given, for the caller to publish with others."""
    decision = schedule.decide(
        task.fields,
        info,
        datetime.now(UTC),
        _orphaned_for(core, task, info, now),
        core.settings.recovery_grace,
    )
    if decision.action == schedule.RECOVER:
        recover(core, task, decision.attempt, now)
        return
    if decision.action == schedule.KNOWN:
        task.published = True
        return
    if decision.action == schedule.WAIT:
        return
    if decision.action == schedule.INSPECT and core.redis.call(
        now, lambda: core.publisher.in_flight(task)
    ):
        core.redis.call(now, lambda: core.publisher.mark_published(task.job_id))
        task.published = True
        return
    if task.published and decision.attempt == 0:
        log.warning(
            "job %s of %s is unknown to Redis: publishing it again",
            task.job_id,
            task.path.name,
            extra=task_ids(task),
        )
        core.metrics.count(metrics.REPUBLISHED, metrics.REDIS_LOST)
    if not core.caps.admit(task, schedule.holds_slot(task.fields, info)):
        return  # its type is at its cap: it waits, QUEUED, for a slot (bridge/caps.py)
    if batch is not None and decision.attempt == 0:
        batch.append(task)  # a first try, or one Redis lost: sent with the others of the pass
        return
    core.redis.call(now, lambda: core.publisher.publish(task, decision.attempt))
    after_publish(core, task)


def publish_batch(core: Core, due: list[Tracked], now: float) -> None:
    """Send the jobs a pass gathered (first tries, and jobs Redis lost) in one pipeline; should
    that fail, those not sent one by one, so that a job that cannot be sent is found and ended
    alone."""
    due = [t for t in due if core.table.by_job.get(t.job_id) is t]  # not cancelled meanwhile
    if not due:
        return
    try:
        core.redis.call(now, lambda: core.publisher.publish_many(due))
    except Exception:  # noqa: BLE001 - one job could not be sent: find it, alone
        left = [t for t in due if not t.published]  # chunks sent before the failure stand
        log.warning("publishing %d jobs together failed: publishing them one by one", len(left))
        for task in left:
            core.guard.run(
                str(task.path),
                "publishing",
                now,
                lambda t=task: core.redis.call(now, lambda: core.publisher.publish(t)),  # type: ignore[misc]
                end=lambda error, t=task: writer.fail(core, t, error, now),  # type: ignore[misc]
                log_ids=partial(task_ids, task),
            )
    for task in due:
        after_publish(core, task)
        if task.published and task.fields.get(states.STATE) == states.QUEUED:
            # What Redis would answer for it until a worker takes it: the mirror's next ticks
            # read only its state (passes/mirror.py), instead of first looking at it in full.
            core.quiet[task.job_id] = JUST_PUBLISHED


def after_publish(core: Core, task: Tracked) -> None:
    if task.published and task.type is core.notifier.kind:
        # From now on a notify job counts as started: if Redis loses it, the bridge waits
        # the recovery grace for a worker still sending it to take its lease back.
        task.fields[states.STATE] = states.STARTED


def _orphaned_for(core: Core, task: Tracked, info: Known, now: float) -> float:
    """How long the job has looked orphaned (no lease though started), 0 if it does not."""
    if not schedule.orphaned(task.fields, info):
        core.orphans.pop(task.job_id, None)
        return 0.0
    return now - core.orphans.setdefault(task.job_id, now)


def recover(
    core: Core, task: Tracked, attempt: int, now: float, stale: list[bytes] | None = None
) -> None:
    """Run again a job whose worker died; give up after MAX_RECOVERIES (a job that kills
    its worker every time must not loop for ever). `stale`: the delivery tags of the copies a
    worker took and died holding before it started them (none for a job that had started)."""
    core.orphans.pop(task.job_id, None)
    grace = core.settings.recovery_grace
    count = core.recoveries[task.job_id] = core.recoveries.get(task.job_id, 0) + 1
    if count > MAX_RECOVERIES:
        # The last dead worker's copy goes too: back after the visibility timeout, it would
        # run the job (or send the mail) after its file said it gave up.
        core.redis.call(now, lambda: core.publisher.drop_copies(task.job_id, grace, stale))
        error = STOPPED_ERROR.format(n=MAX_RECOVERIES + 1)
        if task.type is core.notifier.kind:
            core.notify_gave_up(task, error)  # the task ended well: only its mail failed
        else:
            writer.fail(core, task, error, now)
        return
    log.warning(
        "job %s of %s has had no live worker for the recovery grace: running it again",
        task.job_id,
        task.path.name,
        extra=task_ids(task),
    )
    core.metrics.count(metrics.REPUBLISHED, metrics.WORKER_LOST)
    core.redis.call(now, lambda: core.publisher.recover(task, attempt, grace, stale))
