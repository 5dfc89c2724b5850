"""A job's final outcome kept on disk, so it outlives a Redis outage or a Redis that lost it.

`<data-root>/.taskd/done/<job-id[:2]>/<job-id>` holds `{"state": ..., "result" | "error": ...}`,
written durably by the worker before it tells Redis. A later delivery of the job (redelivered
after a worker died, or published again after Redis came back empty) finds it here and replays
the outcome instead of redoing the work; `taskd retry` finds it here and restores a finished
job's outcome instead of running it a second time. Kept as long as Redis keeps outcomes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from taskd import names, states
from taskd.atomic import write_atomic

log = logging.getLogger(__name__)

DONE_DIR = "done"
MAX_OUTCOME_BYTES = 1 << 20
"""An outcome holds a job's few result fields; anything larger was not written by taskd."""
SWEEP_EVERY_S = 3600.0
_swept: dict[Path, float] = {}


def _path(data_root: Path, job_id: str) -> Path | None:
    """Where the outcome of `job_id` lives; None for an id taskd never makes (no path tricks)."""
    try:
        canonical = str(uuid.UUID(job_id))
    except (ValueError, TypeError, AttributeError):
        return None
    if canonical != job_id:
        return None
    return data_root / names.PRIVATE_DIR / DONE_DIR / job_id[:2] / job_id


def record(state: str, result: Any) -> dict[str, Any]:
    """The outcome as kept in Redis and on disk."""
    if state == states.FAILURE:
        return {"state": state, "error": str(result)}
    return {"state": state, "result": result}


def keep(data_root: Path, job_id: str, outcome: dict[str, Any]) -> bool:
    """Write the outcome durably; False (logged) when it cannot be, or the id is not taskd's."""
    path = _path(data_root, job_id)
    if path is None:
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        write_atomic(path, json.dumps(outcome).encode("utf-8"), mode=0o640)
    except OSError as exc:
        log.warning("job %s: cannot keep its outcome on disk (%s)", job_id, exc)
        return False
    _sweep_now_and_then(path.parent.parent)
    return True


def find(data_root: Path, job_id: str) -> dict[str, Any] | None:
    """The outcome kept for `job_id`, or None (none kept, or not one taskd wrote)."""
    path = _path(data_root, job_id)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read(MAX_OUTCOME_BYTES + 1)
    return parse(raw)


def parse(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None or len(raw) > MAX_OUTCOME_BYTES:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("state") not in (states.SUCCESS, states.FAILURE):
        return None
    return value


def _sweep_now_and_then(folder: Path) -> None:
    """Remove outcomes older than Redis keeps them (at most once an hour per process)."""
    now = time.monotonic()
    if now - _swept.get(folder, -SWEEP_EVERY_S) < SWEEP_EVERY_S:
        return
    _swept[folder] = now
    cutoff = time.time() - states.DONE_TTL_S
    with contextlib.suppress(OSError):
        for bucket in os.scandir(folder):
            if not bucket.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(bucket.path):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
