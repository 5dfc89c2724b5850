"""Mirroring: what a job's Celery state means for its task file.

`updates_for` is pure (meta in, file fields out); the bridge's loop reads every active job's meta
in one round trip per tick and writes only the files whose fields changed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from taskd import states

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
    except ValueError:
        return value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def error_text(result: object) -> str:
    """A failure's message as the worker raised it; never a traceback."""
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
    fields = result.get(states.META_FIELDS)
    if not isinstance(fields, dict):
        return {}
    return {k: v for k, v in fields.items() if k not in states.BRIDGE_FIELDS}


def _running(meta_result: Any, current: dict[str, Any], now_iso: str) -> dict[str, Any]:
    result = meta_result if isinstance(meta_result, dict) else {}
    worker = result.get(states.META_WORKER) or result.get("hostname")
    progress = result.get(states.META_PROGRESS, current.get(states.PROGRESS_FIELD, 0))
    return {
        states.PROGRESS_FIELD: max(0, min(99, int(progress or 0))),
        states.STARTED_AT: current.get(states.STARTED_AT)
        or result.get(states.META_STARTED_AT)
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
    status = meta.get("status")
    result = meta.get("result")
    finished = _iso(meta.get("date_done")) or now_iso
    if status in (states.STARTED, states.PROGRESS):
        return {states.STATE: status, **_running(result, current, now_iso)}
    if status == states.SUCCESS:
        fields = _task_fields(result) if isinstance(result, dict) else {}
        return {
            states.STATE: states.SUCCESS,
            states.PROGRESS_FIELD: 100,
            states.STARTED_AT: current.get(states.STARTED_AT) or finished,
            states.FINISHED_AT: finished,
            states.RETRY_AT: None,
            states.ERROR: None,
            **fields,
        }
    if status == states.RETRY:
        info = result if isinstance(result, dict) else {}
        return {
            states.STATE: states.RETRY,
            states.RETRIES: info.get("retries"),
            states.RETRY_AT: info.get("retry-at"),
            states.ERROR: info.get("error") or error_text(result),
        }
    if status == states.FAILURE:
        error = error_text(result)
        return {
            states.STATE: states.FAILURE,
            states.FINISHED_AT: finished,
            states.RETRY_AT: None,
            states.ERROR: error,
        }
    return {}
