"""Mirroring: what a job's Celery state means for its task file.

`updates_for` is pure (meta in, file fields out); the bridge's loop reads every active job's meta
in one round trip per tick and writes only the files whose fields changed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bridge.contract import bounded
from taskd import jobs, states

STOPPED_ERROR = (
    "stopped {n} times before it could finish (its worker was killed, or it was revoked); "
    "delete the file to cancel it, or run `taskd retry` on it to try once more"
)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _iso(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (ValueError, OverflowError):
        return value[:40]


def error_text(result: object) -> str:
    """A failure's message as the worker raised it; never a traceback, never endless."""
    return bounded(_error_text(result))


def _error_text(result: object) -> str:
    if isinstance(result, dict):
        message = result.get("exc_message")
        if isinstance(message, list | tuple):
            text = " ".join(str(m) for m in message)
        else:
            text = str(message or "")
        kind = str(result.get("exc_type") or "error")
        if kind in ("TaskFailed", "Retryable"):
            return text or "failed"
        return f"{kind}: {text}" if text else kind
    return str(result or "failed")


def _task_fields(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in jobs.fields(result).items() if k not in states.BRIDGE_FIELDS}


def _text_of(result: dict[str, Any], key: str) -> str | None:
    value = result.get(key)
    return value if isinstance(value, str) and value else None


NO_STEP = dict.fromkeys(states.STEP_FIELDS)
"""What a task that stopped running no longer says it is doing (the fields are dropped)."""


def _running(result: dict[str, Any], current: dict[str, Any], now_iso: str) -> dict[str, Any]:
    worker = _text_of(result, states.META_WORKER) or _text_of(result, "hostname")
    progress = result.get(states.META_PROGRESS, current.get(states.PROGRESS_FIELD, 0))
    doing = jobs.doing(result)
    return {
        states.PROGRESS_FIELD: min(99, jobs.count(progress)),
        states.PROGRESS_STEP: doing.step,
        states.PROGRESS_STEPS: doing.steps,
        states.PROGRESS_TEXT: doing.text,
        states.STARTED_AT: current.get(states.STARTED_AT)
        or _iso(result.get(states.META_STARTED_AT))
        or now_iso,
        states.WORKER: worker or current.get(states.WORKER),
        states.RETRY_AT: None,
        states.ERROR: None,
        **_task_fields(result),
    }


def updates_for(
    meta: dict[str, Any] | None, current: dict[str, Any], now_iso: str
) -> dict[str, Any]:
    """File fields implied by a job's backend meta; empty while it waits in the queue."""
    if not meta:
        return {}
    status = jobs.status(meta)
    result = jobs.result(meta)
    finished = _iso(meta.get("date_done")) or now_iso
    if status in (states.STARTED, states.PROGRESS):
        return {states.STATE: status, **_running(result, current, now_iso)}
    if status == states.SUCCESS:
        fields = _task_fields(result)
        return {
            states.STATE: states.SUCCESS,
            states.PROGRESS_FIELD: 100,
            states.STARTED_AT: current.get(states.STARTED_AT)
            or _iso(result.get(states.META_STARTED_AT))
            or finished,
            states.WORKER: current.get(states.WORKER) or _text_of(result, states.META_WORKER),
            states.FINISHED_AT: finished,
            states.RETRY_AT: None,
            states.ERROR: None,
            **NO_STEP,
            **states.GONE_WHEN_ENDED,
            **fields,
        }
    if status == states.RETRY:
        return {
            states.STATE: states.RETRY,
            states.RETRIES: jobs.count(result.get(states.META_RETRIES)),
            states.RETRY_AT: _text_of(result, states.META_RETRY_AT),
            states.ERROR: _text_of(result, states.META_ERROR) or error_text(meta.get("result")),
            **NO_STEP,
        }
    if status == states.FAILURE:
        error = error_text(meta.get("result"))
        return {
            states.STATE: states.FAILURE,
            states.FINISHED_AT: finished,
            states.RETRY_AT: None,
            states.ERROR: error,
            **NO_STEP,
            **states.GONE_WHEN_ENDED,
        }
    return {}
