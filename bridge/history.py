"""What the status page draws over time, kept in memory and bounded: the last hour a minute a
bucket (files taken, tasks that succeeded, failed or were rejected, tasks waiting, the worst
mirror lag), and the last tasks that ended with what they said. Lost at a restart, like the
counters: the files keep the history that matters.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

MINUTES = 60
ENDED_KEPT = 200
TEXT_MAX = 300  # an error or description kept for the page is cut to this many characters


@dataclass
class Minute:
    at: int  # minutes since the epoch
    taken: int = 0
    succeeded: int = 0
    failed: int = 0
    rejected: int = 0
    waiting: int = 0
    lag: float = 0.0


@dataclass(frozen=True)
class Ended:
    ended_at: float
    user_id: str
    task_id: str
    type: str
    state: str
    error: str = ""
    description: str = ""
    worker: str = ""


def cut(value: object) -> str:
    return value[:TEXT_MAX] if isinstance(value, str) else ""


class History:
    """Not thread-safe by itself: `bridge.metrics.Metrics` holds it under its lock."""

    def __init__(self) -> None:
        self.minutes: deque[Minute] = deque(maxlen=MINUTES)
        self.ended: deque[dict[str, Any]] = deque(maxlen=ENDED_KEPT)  # made once, read often

    def _minute(self, wall: float) -> Minute:
        at = int(wall // 60)
        if not self.minutes or self.minutes[-1].at < at:
            self.minutes.append(Minute(at))
        return self.minutes[-1]

    def count(self, what: str, wall: float, n: int = 1) -> None:
        minute = self._minute(wall)
        setattr(minute, what, getattr(minute, what) + n)

    def level(self, waiting: int, wall: float) -> None:
        self._minute(wall).waiting = waiting

    def lag(self, lag: float, wall: float) -> None:
        """The worst mirror lag seen in the minute: before each tick, and whenever asked."""
        minute = self._minute(wall)
        minute.lag = max(minute.lag, round(lag, 2))

    def task_ended(self, ended: Ended) -> None:
        self.ended.append(asdict(ended))

    def last_hour(self, wall: float) -> list[dict[str, Any]]:
        """Each of the last MINUTES minutes, oldest first; a minute nothing happened in is 0."""
        now = int(wall // 60)
        kept = {m.at: m for m in self.minutes}
        return [asdict(kept.get(at) or Minute(at)) for at in range(now - MINUTES + 1, now + 1)]

    def recent(self) -> list[dict[str, Any]]:
        """The tasks that ended last, newest first."""
        return list(reversed(self.ended))
