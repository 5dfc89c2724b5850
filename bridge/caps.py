"""The caps per type, kept by the active bridge: it publishes a capped type's job only while
fewer than its cap hold a slot; the others wait unpublished, QUEUED in their files.

A slot is not a worker's: a job holds one from its publication until its attempt ends, counted
afresh from Redis at every mirror tick (`schedule.holds_slot`). Nothing is taken that could
leak: a job whose worker is killed keeps its slot while it is run again, and gives it back when
it ends however it ends (or when its file is deleted). Between ticks a slot handed out counts at
once; one given back counts from the next tick. Workers need no change for a new cap, and a
standby bridge that takes over counts the same from Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bridge import schedule
from bridge.model import Tracked
from bridge.schedule import Known
from taskd import caps
from taskd.tasktypes import TaskType

log = logging.getLogger(__name__)


@dataclass
class Caps:
    data_root: Path
    types: Mapping[str, TaskType]
    limits: dict[str, int] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)  # slots held, by type
    held: dict[str, int] = field(default_factory=dict)  # jobs kept back since the last count
    seen: object = False  # the caps file's signature when last read (False: never read)
    counted: bool = False  # a first count was made: until then a capped type waits

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Read the caps file again if it changed; a bad one is logged once and the caps stay
        as they were."""
        sig = caps.signature(self.data_root)
        if sig == self.seen:
            return
        self.seen = sig
        try:
            overrides = caps.read(self.data_root) if sig is not None else {}
        except caps.CapsError as exc:
            log.error("%s; the caps stay as they were", exc)
            return
        limits = caps.effective(self.types, overrides)
        if limits != self.limits:
            log.info("caps per type now: %s", _shown(limits))
        self.limits = limits

    def recount(self, jobs: Iterable[tuple[Tracked, Known]]) -> None:
        """Count the slots held, from what Redis says of every tracked job."""
        self.held, self.counted = {}, True
        if not self.limits:
            self.used = {}
            return
        used: dict[str, int] = {}
        for task, known in jobs:
            name = task.type.name
            if name in self.limits and schedule.holds_slot(task.fields, known):
                used[name] = used.get(name, 0) + 1
        self.used = used

    def admit(self, task: Tracked) -> bool:
        """Take a slot for the job about to be published, or keep it back."""
        name = task.type.name
        cap = self.limits.get(name)
        if cap is None:
            return True
        if not self.counted or self.used.get(name, 0) >= cap:
            self.held[name] = self.held.get(name, 0) + 1
            return False
        self.used[name] = self.used.get(name, 0) + 1
        return True

    def summary(self) -> dict[str, dict[str, int]]:
        """For status and the page: each capped type's cap, slots held and jobs kept back."""
        return {
            name: {"cap": cap, "running": self.used.get(name, 0), "held": self.held.get(name, 0)}
            for name, cap in sorted(self.limits.items())
        }


def _shown(limits: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(limits.items())) or "none"
