"""When a job is published: now, at its `run-at`/`delay`, or at its next retry's `retry-at`.

Pure: fields and what Redis knows in, a decision out. The file is the source of truth, so these
times survive restarts of the bridge and of Redis; Celery's ETA/countdown is never used (on Redis
a delay longer than the visibility timeout would be redelivered over and over).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from taskd import jobs, states

KNOWN = "known"  # Redis has it (queued, running, waiting for a retry, or done)
WAIT = "wait"  # not due yet
PUBLISH = "publish"  # send it
INSPECT = "inspect"  # a crash may have come between recording and sending: look in the queue
RECOVER = "recover"  # its worker died (no lease for longer than the grace): run it again

RUNNING = frozenset({states.STARTED, states.PROGRESS})
MAX_DELAY_S = 10 * 366 * 24 * 3600  # ten years: past that a delay is a mistake, not a plan


@dataclass(frozen=True)
class Known:
    record: str | None  # publishing / published / None
    meta: dict[str, Any] | None  # the result backend's meta, None while PENDING
    attempt: int = 0  # the retry the record was published for
    leased: bool = False  # a worker holds the job's lease now
    raw: bytes | None = None  # the meta as stored (what a glance compares)


@dataclass(frozen=True)
class Decision:
    action: str
    attempt: int = 0
    due: datetime | None = None


def parse_time(value: object) -> datetime | None:
    """An ISO-8601 time; a time without a zone is UTC. None if absent or not a time."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def time_error(fields: Mapping[str, Any]) -> str | None:
    """What is wrong with `run-at` / `delay`, for the intake's verdict."""
    run_at = fields.get(states.RUN_AT)
    if run_at not in (None, "") and parse_time(run_at) is None:
        return (
            f"field 'run-at': {run_at!r} is not an ISO-8601 time; write e.g. 2026-11-25T18:00:00Z"
        )
    delay = fields.get(states.DELAY)
    if delay is not None and (
        isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0
    ):
        return f"field 'delay': {str(delay)[:40]!r} is not a number of seconds; write e.g. 600"
    if delay is not None and delay > MAX_DELAY_S:
        return (
            f"field 'delay': {str(delay)[:40]} seconds is more than ten years "
            f"({MAX_DELAY_S}); write a shorter delay or a 'run-at' time"
        )
    return None


def not_before(fields: Mapping[str, Any]) -> datetime | None:
    """The first moment a task may start: its `run-at`, or `delay` seconds after it was queued."""
    run_at = parse_time(fields.get(states.RUN_AT))
    if run_at is not None:
        return run_at
    delay = fields.get(states.DELAY)
    queued = parse_time(fields.get(states.QUEUED_AT))
    if isinstance(delay, int | float) and not isinstance(delay, bool) and delay > 0 and queued:
        try:
            return queued + timedelta(seconds=float(min(delay, MAX_DELAY_S)))
        except OverflowError:  # a queued-at near the end of time: never due
            return datetime.max.replace(tzinfo=UTC)
    return None


def orphaned(fields: Mapping[str, Any], known: Known) -> bool:
    """Nobody holds the lease of a job that has started (by Redis, or by the file when Redis
    lost it): its worker may be dead. Only a grace period tells a dead worker from a slow one."""
    if known.leased:
        return False
    status = jobs.status(known.meta)
    # REVOKED with its file still there was no cancel (that deletes the file): a pool process
    # killed under the job (Celery reports it as terminated) or a revoke from a tool. Run it again.
    if status in RUNNING or status == states.CELERY_REVOKED:
        return True
    lost = known.meta is None and known.record is None
    return lost and fields.get(states.STATE) in RUNNING | {states.RETRY}


def waiting_unstarted(fields: Mapping[str, Any], known: Known) -> bool:
    """Published, not started, nobody holds it, and its file still says QUEUED: in its queue,
    or handed to a worker that died before starting it (kombu keeps that one unacked until the
    visibility timeout)."""
    return (
        fields.get(states.STATE) == states.QUEUED
        and known.meta is None
        and handed_out_unstarted(known)
    )


def handed_out_unstarted(known: Known) -> bool:
    """Its latest attempt was published and has not begun, and nobody holds its lease: a first
    try or a recovery (no state yet), or a retry (its state still asks for that retry). Whether
    it waits in its queue or was handed to a worker that died before starting it is told by
    kombu's unacked set (`Publisher.handed_out`), whatever the file says: a notify job, a
    recovered one or a retry waits that way as well as a first try."""
    if known.record != states.JOB_PUBLISHED or known.leased:
        return False
    if known.meta is None:
        return True
    if jobs.status(known.meta) != states.RETRY:
        return False
    return known.attempt >= jobs.count(jobs.result(known.meta).get(states.META_RETRIES))


def decide(
    fields: Mapping[str, Any],
    known: Known,
    now: datetime,
    orphaned_for: float = 0.0,
    grace: float = float("inf"),
) -> Decision:
    if orphaned(fields, known):
        if orphaned_for < grace:
            return Decision(WAIT)
        # The try that was running: the file's count, or the record's where the file keeps
        # none (a notify job's, tracked in memory).
        return Decision(RECOVER, max(jobs.count(fields.get(states.RETRIES)), known.attempt))
    if known.leased and known.meta is None and known.record is None:
        # Redis lost its record, but a worker runs it and has taken its lease back.
        return Decision(KNOWN)
    if jobs.status(known.meta) == states.RETRY:
        return _retry(known, now)
    if known.meta is not None or known.record == states.JOB_PUBLISHED:
        return Decision(KNOWN)
    due = not_before(fields)
    if due is not None and now < due:
        return Decision(WAIT, due=due)
    if known.record == states.JOB_PUBLISHING:
        return Decision(INSPECT)
    return Decision(PUBLISH, jobs.count(fields.get(states.RETRIES)))


def holds_slot(fields: Mapping[str, Any], known: Known) -> bool:
    """Whether a job counts against its type's cap (`x-taskd.max-running`): from the moment it
    is published until its attempt ends. A job waiting for a retry holds none until that retry
    is published; a running job whose worker died keeps its own, as it is run again."""
    status = jobs.status(known.meta)
    if status in (states.SUCCESS, states.FAILURE):
        return False
    if status == states.RETRY:
        retries = jobs.count(jobs.result(known.meta).get(states.META_RETRIES))
        return known.attempt >= retries
    if status is not None or known.leased:
        return True
    if known.record is not None:  # publishing or published: in its queue
        return True
    # Redis lost it: one that had started is run again (`orphaned`), one still queued is
    # published again and asks for a slot then.
    return fields.get(states.STATE) in RUNNING | {states.RETRY}


def _retry(known: Known, now: datetime) -> Decision:
    """A job whose last try asked for another: wait for it, send it, or it was sent."""
    result = jobs.result(known.meta)
    retries = jobs.count(result.get(states.META_RETRIES))
    if known.attempt >= retries and known.record == states.JOB_PUBLISHING:
        return Decision(INSPECT, retries)  # its send may have failed: look in the queue
    if known.attempt >= retries:
        return Decision(KNOWN)  # this retry was published already
    due = parse_time(result.get(states.META_RETRY_AT))
    if due is not None and now < due:
        return Decision(WAIT, retries, due)
    return Decision(PUBLISH, retries)
