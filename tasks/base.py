"""The task class every taskd type runs under, and the `Job` a task body receives.

Around each body it makes deliveries safe to repeat: a cancelled job never runs, a job already
finished is not redone (its outcome is restored), and two deliveries of one job never run at once.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded

from taskd import jobs, outcomes, roots, states
from taskd.leases import RELEASE, TAKE_OR_KEEP
from taskd.settings import Settings
from taskd.tasktypes import NOTIFY, RetryPolicy, load_types
from tasks.errors import (
    Cancelled,
    Retryable,
    TaskFailed,
    as_retryable,
    internal_error,
    is_connection_error,
)
from tasks.progress import CLAIM_TTL_S, Progress, store_meta

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
NOTIFY_TYPE = NOTIFY
ENTER_TRIES = 5


@dataclass
class Job:
    """What a task body needs: the task's fields, who asked, where to work, how to report."""

    job_id: str
    type: str
    user_id: str
    task_id: str
    fields: dict[str, Any]
    settings: Settings
    progress: Callable[..., None] = field(repr=False)
    extra: dict[str, Any] = field(default_factory=dict)  # retries done; notify: recipients

    @property
    def tmp_space(self) -> Path:
        return self.settings.work_space / self.user_id / self.task_id / self.job_id

    @contextmanager
    def work_dir(self) -> Iterator[Path]:
        """The task's tmp-space: created empty, gone when the body ends, whatever the ending."""
        path = self.tmp_space
        _remove_tree(path)
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            _remove_tree(path)
            _remove_if_empty(path.parent)


def _remove_tree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass  # nothing left from an earlier run, or already cleaned: the usual case
    except OSError as exc:
        # Leftovers cost disk, not correctness: the next run of the job clears them again.
        log.warning("cannot remove tmp-space %s: %s", path, exc)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError as exc:
        # Another job of this task-id may still work there, or it is gone already.
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            log.warning("cannot remove %s: %s", folder, exc)


@cache
def _types_of(schema_dirs: tuple[Path, ...]) -> dict[str, Any]:
    return load_types(schema_dirs)


def retry_policy(settings: Settings, type_name: str) -> RetryPolicy:
    """The retry intervals of a task type (notify mails have their own setting)."""
    if type_name == NOTIFY_TYPE:
        return RetryPolicy.parse(settings.notify_retry_intervals)
    task_type = _types_of(settings.type_dirs).get(type_name)
    return task_type.retry if task_type is not None else RetryPolicy()


class _Heartbeat(threading.Thread):
    """Renews the claim while a body runs without reporting (one long write, say)."""

    def __init__(self, client: Any, job_id: str, owner: str, whose: str) -> None:
        super().__init__(daemon=True, name=f"claim-{job_id}")
        self.client, self.job_id, self.owner, self.whose = client, job_id, owner, whose
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                with self.client.pipeline(transaction=False) as pipe:
                    pipe.eval(
                        TAKE_OR_KEEP, 1, states.claim_key(self.job_id), self.owner, CLAIM_TTL_S
                    )
                    pipe.set(states.whose_key(self.job_id), self.whose, ex=states.DONE_TTL_S)
                    kept = pipe.execute()[0]
                if not kept:
                    log.warning("job %s: another delivery holds its lease now", self.job_id)
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.debug("job %s: claim not renewed: %s", self.job_id, exc)


class TaskdTask(Task):  # type: ignore[misc]
    """Base of every taskd task type; the body is `run(job) -> fields to mirror`."""

    typing = False
    # A TaskFailed is the task's own verdict (a user's mistake, said in the file's error): one
    # warning line below, not an error with a traceback from Celery.
    throws = (TaskFailed,)
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if TaskdTask._settings is None:
            TaskdTask._settings = Settings.from_env()
        return TaskdTask._settings

    def __call__(self, spec: dict[str, Any]) -> Any:
        job_id = self.request.id
        worker = f"{self.request.hostname}"
        owner = f"{worker}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        client = self.backend.client
        self._check_root(spec.get(states.SPEC_ROOT))
        whose = jobs.whose(str(spec.get("user-id", "")), str(spec.get("task-id", "")))
        try:
            verdict = self._enter(client, job_id, owner, int(spec.get(states.RETRIES) or 0), whose)
        except Reject:
            raise
        except Exception as exc:  # a bug or a Redis that answers nonsense: fail, not redeliver
            self._fail_internal(client, job_id, str(spec.get("type") or self.name), exc, whose)
        if verdict is not None:
            self._replay(job_id, verdict)
        self._store_started(job_id, worker, owner, whose)
        beat = _Heartbeat(client, job_id, owner, whose)
        beat.start()
        try:
            return self._run_body(spec, job_id, worker, owner, client, whose)
        finally:
            beat.stop.set()
            _quietly(client.eval, RELEASE, 1, states.claim_key(job_id), owner)

    @property
    def root_id(self) -> str:
        return _root_id_of(self.settings.data_root)

    @property
    def _root_claim(self) -> str:
        host = str(self.request.hostname)
        return roots.RootClaim(self.root_id, roots.root_path(self.settings.data_root), host).dump()

    def _check_root(self, value: object, claim: bool = False) -> None:
        """Never run a job of another data root, nor on a Redis db that serves another: put the
        job back for its own workers and stop this worker (it is deployed on the wrong db)."""
        settings, job_id = self.settings, str(self.request.id)
        problem: roots.RootConflict | None = None
        if claim:
            other = roots.other_root(value, self.root_id, roots.root_path(settings.data_root))
            if other is not None:
                problem = roots.conflict(settings.redis_url, settings.data_root, other)
        elif isinstance(value, str) and value and value != self.root_id:
            problem = roots.foreign_job(settings.redis_url, settings.data_root, job_id)
        if problem is None:
            return
        log.critical("stopping this worker: %s", problem)
        _quietly(self.app.control.shutdown, destination=[self.request.hostname])
        raise Reject(str(problem), requeue=True)

    def _enter(
        self, client: Any, job_id: str, worker: str, attempt: int, whose: str
    ) -> dict[str, Any] | None:
        """Claim the job, or say why not: cancelled, or already finished; say whose task it is.

        While another delivery of the same job holds the claim this one waits: it takes over
        if that one dies (its claim expires) and replays the outcome if it finishes.
        """
        errors = 0
        while True:
            try:
                with client.pipeline(transaction=False) as pipe:
                    pipe.exists(states.cancel_key(job_id))
                    pipe.get(states.done_key(job_id))
                    pipe.set(states.claim_key(job_id), worker, nx=True, ex=CLAIM_TTL_S)
                    pipe.get(states.meta_key(job_id))
                    pipe.set(states.KEY_ROOT, self._root_claim, nx=True)
                    pipe.get(states.KEY_ROOT)
                    pipe.set(states.whose_key(job_id), whose, ex=states.DONE_TTL_S)
                    cancelled, done, claimed, meta, _, root, _ = pipe.execute()
            except Exception as exc:
                if not is_connection_error(exc):
                    raise  # the same every time: trying again would loop for ever
                errors += 1
                if errors >= ENTER_TRIES:
                    raise Reject(
                        f"cannot reach Redis to claim the job: {exc}", requeue=True
                    ) from exc
                log.warning("job %s: cannot claim yet (%s)", job_id, exc)
                time.sleep(errors)
                continue
            self._check_root(root, claim=True)
            if cancelled:
                return {"cancelled": True}
            kept = outcomes.parse(done) or outcomes.find(self.settings.data_root, job_id)
            if kept is not None:
                return kept
            if claimed and _later_try_waits(meta, attempt):
                _quietly(client.eval, RELEASE, 1, states.claim_key(job_id), worker)
                return {"stale": True}
            if claimed:
                return None
            time.sleep(1.0)

    def _store_started(self, job_id: str, worker: str, owner: str, whose: str) -> None:
        """STARTED, stored only now, by the try that holds the claim and is the one due:
        Celery's own (task_track_started) comes before any check, and a stale copy's overwrote
        the RETRY that says a later try waits, so the copy ran that try at once, and again.
        Redis blinking is tried again as when claiming; past that the job runs on and its
        first report says it started."""
        started = {"pid": os.getpid(), "hostname": worker}
        for tries in range(1, ENTER_TRIES + 1):
            try:
                store_meta(self, job_id, states.STARTED, started, owner, whose)
                return
            except Exception as exc:  # noqa: BLE001 - bookkeeping must not fail the job
                if not is_connection_error(exc) or tries == ENTER_TRIES:
                    log.warning("job %s: its start not stored (%s); running it", job_id, exc)
                    return
                time.sleep(tries)

    def _replay(self, job_id: str, verdict: dict[str, Any]) -> None:
        if verdict.get("cancelled"):
            log.info("job %s was cancelled before it ran; dropping it", job_id)
        elif verdict.get("stale"):
            log.info("job %s: a later try is already scheduled; dropping this copy", job_id)
        else:
            log.info("job %s already ended %s; not running it again", job_id, verdict["state"])
            result = verdict.get("result")
            if verdict["state"] == states.FAILURE:
                result = TaskFailed(str(verdict.get("error", "failed")))
            self.backend.store_result(job_id, result, verdict["state"])
        raise Ignore()

    def _run_body(
        self, spec: dict[str, Any], job_id: str, worker: str, owner: str, client: Any, whose: str
    ) -> Any:
        progress = Progress(self, job_id, worker, owner=owner, whose=whose)
        job = Job(
            job_id=job_id,
            type=spec["type"],
            user_id=spec["user-id"],
            task_id=spec["task-id"],
            fields=spec["fields"],
            settings=self.settings,
            progress=progress,
            extra={k: v for k, v in spec.items() if k not in ("type", "user-id", "task-id")},
        )
        try:
            fields = self.run(job) or {}
        except Cancelled:
            log.info("job %s cancelled while running; cleaned up", job_id)
            raise Ignore() from None
        except SoftTimeLimitExceeded:
            if _quietly(client.exists, states.cancel_key(job_id)):
                raise Ignore() from None
            limit = self.request.timelimit[1] or self.soft_time_limit
            self._fail(
                client,
                job_id,
                TaskFailed(
                    f"stopped: the task ran past its time limit of {limit} s; "
                    "narrow the task or ask ops to raise the type's time-limit"
                ),
                whose,
            )
        except TaskFailed as exc:
            self._fail(client, job_id, exc, whose)
        except Exception as exc:
            passing = as_retryable(exc)
            if passing is not None:
                self._retry_or_fail(job, client, passing)
            self._fail_internal(client, job_id, job.type, exc, whose)
        result = jobs.finished({**progress.fields, **fields}, progress.worker, progress.started_at)
        self._finish(client, job_id, states.SUCCESS, result, whose)
        return result

    def _fail_internal(
        self, client: Any, job_id: str, type_name: str, exc: BaseException, whose: str
    ) -> NoReturn:
        """Fail for good on an exception no code expected; its traceback is logged once, here."""
        log.error("job %s failed with an unexpected error", job_id, exc_info=exc)
        self._fail(client, job_id, internal_error(type_name, exc, job_id), whose, said=True)

    def _fail(
        self, client: Any, job_id: str, failure: TaskFailed, whose: str, said: bool = False
    ) -> NoReturn:
        if not said:
            log.warning("job %s failed: %s", job_id, failure.message)
        self._finish(client, job_id, states.FAILURE, failure.message, whose)
        raise failure

    def _retry_or_fail(self, job: Job, client: Any, exc: Retryable) -> NoReturn:
        """Wait on the type's retry intervals: state RETRY now, the bridge publishes when due."""
        retries = int(job.extra.get(states.RETRIES) or 0)
        delay = retry_policy(self.settings, job.type).delay(retries)
        whose = jobs.whose(job.user_id, job.task_id)
        if delay is None:
            tries = "once" if retries == 0 else f"after {retries + 1} tries"
            self._fail(client, job.job_id, TaskFailed(f"{exc.message} (gave up {tries})"), whose)
        at = (datetime.now(UTC) + timedelta(seconds=delay)).isoformat(timespec="seconds")
        at = at.replace("+00:00", "Z")
        assert isinstance(job.progress, Progress)
        meta = job.progress.retry_meta(retries + 1, at, exc.message, **exc.meta)
        try:
            store_meta(self, job.job_id, states.RETRY, meta, job.progress.owner, whose)
        except Exception as store_error:
            if not is_connection_error(store_error):
                self._fail_internal(client, job.job_id, job.type, store_error, whose)
            # Redis out of reach: the wait cannot be recorded, so run again when it is back.
            raise Reject(f"cannot record the retry: {store_error}", requeue=True) from exc
        log.warning("job %s: %s; retry %d at %s", job.job_id, exc.message, retries + 1, at)
        raise Ignore()

    def _finish(self, client: Any, job_id: str, state: str, result: Any, whose: str) -> None:
        """Remember the outcome so a second delivery replays it instead of redoing the work:
        on disk first (it outlives any Redis outage or loss), then in Redis, with whose task
        the job is (a Redis that restarted since the job began no longer knows)."""
        record = outcomes.record(state, result)
        outcomes.keep(self.settings.data_root, job_id, record)
        _quietly(_keep_done, client, job_id, json.dumps(record), whose)


def _keep_done(client: Any, job_id: str, record: str, whose: str) -> None:
    with client.pipeline(transaction=False) as pipe:
        pipe.set(states.whose_key(job_id), whose, ex=states.DONE_TTL_S)
        pipe.set(states.done_key(job_id), record, ex=states.DONE_TTL_S)
        pipe.execute()


@cache
def _root_id_of(data_root: Path) -> str:
    return roots.root_id(data_root)


def _later_try_waits(meta: bytes | None, attempt: int) -> bool:
    """This delivery is a copy of an earlier try: the job already waits for a later one."""
    if not meta:
        return False
    stored = jobs.parse_meta(meta)
    if stored is None:
        log.warning("job meta is not a JSON object; taking this delivery as current")
        return False
    return (
        jobs.status(stored) == states.RETRY
        and jobs.count(jobs.result(stored).get(states.META_RETRIES)) > attempt
    )


def _quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - bookkeeping must not change the job's outcome
        log.debug("redis bookkeeping failed: %s", exc)
        return None
