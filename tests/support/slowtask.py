"""SLOW: a task type of the tests' own, so the bridge is tested without RETRMS or PACKMS.

Each run appends its job id to `<data-root>/runs.log`, so tests can count how often a job ran.
"""

from __future__ import annotations

import os
import time
from typing import Any

from tasks.app import app
from tasks.base import Job, TaskdTask
from tasks.errors import Retryable, TaskFailed


def _log_run(job: Job, what: str = "") -> None:
    line = f"{job.job_id} {job.task_id}{what}\n".encode()
    fd = os.open(job.settings.data_root / "runs.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@app.task(base=TaskdTask, name="tests.support.slowtask.run")
def run(job: Job) -> dict[str, Any]:
    _log_run(job)
    steps = int(job.fields.get("steps", 3))
    pause = float(job.fields.get("step-seconds", 0.1))
    with job.work_dir() as tmp:
        (tmp / "partial").write_text("work in progress")
        job.progress(0, force=True, **{"tmp-space": str(tmp)})
        if job.fields.get("hang"):
            time.sleep(3600)
        for step in range(steps):
            time.sleep(pause)
            job.progress(
                100 * (step + 1) / max(steps, 1),
                detail=f"sleeping {pause:g} s",
                step=step + 1,
                steps=steps,
            )
        if job.fields.get("fail"):
            raise TaskFailed(str(job.fields["fail"]))
        unless = job.fields.get("fail-unless")
        if unless and not os.path.exists(str(unless)):
            raise TaskFailed(f"{unless} does not exist yet")
        if int(job.extra.get("retries") or 0) < int(job.fields.get("flaky", 0)):
            raise Retryable("the test store timed out")
    _log_run(job, f" end {time.time():.3f}")
    return {"tmp-space": None, "steps-done": steps}
