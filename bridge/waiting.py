"""Waiting for a task to end, the way a user at a terminal would: by reading its file.

`taskd submit --wait` writes the file, then looks at it every `interval` seconds until its state
is one that ends it (SUCCESS, FAILURE, REJECTED), the file is gone (deleted: cancelled), or the
time allowed has passed. The file is the only record: nothing is asked of Redis.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bridge import watch
from bridge.taskfiles import TaskFile, read_one
from taskd import states

SUCCEEDED, FAILED, TIMED_OUT = 0, 1, 2  # exit codes of `taskd submit --wait`
POLL_S = 0.2
GONE_AFTER = 2  # looks in a row that find no file before the task counts as cancelled


@dataclass(frozen=True)
class Outcome:
    code: int
    task: TaskFile | None  # the file as last read; None when it is gone
    why: str


def look_once(
    task_queue: Path, user: str, task_id: str, task_type: str, max_bytes: int, job_id: str | None
) -> TaskFile | None:
    """The file of this task now, under whatever name it has: of the files of this task-id and
    type, the one of `job_id` once it is known, else the newest. Only those files are read."""
    folder = task_queue / user
    mine = []
    for entry in watch.listed(folder):
        name = entry.name
        if not name.endswith(f".{task_type}") or not name.startswith(
            (f"{task_id}.", f"{task_id}-")
        ):
            continue
        task = read_one(user, entry, max_bytes)
        if task is not None and task.task_id == task_id:
            mine.append(task)
    if job_id is not None:
        ours = [t for t in mine if t.fields.get(states.JOB_ID) == job_id]
        if ours:
            return ours[0]
    return max(mine, key=lambda t: t.mtime, default=None)


def ended(task: TaskFile | None) -> Outcome | None:
    """What waiting ends with, once the file says so; None while it runs."""
    if task is None:
        return Outcome(FAILED, None, "the task file is gone (deleted: the task was cancelled)")
    if task.state == states.SUCCESS:
        return Outcome(SUCCEEDED, task, states.SUCCESS)
    if task.state in states.TERMINAL:
        return Outcome(FAILED, task, task.state)
    return None


def wait(
    task_queue: Path,
    user: str,
    task_id: str,
    task_type: str,
    max_bytes: int,
    timeout: float | None,
    interval: float = POLL_S,
) -> Outcome:
    """Look at the task's file until it ends or `timeout` seconds pass (None: no limit)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    job_id: str | None = None
    missing = 0
    while True:
        task = look_once(task_queue, user, task_id, task_type, max_bytes, job_id)
        if task is not None:
            missing = 0
            seen = task.fields.get(states.JOB_ID)
            job_id = seen if isinstance(seen, str) else job_id
        else:
            missing += 1  # gone only if two looks in a row miss it (a rename in between)
        done = ended(task) if task is not None or missing >= GONE_AFTER else None
        if done is not None:
            return done
        if deadline is not None and time.monotonic() >= deadline:
            state = task.state if task is not None else "unknown"
            return Outcome(TIMED_OUT, task, f"still {state} after {timeout:g} s")
        pause = interval if deadline is None else min(interval, deadline - time.monotonic())
        time.sleep(max(0.0, pause))
