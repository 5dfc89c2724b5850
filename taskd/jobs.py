"""What crosses the process boundary about one job, written and parsed only here.

- The job record, `taskd:job:<id>`: a hash the bridge writes when it publishes (who asked for
  the job and which retry was sent), read back by the bridge and by `taskd status`.
- Whose job it is, `taskd:whose:<id>`: `[user, task-id]`, written by the worker beside each
  state it stores, so that a Redis that restarted under a running job and lost the bridge's
  record still says whose task the job's state belongs to (`whose`, `parse_whose`).
- The result meta, `celery-task-meta-<id>`: Celery's JSON (`status`, `result`, `date_done`),
  whose `result` a taskd task fills with its progress, fields, worker and start time while it
  runs, when it ends, and when it waits for a retry.

Whatever is in Redis is parsed defensively: a field of the wrong kind reads as absent, never as
an exception in the reader.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from taskd import states

RECORD_STATUS = "status"
RECORD_ATTEMPT = states.JOB_ATTEMPT
RECORD_USER = "user"
RECORD_TASK_ID = "task-id"
RECORD_TYPE = "type"
RECORD_ROOT = "root"  # identity of the data root whose bridge published the job (taskd/roots.py)
MAX_COUNT = 1_000_000  # no retry count or percentage is larger; a larger one is garbage


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def count(value: object, default: int = 0) -> int:
    """A whole number from a field that should hold one (bounded, never negative)."""
    if isinstance(value, bool):
        return default
    if isinstance(value, float) and value == value and abs(value) < MAX_COUNT:
        value = int(value)
    if isinstance(value, str) and value.isdigit() and len(value) < 8:
        value = int(value)
    if not isinstance(value, int):
        return default
    return max(0, min(MAX_COUNT, value))


@dataclass(frozen=True)
class JobRecord:
    user: str
    task_id: str
    type: str
    status: str = states.JOB_PUBLISHING
    attempt: int = 0
    root: str = ""

    def mapping(self) -> dict[str, str | int]:
        return {
            RECORD_STATUS: self.status,
            RECORD_ATTEMPT: self.attempt,
            RECORD_USER: self.user,
            RECORD_TASK_ID: self.task_id,
            RECORD_TYPE: self.type,
            RECORD_ROOT: self.root,
        }

    @classmethod
    def parse(cls, raw: Mapping[Any, Any] | None) -> JobRecord | None:
        """From HGETALL's answer (bytes or text keys); None when there is no record."""
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return cls(
            user=fields.get(RECORD_USER) or "",
            task_id=fields.get(RECORD_TASK_ID) or "",
            type=fields.get(RECORD_TYPE) or "",
            status=fields.get(RECORD_STATUS) or "",
            attempt=count(fields.get(RECORD_ATTEMPT)),
            root=fields.get(RECORD_ROOT) or "",
        )


def whose(user: str, task_id: str) -> str:
    return json.dumps([user, task_id])


def parse_whose(raw: bytes | str | None) -> tuple[str, str] | None:
    """(user, task-id) from a `taskd:whose:<id>` value; None if absent or not one."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        return None
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return value[0], value[1]
    return None


def parse_meta(raw: bytes | str | None) -> dict[str, Any] | None:
    """A result meta as stored; None when absent or not a JSON object."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, TypeError, RecursionError):  # too deep a nesting too: no state
        return None
    return value if isinstance(value, dict) else None


def status(meta: Mapping[str, Any] | None) -> str | None:
    value = (meta or {}).get("status")
    return value if isinstance(value, str) else None


def result(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The meta's `result` when it is an object (a task's own report), else {}."""
    value = (meta or {}).get("result")
    return value if isinstance(value, dict) else {}


def fields(result_: Mapping[str, Any]) -> dict[str, Any]:
    value = result_.get(states.META_FIELDS)
    return value if isinstance(value, dict) else {}


def running(
    percent: int,
    fields_: Mapping[str, Any],
    worker: str,
    started_at: str,
    doing: Doing | None = None,
) -> dict[str, Any]:
    """The `result` of a running job's meta (state PROGRESS), with what it is doing, if said."""
    out = {
        states.META_PROGRESS: percent,
        states.META_FIELDS: dict(fields_),
        states.META_WORKER: worker,
        states.META_STARTED_AT: started_at,
    }
    if doing is not None:
        out.update(doing.meta())
    return out


@dataclass(frozen=True)
class Doing:
    """What a running task says it is doing: step `step` of `steps` (both or neither), and a few
    words (`searching 12/30 MB`)."""

    step: int | None = None
    steps: int | None = None
    text: str | None = None

    def meta(self) -> dict[str, Any]:
        return {
            states.META_STEP: self.step,
            states.META_STEPS: self.steps,
            states.META_TEXT: self.text,
        }

    def label(self) -> str:
        """`step 1/2: searching 12/30 MB`, `step 1/2`, or `searching 12/30 MB`."""
        head = f"step {self.step}/{self.steps}" if self.step and self.steps else ""
        if head and self.text:
            return f"{head}: {self.text}"
        return head or self.text or ""


def doing(result_: Mapping[str, Any]) -> Doing:
    """What a running job's meta says it is doing, each part only if it is believable."""
    step, steps = result_.get(states.META_STEP), result_.get(states.META_STEPS)
    text = result_.get(states.META_TEXT)
    if not (_count(step) and _count(steps) and step <= steps):  # type: ignore[operator]
        step = steps = None
    text = " ".join(_CONTROL.sub(" ", text).split()) if isinstance(text, str) else ""
    text = text[: states.PROGRESS_TEXT_MAX] or None
    return Doing(step, steps, text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**6


def finished(fields_: Mapping[str, Any], worker: str, started_at: str) -> dict[str, Any]:
    """The `result` of a job that succeeded: its worker and start time go with it, so a job
    that ends before the bridge ever saw it run still gets both in its file."""
    return running(100, fields_, worker, started_at)
