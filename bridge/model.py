"""The tasks the bridge has taken and still mirrors, by job id and by current path."""

from __future__ import annotations

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


@dataclass
class Table:
    by_job: dict[str, Tracked] = field(default_factory=dict)
    by_path: dict[Path, Tracked] = field(default_factory=dict)

    def add(self, task: Tracked) -> Tracked | None:
        """Track `task`; the task it replaces (same job id), if any."""
        old = self.by_job.get(task.job_id)
        if old is not None:
            self.by_path.pop(old.path, None)
        self.by_job[task.job_id] = task
        self.by_path[task.path] = task
        return old if old is not task else None

    def move(self, task: Tracked, new_path: Path) -> None:
        self.by_path.pop(task.path, None)
        task.path = new_path
        self.by_path[new_path] = task

    def drop(self, task: Tracked) -> None:
        self.by_job.pop(task.job_id, None)
        if self.by_path.get(task.path) is task:
            del self.by_path[task.path]
