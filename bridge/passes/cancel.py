"""The cancel pass: jobs whose files the UI deleted are marked cancelled in Redis (durably, so
a worker that picks one up later drops it) and revoked where they run."""

from __future__ import annotations

from bridge.core import Core


def cancel_once(core: Core, now: float) -> None:
    if not core.pending_cancels:
        return
    ids = sorted(core.pending_cancels)

    def send() -> bool:
        core.publisher.cancel(ids)
        # Workers that hold the job stop at once; the durable key covers every other case.
        core.app.control.revoke(ids, terminate=True, signal="SIGUSR1")
        return True

    if not core.guard.ready("cancels", now):
        return
    if core.guard.run("cancels", "sending", now, lambda: core.redis.call(now, send)):
        core.pending_cancels.difference_update(ids)
