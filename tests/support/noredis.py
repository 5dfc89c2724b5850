"""A Redis client for unit tests of the bridge's passes with Redis away (intake and rejection
need none): every call fails as a refused connection would."""

from __future__ import annotations

from typing import Any

import redis


class NoRedis:
    def pipeline(self, **_: Any) -> Any:
        raise redis.exceptions.ConnectionError("connection refused")
