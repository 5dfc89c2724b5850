"""NOOP: the benchmarks' own task type, whose body does nothing, so a run measures taskd's cost.

`bare` is the same nothing as a plain Celery task, without taskd's task class (claim, outcome,
heartbeat), for reference.
"""

from __future__ import annotations

from typing import Any

from tasks.app import app
from tasks.base import Job, TaskdTask


@app.task(base=TaskdTask, name="bench.nooptask.run")
def run(job: Job) -> dict[str, Any]:
    return {}


@app.task(name="bench.nooptask.bare")
def bare() -> None:
    return None
