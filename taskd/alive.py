"""Each worker says it is alive: its node name scored by the time, in one sorted set, every few
seconds from a thread of its main process. The bridge counts the names heard from lately
(`taskd_workers_alive` on /metrics), so a monitor sees a site with no worker without asking
Celery (which costs every worker a ping)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from taskd import states

log = logging.getLogger(__name__)


def beat_once(client: Any, name: str, now: float) -> None:
    with client.pipeline(transaction=False) as pipe:
        pipe.zadd(states.KEY_WORKERS, {name: now})
        # Names not heard from for an hour go: the set holds the workers of the last hour.
        pipe.zremrangebyscore(states.KEY_WORKERS, "-inf", now - 3600)
        pipe.execute()


def start(client: Any, name: str, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        while True:
            try:
                beat_once(client, name, time.time())
            except Exception as exc:  # noqa: BLE001 - Redis away: the next beat tries again
                log.debug("worker %s: beat not written: %s", name, exc)
            if stop.wait(states.WORKER_BEAT_S):
                return

    thread = threading.Thread(target=run, name="taskd-alive", daemon=True)
    thread.start()
    return thread


def count(client: Any, now: float) -> int:
    """The workers heard from within WORKER_ALIVE_S."""
    return int(client.zcount(states.KEY_WORKERS, now - states.WORKER_ALIVE_S, "+inf"))
