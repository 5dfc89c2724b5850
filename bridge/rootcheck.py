"""The bridge's check that its Redis db serves its data root (taskd/roots.py), once a second.

Before the first pass and then every tick: a db that serves no root is claimed; one that serves
another root stops the bridge before it publishes, mirrors or cancels anything there. Redis away
decides nothing: the check is made again when it answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from taskd import roots
from taskd.settings import Settings

CHECK_EVERY_S = 1.0


@dataclass
class RootCheck:
    settings: Settings
    client: Any
    ident: str
    due: float = 0.0

    def check_once(self, now: float) -> None:
        """Raise RootConflict when the db serves another data root."""
        if now < self.due:
            return
        self.due = now + CHECK_EVERY_S
        try:
            other = roots.claim(self.client, self.settings.data_root, self.ident)
        except redis.exceptions.RedisError:
            return  # Redis away: the loop's own guard reports it
        if other is not None:
            raise roots.conflict(self.settings.redis_url, self.settings.data_root, other)
