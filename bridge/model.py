"""The tasks the bridge has taken and still mirrors, by job id and by current path."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.files import Spare
from taskd import states
from taskd.tasktypes import TaskType


@dataclass
class Tracked:
    user: str
    task_id: str
    type: TaskType
    path: Path
    fields: dict[str, Any]
    published: bool = False
    last_write: float = float("-inf")
    written: tuple[int, int, int, int] | None = None  # the file's signature after our last write
    extra: dict[str, Any] = field(default_factory=dict)  # more for the worker (notify: who)
    spare: Spare | None = None  # the file's last content, to take its next (files.Spare)
    name_blocked: int = 0  # a name it should take was in the way: 1 said while running, 2 ended

    @property
    def job_id(self) -> str:
        return str(self.fields[states.JOB_ID])

    @property
    def state(self) -> str:
        return str(self.fields[states.STATE])

    def spec(self) -> dict[str, Any]:
        """What the worker receives: the task's own fields, without the bridge's bookkeeping."""
        own = {k: v for k, v in self.fields.items() if k not in states.BRIDGE_FIELDS}
        return {
            "type": self.type.name,
            "user-id": self.user,
            "task-id": self.task_id,
            "fields": own,
            **self.extra,
        }


WRITTEN_SLACK = 1024
"""Stale entries `Table.written` may hold beyond twice the tasks before it is compacted."""

Written = tuple[float, int, str, Tracked]
"""A task's last write: when, a tie-breaking count, its job id, the task (`Table.written`)."""


@dataclass
class Table:
    by_job: dict[str, Tracked] = field(default_factory=dict)
    by_path: dict[Path, Tracked] = field(default_factory=dict)
    written: list[Written] = field(default_factory=list)
    """A heap of the tasks by their last write, oldest first, so the files the rate rule frees
    are found without looking at every task: an entry stands while its task is tracked and
    not written since (`current`); others are dropped as they come to the top."""
    _count: itertools.count[int] = field(default_factory=itertools.count)
    _latest: dict[str, int] = field(default_factory=dict)  # job id -> its entry's count

    def add(self, task: Tracked) -> Tracked | None:
        """Track `task`; the task it replaces (same job id), if any."""
        old = self.by_job.get(task.job_id)
        if old is not None:
            self.by_path.pop(old.path, None)
        self.by_job[task.job_id] = task
        self.by_path[task.path] = task
        self.wrote(task)
        return old if old is not task else None

    def wrote(self, task: Tracked, now: float | None = None) -> None:
        """`task`'s file was written at `now` (its `last_write`), or it is new (`now` None)."""
        if now is not None:
            task.last_write = now
        written = self.written
        if len(written) > 2 * len(self.by_job) + WRITTEN_SLACK:  # stale ones never outgrow it
            written[:] = [entry for entry in written if self.current(entry)]
            heapq.heapify(written)
        count = next(self._count)
        self._latest[task.job_id] = count
        heapq.heappush(written, (task.last_write, count, task.job_id, task))

    def current(self, entry: Written) -> bool:
        """Whether `entry` is its task's last write (one entry a task), the task still tracked."""
        _, count, job_id, task = entry
        return self._latest.get(job_id) == count and self.by_job.get(job_id) is task

    def move(self, task: Tracked, new_path: Path) -> None:
        self.by_path.pop(task.path, None)
        task.path = new_path
        self.by_path[new_path] = task

    def drop(self, task: Tracked) -> None:
        self.by_job.pop(task.job_id, None)
        self._latest.pop(task.job_id, None)
        if self.by_path.get(task.path) is task:
            del self.by_path[task.path]
