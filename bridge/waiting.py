"""Waiting for a task to end, the way a user at a terminal would: by reading its file.

`taskd submit --wait` writes the file, then looks at it every `interval` seconds until its state
is one that ends it (SUCCESS, FAILURE, REJECTED), the file is gone (deleted: cancelled), or the
time allowed has passed. The file is the only record: nothing is asked of Redis.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bridge.status import TaskFile, read_task_files
from taskd import states

SUCCEEDED, FAILED, TIMED_OUT = 0, 1, 2  # exit codes of `taskd submit --wait`
POLL_S = 0.2


@dataclass(frozen=True)
class Outcome:
    code: int
    task: TaskFile | None  # the file as last read; None when it is gone
    why: str


def look_once(
    task_queue: Path, user: str, task_id: str, task_type: str, max_bytes: int
) -> TaskFile | None:
    """The file of this task now, under whatever name it has: the newest of this task-id and
    type (a second file of the same task-id is rejected beside the first)."""
    mine = [
        task
        for task in read_task_files(task_queue, max_bytes, user)
        if task.task_id == task_id and task.name.endswith(f".{task_type}")
    ]
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
    while True:
        task = look_once(task_queue, user, task_id, task_type, max_bytes)
        done = ended(task)
        if done is not None:
            return done
        if deadline is not None and time.monotonic() >= deadline:
            state = task.state if task is not None else "unknown"
            return Outcome(TIMED_OUT, task, f"still {state} after {timeout:g} s")
        time.sleep(
            interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic()))
        )
