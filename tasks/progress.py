"""The one way a task reports progress: state PROGRESS with its meta, and a `task-progress` event.

At most about once a second (a final report can be forced); a Redis blink never fails the task.
Each report also renews the job's claim and notices a cancel, in the same round trip.

The event carries `result`, a line such as `87% (3/5 files)`: Celery's event state (and so
Flower) copies an event's fields onto the task, and `result` is the one it shows in its task list
and task page. The `task-` prefix makes it a task event, so the task's state reads PROGRESS.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery.events.state import Task as EventTask

from taskd import jobs, states
from taskd.leases import TAKE_OR_KEEP
from tasks.errors import Cancelled

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 1.0
CLAIM_TTL_S = 15
"""A job's lease lives this long unless renewed (by each report, and a heartbeat every 5 s)."""

# Event fields Celery's event state reads as the task's own: a mirrored field of the same name
# (a type's `name`, say) must not overwrite them in Flower.
EVENT_RESERVED = frozenset(EventTask._fields) | {
    "type",
    "uuid",
    "hostname",
    "timestamp",
    "utcoffset",
    "pid",
    "local_received",
    "progress",
}


def progress_text(percent: int, detail: str | None = None) -> str:
    """What Flower shows for a running job: `87%`, or `87% (step 2/2: packing 3/5 MB)`."""
    return f"{percent}% ({detail})" if detail else f"{percent}%"


def counted(done: int, total: int, unit: str) -> str:
    """A detail for `progress_text`: `3/5 files`."""
    return f"{done}/{total} {unit}"


def megabytes(done: int, total: int, verb: str) -> str:
    """A detail for `progress_text` in bytes: `searching 12/30 MB`."""
    return f"{verb} {done / 1e6:.0f}/{total / 1e6:.0f} MB"


def event_fields(percent: int, doing: jobs.Doing, fields: dict[str, Any]) -> dict[str, Any]:
    """The `task-progress` event's fields: percent, the line Flower shows (with the step and
    what the task is doing), the step fields as the file has them, the mirrored fields."""
    own = {k: v for k, v in fields.items() if k not in EVENT_RESERVED}
    steps = {
        states.PROGRESS_STEP: doing.step,
        states.PROGRESS_STEPS: doing.steps,
        states.PROGRESS_TEXT: doing.text,
    }
    shown = {k: v for k, v in steps.items() if v is not None}
    return {"progress": percent, "result": progress_text(percent, doing.label()), **shown, **own}


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Progress:
    """Callable handed to a task body: `progress(percent, detail=None, step=None, steps=None,
    **fields)`.

    `fields` are task-specific file fields to mirror (`output`, `matched`, `tmp-space`...);
    `detail` says what the task is doing in a few words (`megabytes(12e6, 30e6, "searching")`),
    and `step` of `steps` where it is in a task of several steps: the file shows them while the
    task runs (`progress-text`, `progress-step`, `progress-steps`), as do Flower and the page.
    """

    def __init__(
        self,
        task: Any,
        job_id: str,
        worker: str,
        clock: Callable[[], float] = time.monotonic,
        owner: str | None = None,
        whose: str | None = None,
    ) -> None:
        self.task = task
        self.job_id = job_id
        self.worker = worker
        self.owner = owner or worker
        self.whose = whose  # `jobs.whose` of the job's task, stored beside each report
        self.clock = clock
        self.fields: dict[str, Any] = {}
        self.percent = 0
        self.detail: str | None = None
        self.step: int | None = None
        self.steps: int | None = None
        self.started_at = utc_now()
        self._last = float("-inf")
        self._warned = False

    def doing(self) -> jobs.Doing:
        return jobs.doing(jobs.Doing(self.step, self.steps, self.detail).meta())

    def meta(self) -> dict[str, Any]:
        return jobs.running(self.percent, self.fields, self.worker, self.started_at, self.doing())

    def __call__(
        self,
        percent: float,
        force: bool = False,
        detail: str | None = None,
        step: int | None = None,
        steps: int | None = None,
        **fields: Any,
    ) -> None:
        self.percent = max(self.percent, min(99, int(percent)))
        self.fields.update(fields)
        if detail is not None:
            self.detail = detail
        if step is not None and steps is not None and (step, steps) != (self.step, self.steps):
            self.step, self.steps = step, steps
            self.detail = detail  # a new step: the last one's words no longer hold
        now = self.clock()
        if not force and now - self._last < MIN_INTERVAL_S:
            return
        self._last = now
        if self._store():
            raise Cancelled(self.job_id)
        self._send_event()

    def _store(self) -> bool:
        """Write the meta, renew the claim, read the cancel flag: one round trip."""
        try:
            cancelled = store_meta(
                self.task, self.job_id, states.PROGRESS, self.meta(), self.owner, self.whose
            )
        except Exception as exc:  # noqa: BLE001 - a report must never fail the task
            if not self._warned:
                log.warning("job %s: progress not stored (%s); carrying on", self.job_id, exc)
                self._warned = True
            return False
        self._warned = False
        return bool(cancelled)

    def retry_meta(self, retries: int, retry_at: str, error: str, **extra: Any) -> dict[str, Any]:
        return {
            **self.meta(),
            # Celery decodes a RETRY result as an exception: give it one it can rebuild.
            "exc_type": "Retryable",
            "exc_module": "tasks.errors",
            "exc_message": [error],
            states.META_RETRIES: retries,
            states.META_RETRY_AT: retry_at,
            states.META_ERROR: error,
            **extra,
        }

    def _send_event(self) -> None:
        try:
            self.task.send_event(
                states.EVENT_PROGRESS, **event_fields(self.percent, self.doing(), self.fields)
            )
        except Exception as exc:  # noqa: BLE001 - events are for watchers, never fatal
            log.debug("job %s: progress event not sent: %s", self.job_id, exc)


def store_meta(
    task: Any,
    job_id: str,
    state: str,
    result: dict[str, Any],
    owner: str,
    whose: str | None = None,
) -> bool:
    """Store a state the way Celery's backend does, renew the claim, say whose task the job
    is (`jobs.whose`, when given); True if cancelled.

    Written directly, in one round trip: Celery's own store_result would encode a RETRY result
    as an exception, and would not renew the claim or read the cancel flag.
    """
    backend = task.backend
    meta = backend._get_result_meta(
        result=result, state=state, traceback=None, request=task.request
    )
    meta["task_id"] = job_id
    with backend.client.pipeline(transaction=False) as pipe:
        pipe.set(states.meta_key(job_id), json.dumps(meta), ex=backend.expires)
        if whose is not None:
            pipe.set(states.whose_key(job_id), whose, ex=states.DONE_TTL_S)
        pipe.eval(TAKE_OR_KEEP, 1, states.claim_key(job_id), owner, CLAIM_TTL_S)
        pipe.exists(states.cancel_key(job_id))
        return bool(pipe.execute()[-1])
