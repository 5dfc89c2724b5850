"""One narrow fix to kombu's Redis transport, so a worker outlives a Redis outage on its own.

The fault (kombu 5.7 with Celery 5.7, the versions pinned; the class of kombu#582 and #659):
when the connection to Redis is lost while a late-acked job runs, Celery's consumer
`collect()`s the connection, then closes it. `collect()` closes the channel first, but that
close can be cut short (it reads the dead socket while a BRPOP is in flight and raises), and
`collect()` then detaches the transport (`transport.client = None`). The second close, from
`connection.close()`, gets further: putting the running job's message back
(`restore_unacked_once`) builds a Redis client from `transport.client.hostname`, and raises
`AttributeError: 'NoneType' object has no attribute 'hostname'`. That is not one of the
transport's connection errors, so Celery reports an "Unrecoverable error" and the worker exits,
leaving queued jobs waiting for someone to restart it. (An idle worker, with nothing unacked,
reconnects fine.)

The fix: a channel whose transport was detached raises Redis's own `ConnectionError` when it is
asked for a client, which every caller on this path already treats as "Redis is away": the close
carries on and the consumer reconnects with the same node name and pool. Nothing is lost by not
putting the message back then (Redis is away; it could not be done): the message stays in
kombu's `unacked` set if Redis kept it and returns after the visibility timeout, the running job
stores its outcome on disk and in Redis when Redis answers (`tasks/base.py`), and that later
delivery replays the outcome instead of running again. The job's ack goes through its old
channel: it succeeds if that channel made a client before it was detached, and is otherwise
logged (`Couldn't ack`) and left to the same replay.

Flower has a second problem of its own (flower 2.2): its event receiver waits twice as long
after each failed try, without a cap, so after a five-minute outage it could stay blind for four
minutes more. Its pause is capped at `FLOWER_RETRY_MAX_S`.

Applied when `tasks.app` is imported: by `celery -A tasks worker` and `-A tasks flower` (whose
command module, and with it `flower.events`, is loaded before the app).
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

DETACHED = "the connection to Redis was closed (reconnecting)"
FLOWER_RETRY_MAX_S = 5.0


def apply() -> None:
    """Both fixes, each once; idempotent."""
    _fix_detached_channel()
    events = sys.modules.get("flower.events")
    if events is not None and not isinstance(getattr(events, "time", None), _CappedSleep):
        events.time = _CappedSleep()  # type: ignore[attr-defined]


class _CappedSleep:
    """`time` for flower.events: the same but for `sleep`, which never exceeds the cap."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, FLOWER_RETRY_MAX_S))


def _fix_detached_channel() -> None:
    channel = kombu_redis.Channel
    original = channel._connparams
    if getattr(original, "_taskd_fix", False):
        return

    @functools.wraps(original)
    def connparams(self: Any, asynchronous: bool = False) -> Any:
        if getattr(self.connection, "client", None) is None:
            raise redis.exceptions.ConnectionError(DETACHED)
        return original(self, asynchronous=asynchronous)

    connparams._taskd_fix = True  # type: ignore[attr-defined]
    channel._connparams = connparams  # type: ignore[method-assign]
