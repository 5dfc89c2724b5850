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
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bridge import schedule
from bridge.model import Tracked
from bridge.schedule import Known
from taskd import caps, states
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
    counted: bool = False  # a count of every job was made: until then a capped type waits
    # Files found at start, not yet resumed: their running jobs are not counted until they are.
    backlog: set[Path] | None = None
    # The jobs of the last count that wait for a slot, by type: a job taken since (by intake
    # between ticks) waits behind them.
    waiting: dict[str, int] = field(default_factory=dict)
    counted_ids: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Read the caps file again if it changed; a bad one is logged once and the caps stay
        as they were (the schemas' when it is bad from the start)."""
        sig = caps.signature(self.data_root)
        if sig == self.seen:
            return
        first, self.seen = self.seen is False, sig
        try:
            overrides = caps.read(self.data_root) if sig is not None else {}
        except caps.CapsError as exc:
            log.error("%s; the caps stay as they were", exc)
            if not first:
                return
            overrides = {}
        limits = caps.effective(self.types, overrides)
        if limits != self.limits:
            log.info("caps per type now: %s", _shown(limits))
        self.limits = limits

    def recount(self, jobs: Iterable[tuple[Tracked, Known]], pending: Container[Path]) -> None:
        """Count the slots held, from what Redis says of every tracked job; `pending` are the
        files intake has yet to take or resume."""
        self.held = {}
        if self.backlog is not None:
            self.backlog = {path for path in self.backlog if path in pending}
            if not self.backlog:
                self.backlog = None
        if not self.limits:
            self.used, self.waiting, self.counted_ids = {}, {}, set()
            self.counted = self.backlog is None
            return
        used: dict[str, int] = {}
        waiting: dict[str, int] = {}
        ids: set[str] = set()
        for task, known in jobs:
            name = task.type.name
            if name not in self.limits:
                continue
            ids.add(task.job_id)
            if schedule.holds_slot(task.fields, known):
                used[name] = used.get(name, 0) + 1
            elif task.state in states.ACTIVE:
                waiting[name] = waiting.get(name, 0) + 1
        self.used, self.waiting, self.counted_ids = used, waiting, ids
        self.counted = self.backlog is None

    def admit(self, task: Tracked, holding: bool = False) -> bool:
        """Take a slot for the job about to be published, or keep it back. A job `holding` one
        already (sent again after a crash between recording and sending) keeps it."""
        name = task.type.name
        cap = self.limits.get(name)
        if cap is None or (holding and self.counted):
            return True
        behind = task.job_id not in self.counted_ids and self.waiting.get(name, 0) > 0
        if not self.counted or behind or self.used.get(name, 0) >= cap:
            self.held[name] = self.held.get(name, 0) + 1
            return False
        self.used[name] = self.used.get(name, 0) + 1
        if task.job_id in self.counted_ids and self.waiting.get(name, 0) > 0:
            self.waiting[name] -= 1
        return True

    def summary(self) -> dict[str, dict[str, int]]:
        """Each capped type's cap, slots held and jobs kept back."""
        return {
            name: {"cap": cap, "running": self.used.get(name, 0), "held": self.held.get(name, 0)}
            for name, cap in sorted(self.limits.items())
        }


def _shown(limits: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(limits.items())) or "none"
