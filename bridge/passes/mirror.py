"""The mirror pass: one Redis round trip for the state of every active job, then each file
whose fields changed is written (at most once a tick while it runs, at once when it ends)."""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

from bridge import dispatch, schedule, writer
from bridge.core import Core, task_ids
from bridge.mirror import updates_for, utc_now
from bridge.model import Tracked, Written
from bridge.schedule import Known
from taskd import jobs, outcomes, states

log = logging.getLogger(__name__)

SLICE_S = 0.005
"""A tick writing many files lets intake take new ones at least this often."""
QUIET_GLANCED = 2000
"""A glance reads the states of this many queued jobs at most, the first taken: the ones that
start next. A start further back in a long queue is written by the tick."""
GLANCES_PER_TICK = 4
"""Between two ticks, the running jobs' states are read this many times (`glance_once`)."""


class Pace:
    """A pass over many jobs: intake runs between every `SLICE_S` of it (a file dropped
    meanwhile is taken then, not after the whole pass), and its `now` moves on with the clock,
    so a write is stamped when it is made and the next one is never let in early."""

    def __init__(self, core: Core, now: float) -> None:
        self.core, self.base = core, now
        self.started = self.sliced = time.monotonic()

    def now(self) -> float:
        return self.base + (time.monotonic() - self.started)

    def breathe(self) -> None:
        if self.core.between is not None and time.monotonic() - self.sliced >= SLICE_S:
            self.core.between()
            self.sliced = time.monotonic()


def mirror_once(core: Core, now: float) -> dict[str, Known] | None:
    """Mirror every tracked job; returns what Redis said (the notify pass reads it too).

    Queued jobs that were published and not started when last looked at are quiet: only their
    state is read each tick, and nothing else is done for them while it stays empty. Every job
    is looked at in full (its record and lease too) on the rescan interval, after Redis was
    away, and after it restarted.
    """
    pairs = list(core.table.by_job.items())  # by job id: `Tracked.job_id` reads the fields
    tasks = [task for _, task in pairs]
    if now >= core.full_look_at:
        core.quiet.clear()
        core.full_look_at = now + core.settings.rescan_interval
        _forget_gone(core)
    was = core.quiet
    quiet = {job_id: was[job_id] for job_id, _ in pairs if job_id in was}
    hot = [job_id for job_id, _ in pairs if job_id not in quiet] + list(core.notifier.jobs)
    answer = core.redis.call(now, lambda: core.publisher.known(hot, quiet))
    if answer is None:
        core.full_look_at = now  # after an outage, everything afresh
        return None
    known, run_id = answer
    if _check_run_id(core, run_id):
        core.full_look_at = now  # what Redis lost is found in the next tick's full look
    core.caps.refresh()
    core.caps.recount(
        ((task, known.get(job_id) or Known(None, None)) for job_id, task in pairs),
        core.intake.pending,
    )
    now_iso = utc_now()
    still: dict[str, Known] = {}
    due: list[Tracked] = []
    batch = writer.Batch()
    try:
        _mirror_all(core, (now, now_iso), pairs, known, (quiet, still), (due, batch))
    finally:
        writer.finish(core, batch)  # the starts and ends: durable before anything acts on them
    core.quiet = {j: k for j, k in still.items() if j in core.table.by_job}
    dispatch.publish_batch(core, due, now)
    tasks = [t for t in tasks if core.table.by_job.get(t.job_id) is t]  # none cancelled meanwhile
    handed_out_once(core, now, tasks + list(core.notifier.jobs.values()), known)
    writer.forget_ended(core, now)
    core.metrics.mirrored(now, time.monotonic())
    return known


def _forget_gone(core: Core) -> None:
    """What the bridge counted for jobs it no longer mirrors (ended, cancelled, or a notify
    job done) goes: those counts never outgrow the jobs in flight."""
    live = core.table.by_job.keys() | core.notifier.jobs.keys()
    for counts in (core.orphans, core.recoveries, core.unstarted):
        for job_id in counts.keys() - live:
            del counts[job_id]


def _mirror_all(
    core: Core,
    when: tuple[float, str],
    pairs: list[tuple[str, Tracked]],
    known: dict[str, Known],
    quiet_still: tuple[dict[str, Known], dict[str, Known]],
    due_batch: tuple[list[Tracked], writer.Batch],
) -> None:
    """`mirror_once`'s walk over the jobs: each one's publish and write, under its guard."""
    now, now_iso = when
    quiet, still = quiet_still
    due, batch = due_batch
    pace = Pace(core, now)
    for job_id, task in pairs:
        info = known.get(job_id) or Known(None, None)
        if _as_it_was(core, quiet, still, job_id, info):
            continue
        pace.breathe()
        at = pace.now()
        if core.table.by_job.get(job_id) is not task:
            continue  # cancelled meanwhile (its file was deleted): nothing to publish or write
        key = f"job {job_id}"  # not the path: a write that fails after the rename moves it
        if not core.guard.ready(key, at):
            continue  # held back by the machine (a full disk): tried again after its pause
        core.guard.run(
            key,
            "mirroring",
            at,
            lambda t=task, i=info, a=at: _mirror_one(core, t, i, a, now_iso, due, batch),  # type: ignore[misc]
            end=lambda error, t=task, a=at: writer.fail(core, t, error, a),  # type: ignore[misc]
            log_ids=partial(task_ids, task),
            shown=lambda t=task: str(t.path),  # type: ignore[misc]
        )
        if _quiet(core, task, info, key, at):
            still[job_id] = info


def _as_it_was(
    core: Core, quiet: dict[str, Known], still: dict[str, Known], job_id: str, info: Known
) -> bool:
    """Nothing to publish, recover or write for this job this tick: quiet and still as it was
    (kept quiet in `still`), or mirrored by a glance since."""
    if quiet.get(job_id) is info:
        still[job_id] = info
        return True
    return _glanced(core, job_id, info)


def _glanced(core: Core, job_id: str, info: Known) -> bool:
    """Running, its worker's lease held, and its state the very one a glance since the last
    tick put in its file: nothing for the tick to publish, recover or write."""
    return (
        info.raw is not None
        and info.leased
        and core.glanced.get(job_id) == info.raw
        and job_id not in core.orphans
        and jobs.status(info.meta) in schedule.RUNNING
    )


def _quiet(core: Core, task: Tracked, info: Known, key: str, now: float) -> bool:
    """Queued, published, not started, nobody's lease, not held back: only a worker taking it
    (its state appears) or Redis losing it (the next full look) can change that."""
    return (
        task.published
        and schedule.waiting_unstarted(task.fields, info)
        and core.guard.ready(key, now)
    )


def _mirror_one(
    core: Core,
    task: Tracked,
    info: Known,
    now: float,
    now_iso: str,
    due: list[Tracked],
    batch: writer.Batch,
) -> None:
    info = with_kept_outcome(core, task, info)
    dispatch.publish_when_due(core, task, info, now, due)
    if task.job_id in core.table.by_job:  # a recovery may have ended it
        writer.write(core, task, updates_for(info.meta, task.fields, now_iso), now, batch)


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
    """Jobs a worker took but never started for a whole grace period: it died holding them. A
    first try, a retry, a recovered job or a notify mail alike (`schedule.handed_out_unstarted`)."""
    overdue = []
    for task in tasks:
        info = known.get(task.job_id)
        if info is None or not schedule.handed_out_unstarted(info):
            core.unstarted.pop(task.job_id, None)
        elif now - core.unstarted.setdefault(task.job_id, now) >= core.settings.recovery_grace:
            overdue.append((task, info.attempt))
    if not overdue:
        return
    grace = core.settings.recovery_grace
    held = core.redis.call(
        now, lambda: core.publisher.handed_out((t.job_id for t, _ in overdue), held_for=grace)
    )
    earlier: list[bytes] = []
    for task, attempt in overdue:
        core.unstarted[task.job_id] = now  # look again after another grace period
        copies = (held or {}).get(task.job_id, [])
        # A try that ended asking for this one, its worker killed before its ack: dropped.
        earlier += [tag for tag, carried in copies if carried is not None and carried < attempt]
        if any(carried == attempt for _, carried in copies):  # the try due, not an earlier one
            stale = [tag for tag, _ in copies]
            core.guard.run(
                str(task.path),
                "recovering",
                now,
                lambda t=task, a=attempt, s=stale: dispatch.recover(core, t, a, now, s),  # type: ignore[misc]
                end=lambda error, t=task: _recovery_failed(core, t, error, now),  # type: ignore[misc]
                log_ids=partial(task_ids, task),
            )
    if earlier:
        core.redis.call(now, lambda: core.publisher.drop(earlier))


def _recovery_failed(core: Core, task: Tracked, error: str, now: float) -> None:
    """A job that could not be sent again ends with the error; a notify job ends only its
    mail (its task ended well)."""
    if task.type is core.notifier.kind:
        core.notify_gave_up(task, error)
    else:
        writer.fail(core, task, error, now)


def _check_run_id(core: Core, run_id: str) -> bool:
    """Whether Redis restarted since the last tick (logged for ops)."""
    restarted = bool(run_id and core.run_id and run_id != core.run_id)
    if restarted:
        log.warning("Redis restarted (run_id changed): republishing what it lost")
    if run_id:
        core.run_id = run_id
    return restarted


def glance_once(core: Core, now: float) -> int:
    """Between ticks: the states of the running jobs and of the quiet ones (queued, waiting for
    a worker) in one MGET, and each file whose job started or reported since is written now
    instead of at the next tick (still at most once a tick a file), so progress shows within a
    fraction of a tick. A start is written by the glance after it too: the file's writes then
    follow the job's own reports, a second apart, rather than the ticks, which would hold each
    report back until the next. Anything else (an end, a retry, a job Redis lost) waits for
    the tick, which looks at each job in full. Returns how many jobs reported since the last
    glance (none: no glance until the next tick, so stalled or silent jobs cost one glance a
    tick).

    A file written less than a tick ago may not be written again yet (the rate rule), so its
    job's state is not read: `core.glance_due` says when the first such file may be, and a
    glance comes then. With jobs reporting every second, each glance reads the states of the
    jobs whose files are writable now, not of all of them."""
    running, resting_until = _writable(core, now)
    core.glance_due = resting_until
    if not running:
        return 0
    raws = core.redis.call(now, lambda: core.publisher.states_of([j for j, _ in running]))
    if raws is None:
        return 0
    glanced = core.glanced  # what each file says, kept for the tick: resting ones untouched
    now_iso = utc_now()
    reported = 0
    batch = writer.Batch()
    pace = Pace(core, now)
    held = float("inf")  # when the first report held back by the rate rule may be written
    try:
        for (job_id, task), raw in zip(running, raws, strict=True):
            if raw is None:
                glanced.pop(job_id, None)
                continue
            if glanced.get(job_id) == raw:
                continue
            reported += 1
            pace.breathe()
            if _glance_one(core, job_id, task, raw, (pace.now(), now_iso), batch):
                glanced[job_id] = raw
            else:
                glanced.pop(job_id, None)
                rate = writer.RATE_SLACK * core.settings.mirror_interval
                held = min(held, task.last_write + rate)
    finally:
        writer.finish(core, batch)  # the starts
    core.glance_due = min(held, resting_until)
    return reported


def _writable(core: Core, now: float) -> tuple[list[tuple[str, Tracked]], float]:
    """The running jobs, and the quiet ones at the queue's head (taken first: the ones workers
    start next), whose files the rate rule lets a glance write now; and when the first of the
    other running ones may be written. A queued file taken a moment ago brings no glance of
    its own (a burst of new files would bring one every 50 ms, each reading 2,000 states,
    while intake needs the loop): its start is read by the next glance or tick."""
    table = core.table
    by_job, written, current = table.by_job, table.written, table.current
    rate = writer.RATE_SLACK * core.settings.mirror_interval
    writable = []
    running = schedule.RUNNING
    free = []
    # The tasks by their last write, oldest first: only those the rate rule frees are looked
    # at. One not running leaves the heap (it can start only through a write, which puts it
    # back); a running one stays, to be written by this glance or a later one.
    while written and (written[0][0] + rate <= now or not _soonest(written[0], current)):
        entry = heapq.heappop(written)
        if current(entry) and entry[3].fields.get(states.STATE) in running:
            free.append(entry)
            writable.append((entry[2], entry[3]))
    soonest = written[0][0] + rate if written else float("inf")
    for entry in free:
        heapq.heappush(written, entry)
    for job_id in itertools.islice(core.quiet, QUIET_GLANCED):
        head = by_job.get(job_id)
        if head is None or head.fields.get(states.STATE) in running:
            continue
        if head.last_write + rate <= now:
            writable.append((job_id, head))
    return writable, soonest


def _soonest(entry: Written, current: Callable[[Written], bool]) -> bool:
    """Whether the heap's top, not free yet, tells when the first running file will be."""
    return current(entry) and entry[3].fields.get(states.STATE) in schedule.RUNNING


def _glance_one(
    core: Core,
    job_id: str,
    task: Tracked,
    raw: bytes,
    when: tuple[float, str],
    batch: writer.Batch,
) -> bool:
    """Whether the file says what `raw` says (written, or nothing new), or nothing is for a
    glance to do with it; False: look again at the next glance."""
    now, now_iso = when
    meta = core.publisher.metas.parsed(job_id, raw)
    key = f"job {job_id}"
    if jobs.status(meta) not in schedule.RUNNING or core.table.by_job.get(job_id) is not task:
        return True  # the tick's to mirror
    if not core.guard.ready(key, now):
        return False
    written = core.guard.run(
        key,
        "mirroring",
        now,
        lambda: writer.write(core, task, updates_for(meta, task.fields, now_iso), now, batch),
        end=lambda error: writer.fail(core, task, error, now),
        log_ids=partial(task_ids, task),
        shown=lambda: str(task.path),
    )
    return bool(written)
