"""The bridge: one loop that takes new task files, publishes jobs and mirrors their state back.

Everything that touches files or Redis happens on this one thread, in passes that each take
`now`: `intake_once`, `mirror_once`, `rescan_once`. The watchdog thread only enqueues paths;
the HTTP thread (bridge/web.py) only reads the snapshot this loop leaves in `metrics`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, TypeVar

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from bridge import contract, files, intake, metrics, schedule, watch, web
from bridge.contract import BRIDGE_TEMP_SUFFIX
from bridge.logs import ids
from bridge.mirror import STOPPED_ERROR, updates_for, utc_now
from bridge.model import Table, Tracked
from bridge.notify import (
    Notifier,
    is_sent_marker,
    marker_task_id,
    read_marker,
    sent_marker,
    task_files,
)
from bridge.publish import Publisher
from bridge.schedule import Known
from taskd import states
from taskd.settings import Settings
from taskd.tasktypes import TaskType, notify_type

log = logging.getLogger(__name__)

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OperationalError)
BACKOFF_MAX_S = 5.0
RATE_SLACK = 0.95
MAX_RECOVERIES = 3
WORKER_TEMP_AGE_S = 60.0  # a tick may come a hair early; never let that skip a whole second
T = TypeVar("T")


def _ids(task: Tracked) -> dict[str, str]:
    """`extra=` for a log line about a tracked task."""
    return ids(task.task_id, task.user, task.job_id)


def _path_ids(path: Path) -> dict[str, str]:
    """`extra=` for a log line about a file that is, or may become, a task."""
    name = contract.parse_name((path.parent.name, path.name))
    return ids(name.stem, name.user) if name else ids(user_id=path.parent.name)


def _row(task: Tracked) -> metrics.TaskRow:
    progress = task.fields.get(states.PROGRESS_FIELD)
    percent = int(progress) if isinstance(progress, int | float) else 0
    return metrics.TaskRow(task.task_id, task.user, task.type.name, task.state, percent)


class Bridge:
    def __init__(
        self,
        settings: Settings,
        types: Mapping[str, TaskType],
        app: Celery,
        client: Any,
    ) -> None:
        self.settings = settings
        self.types = types
        self.app = app
        self.client = client
        self.table = Table()
        self.intake = intake.Intake(settings, types)
        self.publisher = Publisher(app, client)
        self.watcher = watch.Watcher(settings.task_queue)
        self.pending_cancels: set[str] = set()
        self.orphans: dict[str, float] = {}  # job id -> since when it has had no lease
        self.recoveries: dict[str, int] = {}  # job id -> how often it was run again
        self.unstarted: dict[str, float] = {}  # job id -> since when it has waited unstarted
        self.write_errors: set[str] = set()  # jobs whose file could not be written (logged once)
        self.notifier = Notifier(notify_type(settings.notify_retry_intervals))
        self.mails: dict[Path, tuple[float, bool]] = {}  # notify mails seen: since, closed
        # Finished files (path -> a hash of their signature): a rescan stats them instead of
        # reading them again. Strings and ints: a tree of 100,000 finished files is the norm.
        self.settled: dict[str, int] = {}
        self.redis_ok = True
        self.metrics = metrics.Metrics(settings.mirror_interval)
        self._retry_redis_at = 0.0
        self._backoff = 0.5
        self._run_id: str | None = None

    # --- Redis, guarded: the loop survives Redis going away ---------------------------------

    def _redis(self, now: float, fn: Callable[[], T]) -> T | None:
        if not self.redis_ok and now < self._retry_redis_at:
            return None
        try:
            value = fn()
        except REDIS_ERRORS as exc:
            if self.redis_ok:
                log.warning(
                    "Redis unreachable (%s); files keep their state and are caught up when it "
                    "returns",
                    exc,
                )
            self.redis_ok = False
            self.metrics.redis_seen(False)
            self._retry_redis_at = now + self._backoff
            self._backoff = min(BACKOFF_MAX_S, self._backoff * 2)
            return None
        if not self.redis_ok:
            log.warning("Redis is back; catching up")
            self.metrics.redis_seen(True)
        self.redis_ok, self._backoff = True, 0.5
        return value

    # --- events and intake ------------------------------------------------------------------

    def handle(self, seen: watch.Seen, now: float) -> None:
        if seen.kind == watch.DIR:
            for path in watch.scan(self.settings.task_queue, seen.path):
                self.intake.note(path, now)
        elif seen.kind == watch.DELETED:
            self.intake.forget(seen.path)
            task = self.table.by_path.get(seen.path)
            if task is not None and not seen.path.exists():
                self.cancel(task, now)
        elif seen.kind == watch.MOVED and seen.dest is not None:
            self._moved(seen.path, seen.dest, now)
        elif contract.is_notify_mail(seen.path.name):
            self.mails[seen.path] = (now, seen.kind == watch.CLOSED)
        elif seen.path not in self.table.by_path:
            self.intake.note(seen.path, now, closed=seen.kind == watch.CLOSED)

    def _moved(self, src: Path, dest: Path, now: float) -> None:
        """Someone else renamed a file (`taskd retry`, say): follow it, never cancel for it."""
        self.intake.forget(src)
        task = self.table.by_path.get(src)
        if task is not None and dest.parent == src.parent and dest.exists():
            self.table.move(task, dest)
        elif task is not None and not src.exists():
            self.cancel(task, now)
        self.handle(watch.Seen(watch.CHANGED, dest), now)

    def intake_once(self, now: float) -> None:
        """Take, reject or adopt what is ready. Files taken in one pass share a directory
        fsync and two Redis round trips; none is published before all are durable."""
        taken: list[Tracked] = []
        for path in list(self.intake.pending):
            try:
                decision = self.intake.consider(path, now)
                self._carry_out(path, decision, now, taken)
            except OSError as exc:
                log.error("cannot take %s now (%s); trying again", path, exc, extra=_path_ids(path))
                continue
            except Exception:  # one bad file never stops the others
                log.exception(
                    "unexpected error taking %s; leaving it as it is", path, extra=_path_ids(path)
                )
                self.intake.forget(path)
                continue
            if decision.action != intake.WAIT:
                self.intake.forget(path)
        if taken:
            self._publish_taken(taken, now)

    def _publish_taken(self, taken: list[Tracked], now: float) -> None:
        for directory in {task.path.parent for task in taken}:
            try:
                files.fsync_dir(directory)
            except OSError as exc:
                log.error("cannot fsync %s (%s); publishing anyway", directory, exc)
        due: list[Tracked] = []
        for task in taken:
            self.publish_when_due(task, Known(None, None), now, due)
        if due:
            self._redis(now, lambda: self.publisher.publish_many(due))
        for task in due:
            self._after_publish(task)

    def _carry_out(
        self,
        path: Path,
        decision: intake.Decision,
        now: float,
        taken: list[Tracked] | None = None,
    ) -> None:
        if decision.action == intake.TAKE:
            self.take(path, decision, now, taken)
        elif decision.action == intake.REJECT:
            self.reject(path, decision)
        elif decision.action == intake.ADOPT:
            self.adopt(path, decision.fields)

    def take(
        self,
        path: Path,
        decision: intake.Decision,
        now: float,
        taken: list[Tracked] | None = None,
    ) -> None:
        """Rewrite and rename a new file, then publish its job; with `taken`, the caller fsyncs
        the directory and publishes, once for all the files of its pass."""
        name, task_type = decision.name, decision.verdict.task_type
        assert name is not None and task_type is not None
        fields = contract.merge(
            decision.verdict.fields,
            {
                states.TASK_ID: name.stem,
                states.STATE: states.QUEUED,
                states.PROGRESS_FIELD: 0,
                states.JOB_ID: str(uuid.uuid4()),
                states.QUEUED_AT: utc_now(),
                **task_type.assign_ids(decision.verdict.fields),
            },
        )
        new_path = path.with_name(
            contract.render_name(name.stem, name.type, fields, task_type.runtime_info)
        )
        if new_path.exists():
            clash = f"task-id {name.stem!r} is already used by {new_path.name}; use another task-id"
            self.reject(path, intake.Decision(intake.REJECT, name, decision.verdict), clash)
            return
        files.rewrite_then_rename(path, new_path, contract.dump(fields), sync_dir=taken is None)
        task = Tracked(name.user, name.stem, task_type, new_path, fields, last_write=now)
        self.table.add(task)
        self.metrics.count(metrics.TAKEN)
        log.info("took %s as job %s", new_path.name, task.job_id, extra=_ids(task))
        if taken is not None:
            taken.append(task)
        else:
            self.publish_when_due(task, Known(None, None), now)

    def reject(self, path: Path, decision: intake.Decision, error: str | None = None) -> None:
        name = decision.name
        assert name is not None
        message = error or decision.verdict.error or "rejected"
        fields = contract.merge(
            decision.verdict.fields,
            {
                states.TASK_ID: name.stem,
                states.STATE: states.REJECTED,
                states.FINISHED_AT: utc_now(),
                states.ERROR: message,
            },
        )
        task_type = self.types.get(name.type)
        parts = task_type.runtime_info if task_type else (states.PROGRESS_FIELD,)
        new_path = path.with_name(contract.render_name(name.stem, name.type, fields, parts))
        if new_path.exists():
            new_path = path  # keep the name rather than replace another file
        files.rewrite_then_rename(path, new_path, contract.dump(fields))
        self.metrics.count(metrics.REJECTED)
        log.warning("rejected %s: %s", new_path.name, message, extra=ids(name.stem, name.user))

    def adopt(self, path: Path, fields: dict[str, Any]) -> None:
        """A file the bridge took before (it restarted): mirror it again if still active."""
        if fields.get(states.STATE) in states.TERMINAL:
            with contextlib.suppress(OSError):
                sig = files.signature(path)
                if sig is not None:
                    self.settled[str(path)] = hash(sig)
            return
        task_type = self.types.get(path.suffix[1:])
        user = path.parent.name
        if task_type is None or not isinstance(fields.get(states.JOB_ID), str):
            log.error("cannot resume %s: unknown type or no job-id", path, extra=ids(user_id=user))
            return
        task = Tracked(user, str(fields[states.TASK_ID]), task_type, path, fields)
        known = self.table.by_job.get(task.job_id)
        if known is not None and known.path != path and known.path.exists():
            log.error(
                "%s repeats job %s of %s; leaving it alone",
                path,
                task.job_id,
                known.path,
                extra=_ids(task),
            )
            return
        self.table.add(task)

    # --- cancel -----------------------------------------------------------------------------

    def cancel(self, task: Tracked, now: float) -> None:
        """The UI deleted the file: the job must never run, or stop, and send nothing."""
        self.table.drop(task)
        self.pending_cancels.add(task.job_id)
        notify = task.path.with_name(contract.notify_mail_name(task.task_id))
        notify.unlink(missing_ok=True)
        log.info("%s deleted: cancelling job %s", task.path.name, task.job_id, extra=_ids(task))
        self.flush_cancels(now)

    def flush_cancels(self, now: float) -> None:
        if not self.pending_cancels:
            return
        ids = sorted(self.pending_cancels)

        def send() -> bool:
            with self.client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.set(states.cancel_key(job_id), "1", ex=states.CANCEL_TTL_S)
                pipe.execute()
            self.publisher.forget(ids)
            # Workers that hold the job stop at once; the durable key covers every other case.
            self.app.control.revoke(ids, terminate=True, signal="SIGUSR1")
            return True

        if self._redis(now, send):
            self.pending_cancels.difference_update(ids)

    # --- mirroring --------------------------------------------------------------------------

    def mirror_once(self, now: float) -> None:
        self.flush_cancels(now)
        tasks = list(self.table.by_job.values())
        ids = [t.job_id for t in tasks] + list(self.notifier.jobs)
        answer = self._redis(now, lambda: self.publisher.known(ids))
        if answer is None:
            return
        known, run_id = answer
        self._check_run_id(run_id)
        now_iso = utc_now()
        for task in tasks:
            info = known.get(task.job_id, Known(None, None))
            self.publish_when_due(task, info, now)
            self.write(task, updates_for(info.meta, task.fields, now_iso), now)
        self.handed_out_once(now, tasks, known)
        self.notify_once(now, known)
        self.metrics.mirrored(now, time.monotonic())

    def handed_out_once(self, now: float, tasks: list[Tracked], known: dict[str, Known]) -> None:
        """Jobs a worker took but never started for a whole grace period: it died holding them."""
        overdue = []
        for task in tasks:
            info = known.get(task.job_id)
            if info is None or not schedule.waiting_unstarted(task.fields, info):
                self.unstarted.pop(task.job_id, None)
            elif now - self.unstarted.setdefault(task.job_id, now) >= self.settings.recovery_grace:
                overdue.append(task)
        if not overdue:
            return
        held = self._redis(now, lambda: self.publisher.handed_out(t.job_id for t in overdue))
        for task in overdue:
            self.unstarted[task.job_id] = now  # look again after another grace period
            if held is not None and task.job_id in held:
                self._recover(task, int(task.fields.get(states.RETRIES) or 0), now)

    def _check_run_id(self, run_id: str) -> None:
        """Logged for ops; the reconcile itself happens for every job on every tick."""
        if run_id and self._run_id and run_id != self._run_id:
            log.warning("Redis restarted (run_id changed): republishing what it lost")
        if run_id:
            self._run_id = run_id

    def _orphaned_for(self, task: Tracked, info: Known, now: float) -> float:
        """How long the job has looked orphaned (no lease though started), 0 if it does not."""
        if not schedule.orphaned(task.fields, info):
            self.orphans.pop(task.job_id, None)
            return 0.0
        return now - self.orphans.setdefault(task.job_id, now)

    def _recover(self, task: Tracked, attempt: int, now: float) -> None:
        """Run again a job whose worker died; give up after MAX_RECOVERIES (a job that kills
        its worker every time must not loop for ever)."""
        self.orphans.pop(task.job_id, None)
        count = self.recoveries[task.job_id] = self.recoveries.get(task.job_id, 0) + 1
        if count > MAX_RECOVERIES:
            error = STOPPED_ERROR.format(n=MAX_RECOVERIES + 1)
            self.write(
                task,
                {states.STATE: states.FAILURE, states.FINISHED_AT: utc_now(), states.ERROR: error},
                now,
            )
            return
        log.warning(
            "job %s of %s has had no live worker for the recovery grace: running it again",
            task.job_id,
            task.path.name,
            extra=_ids(task),
        )
        self.metrics.count(metrics.REPUBLISHED, metrics.WORKER_LOST)
        self._redis(now, lambda: self.publisher.recover(task, attempt))

    def publish_when_due(
        self, task: Tracked, info: Known, now: float, batch: list[Tracked] | None = None
    ) -> None:
        """Publish a job exactly once (and each retry once), when it is due; a first try is
        added to `batch` instead, when given, for the caller to publish with others."""
        orphaned_for = self._orphaned_for(task, info, now)
        decision = schedule.decide(
            task.fields, info, datetime.now(UTC), orphaned_for, self.settings.recovery_grace
        )
        if decision.action == schedule.RECOVER:
            self._recover(task, decision.attempt, now)
            return
        if decision.action == schedule.KNOWN:
            task.published = True
            return
        if decision.action == schedule.WAIT:
            return
        if decision.action == schedule.INSPECT and self._redis(
            now, lambda: self.publisher.in_flight(task)
        ):
            self._redis(now, lambda: self.publisher.mark_published(task.job_id))
            task.published = True
            return
        if task.published and decision.attempt == 0:
            log.warning(
                "job %s of %s is unknown to Redis: publishing it again",
                task.job_id,
                task.path.name,
                extra=_ids(task),
            )
            self.metrics.count(metrics.REPUBLISHED, metrics.REDIS_LOST)
        if batch is not None and decision.attempt == 0 and not task.published:
            batch.append(task)
            return
        self._redis(now, lambda: self.publisher.publish(task, decision.attempt))
        self._after_publish(task)

    def _after_publish(self, task: Tracked) -> None:
        if task.published and task.type is self.notifier.kind:
            # From now on a notify job counts as started: if Redis loses it, the bridge waits
            # the recovery grace for a worker still sending it to take its lease back.
            task.fields[states.STATE] = states.STARTED

    def write(self, task: Tracked, updates: Mapping[str, Any], now: float) -> None:
        fields = contract.merge(task.fields, updates)
        if fields == task.fields:
            return
        state_changed = fields[states.STATE] != task.state
        terminal = fields[states.STATE] in states.TERMINAL
        if not terminal and now - task.last_write < RATE_SLACK * self.settings.mirror_interval:
            return
        new_path = task.path.with_name(
            contract.render_name(task.task_id, task.type.name, fields, task.type.runtime_info)
        )
        # The name first, then the content (file-contract.md); each step is tracked on its own,
        # so a rewrite that fails after the rename is retried under the new name.
        try:
            files.rename_noreplace(task.path, new_path)
        except FileNotFoundError:
            self.cancel(task, now)
            return
        except FileExistsError:
            log.error(
                "cannot rename %s: %s exists", task.path.name, new_path.name, extra=_ids(task)
            )
            return
        except OSError as exc:
            self._write_failed(task, exc)
            return
        self.table.move(task, new_path)
        try:
            files.atomic_write(new_path, contract.dump(fields), durable=state_changed)
        except OSError as exc:
            self._write_failed(task, exc)
            return
        self.write_errors.discard(task.job_id)
        task.fields, task.last_write = fields, now
        if terminal:
            self.table.drop(task)
            self._redis(now, lambda: self.publisher.forget([task.job_id]))
            self.metrics.count(metrics.ENDED, fields[states.STATE])
            log.info("%s ended %s", new_path.name, fields[states.STATE], extra=_ids(task))
            # A notify job, if its mail is there: published by the next tick, once Redis was asked.
            self.notifier.job_for(new_path, fields)

    def _write_failed(self, task: Tracked, exc: OSError) -> None:
        """Permissions, a read-only or full file system: keep the task, try again next tick."""
        if task.job_id not in self.write_errors:
            self.write_errors.add(task.job_id)
            log.error(
                "cannot write %s (%s); trying again every tick", task.path, exc, extra=_ids(task)
            )

    # --- rescans ----------------------------------------------------------------------------

    def rescan_once(self, now: float) -> None:
        """Catch what events missed: new files, deleted tasks, jobs whose files are gone."""
        self.metrics.count(metrics.RESCANS)
        settled: dict[str, int] = {}
        for entry in watch.scan_entries(self.settings.task_queue):
            if contract.is_notify_mail(entry.name):
                self.mails.setdefault(Path(entry.path), (now, True))
            elif is_sent_marker(entry.name):
                self._settle_marker(Path(entry.path))
            elif not self._still_settled(entry, settled):
                path = Path(entry.path)
                if path not in self.table.by_path:
                    self.intake.note(path, now)
        self.settled = settled  # files gone since are forgotten
        for task in list(self.table.by_job.values()):
            if not task.path.exists():
                self.cancel(task, now)
        self._sweep_leftovers()
        self.intake_once(now)
        self.mails_once(now)

    def _still_settled(self, entry: os.DirEntry[str], settled: dict[str, int]) -> bool:
        """Whether a finished file is as it was when last read (then it needs no reading)."""
        known = self.settled.get(entry.path)
        if known is None:
            return False
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return False
        unchanged = hash(files.signature_of(st)) == known
        if unchanged:
            settled[entry.path] = known
        return unchanged

    def _sweep_leftovers(self) -> None:
        """Remove temp files of a process killed mid-write. This bridge writes only on this
        thread, so none of its own is in flight; a worker's is spared for a minute."""
        wall = time.time()
        for path in watch.leftovers(self.settings.task_queue):
            try:
                own = path.name.endswith(BRIDGE_TEMP_SUFFIX)
                if own or wall - path.stat().st_mtime > WORKER_TEMP_AGE_S:
                    path.unlink()
                    log.info(
                        "removed %s, left by a process that died mid-write",
                        path.name,
                        extra=ids(user_id=path.parent.name),
                    )
            except FileNotFoundError:
                continue

    def mails_once(self, now: float) -> None:
        """Notify mails that settled: send those whose task has already ended."""
        for path, (since, closed) in list(self.mails.items()):
            if not closed and now - since < self.settings.settle:
                continue
            del self.mails[path]
            job = self.notifier.for_mail(path)
            if job is not None:  # published by the next tick, once Redis has been asked
                log.info("%s: its task has ended, sending it", path.name, extra=_ids(job))

    def notify_once(self, now: float, known: Mapping[str, Known]) -> None:
        """Write what became of each notify mail into its task file; publish retries when due."""
        for job_id, job in list(self.notifier.jobs.items()):
            info = known.get(job_id)
            if info is None:
                continue  # created (and published) during this tick: Redis was asked before

            updates = self.notifier.outcome(job, info.meta)
            if updates and not self._note_outcome(job, updates):
                del self.notifier.jobs[job_id]
                continue
            status = (info.meta or {}).get("status")
            if status in (states.SUCCESS, states.FAILURE, states.CELERY_REVOKED):
                del self.notifier.jobs[job_id]
                self._redis(now, functools.partial(self.publisher.forget, [job_id]))
            else:
                self.publish_when_due(job, info, now)

    def _settle_marker(self, marker: Path) -> None:
        """A mail was sent but its outcome never reached the task file (the bridge died, or
        Redis forgot the job): record it from the worker's sent-marker, then drop the marker."""
        outcome = read_marker(marker)
        for path, fields in task_files(marker.parent, marker_task_id(marker)):
            if outcome and fields.get(states.JOB_ID) == outcome.get("job-id"):
                if states.NOTIFIED_AT not in fields:
                    updates = {k: outcome.get(k) for k in (states.NOTIFIED_AT, states.NOTIFY_ERROR)}
                    merged = contract.merge(fields, {**updates, states.NOTIFY_RETRY_AT: None})
                    files.atomic_write(path, contract.dump(merged), durable=True)
                    log.info(
                        "%s: notify outcome recorded from its sent-marker",
                        path.name,
                        extra=ids(marker_task_id(marker), path.parent.name, fields[states.JOB_ID]),
                    )
                break
        marker.unlink(missing_ok=True)

    def _note_outcome(self, job: Tracked, updates: Mapping[str, Any]) -> bool:
        """Merge a notify outcome into the ended task's file; False if the file is gone."""
        try:
            fields = contract.parse_content(contract.decode_utf8(files.read_all(job.path)))
        except FileNotFoundError:
            return False
        merged = contract.merge(fields, updates)
        if merged != fields:
            files.atomic_write(job.path, contract.dump(merged), durable=True)
        if states.NOTIFIED_AT in merged:
            sent_marker(job.path, job.task_id).unlink(missing_ok=True)
        return True

    def cancel_orphans(self, now: float) -> None:
        """Jobs Redis lists as active whose files are gone (deleted while the bridge was down)."""
        active = self._redis(now, self.publisher.active_ids)
        if active is None:
            return
        for job_id in active - set(self.table.by_job):
            if self._job_file_exists(now, job_id):
                continue
            log.info(
                "job %s has no task file any more: cancelling it", job_id, extra=ids(job_id=job_id)
            )
            self.pending_cancels.add(job_id)
        self.flush_cancels(now)

    def _job_file_exists(self, now: float, job_id: str) -> bool:
        """Look for the job's file by the user and task-id Redis recorded (a rare, exact check)."""
        record = self._redis(now, lambda: self.client.hgetall(states.job_key(job_id)))
        if not record:
            return False
        user = (record.get(b"user") or b"").decode()
        task_id = (record.get(b"task-id") or b"").decode()
        if not contract.USER_RE.fullmatch(user) or not task_id:
            return False
        if record.get(b"type") == self.notifier.kind.name.encode():
            return self.notifier.owns(job_id, user, task_id, self.settings.task_queue)
        for path in (self.settings.task_queue / user).glob(f"{glob_escape(task_id)}*"):
            try:
                fields = contract.parse_content(contract.decode_utf8(files.read_all(path)))
            except (OSError, ValueError):
                continue
            if fields.get(states.JOB_ID) != job_id:
                continue
            if fields.get(states.STATE) in states.TERMINAL:
                # Ended, but the bridge died before it stopped listing the job as active.
                self._redis(now, lambda: self.publisher.forget([job_id]))
            else:
                self.intake.note(path, now)
            return True
        return False

    # --- the driver -------------------------------------------------------------------------

    def start(self) -> None:
        self.watcher.start()
        now = time.monotonic()
        self.rescan_once(now)
        # Files the bridge wrote are adopted in that first pass (intake does not make them
        # wait to settle), so what Redis still lists beyond them lost its file.
        self.cancel_orphans(now)
        self.mirror_once(now)
        self.observe()

    def observe(self) -> None:
        """Leave a snapshot of the active tasks for the HTTP thread (once a mirror tick)."""
        # watch.Watcher has no liveness accessor; its observer thread is what can die.
        alive = self.watcher._observer.is_alive()
        self.metrics.observe((_row(t) for t in self.table.by_job.values()), alive)

    def tick(self, now: float, next_mirror: float, next_rescan: float) -> tuple[float, float]:
        for seen in self.watcher.drain():
            self.handle(seen, now)
        self.intake_once(now)
        self.mails_once(now)
        if now >= next_mirror:
            self.mirror_once(now)
            self.observe()
            next_mirror += self.settings.mirror_interval
            if next_mirror <= now:
                next_mirror = now + self.settings.mirror_interval
        if now >= next_rescan:
            self.rescan_once(now)
            self.cancel_orphans(now)
            next_rescan = now + self.settings.rescan_interval
        return next_mirror, next_rescan

    def run(self, stop: threading.Event) -> None:
        # Served from the start, so /healthz reports a long first scan as mirror lag.
        server = web.serve(self.settings.http_host, self.settings.serve_port, self.metrics)
        try:
            self._loop(stop)
        finally:
            if server is not None:
                server.stop()

    def _loop(self, stop: threading.Event) -> None:
        self.start()
        now = time.monotonic()
        next_mirror = now + self.settings.mirror_interval
        next_rescan = now + self.settings.rescan_interval
        try:
            while not stop.is_set():
                now = time.monotonic()
                next_mirror, next_rescan = self.tick(now, next_mirror, next_rescan)
                wake = min(next_mirror, next_rescan)
                if self.intake.pending or self.mails:
                    wake = min(wake, now + 0.05)
                self.watcher.wait(max(0.0, wake - time.monotonic()), stop)
        finally:
            self.watcher.stop()
