"""One active bridge per data root: a standby waits, and takes over when the active one dies.

Two locks: a local `flock` on `<data-root>/.taskd-bridge.lock` (two bridges on one host), and a
Redis lease named after the data root (bridges on several hosts sharing it over NFS). The active
bridge renews the lease every second from a thread of its own, so a long pass of its loop cannot
let it lapse; if another bridge holds it (Redis came back empty and the standby won), the active
one stops at once. A standby polls twice a second and takes over within the lease's 3 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import threading
import uuid
from pathlib import Path
from typing import IO, Any

import redis

from taskd.leases import RELEASE, TAKE_OR_KEEP

log = logging.getLogger(__name__)

LEASE_TTL_S = 3
RENEW_EVERY_S = 1.0
POLL_S = 0.5
LOCK_NAME = ".taskd-bridge.lock"


def lease_key(data_root: Path) -> str:
    digest = hashlib.sha1(str(data_root.resolve()).encode()).hexdigest()[:16]
    return f"taskd:bridge:{digest}"


class Leadership:
    def __init__(self, client: Any, data_root: Path) -> None:
        self.client = client
        self.data_root = data_root
        self.key = lease_key(data_root)
        self.token = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self._lock_file: IO[str] | None = None
        self.lost = threading.Event()

    def _try_flock(self) -> bool:
        if self._lock_file is None:
            self.data_root.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.data_root / LOCK_NAME, "a")  # noqa: SIM115 - held for life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _try_lease(self) -> bool:
        try:
            return bool(self.client.eval(TAKE_OR_KEEP, 1, self.key, self.token, LEASE_TTL_S))
        except redis.exceptions.RedisError as exc:
            log.debug("lease not taken: %s", exc)
            return False

    def acquire(self, stop: threading.Event) -> bool:
        """Wait until this bridge may act on the data root (or `stop` is set)."""
        waiting = False
        while not stop.is_set():
            if self._try_flock() and self._try_lease():
                if waiting:
                    log.warning("taking over as the active bridge of %s", self.data_root)
                return True
            if not waiting:
                log.warning("another bridge is active on %s: standing by", self.data_root)
                waiting = True
            stop.wait(POLL_S)
        return False

    def keep(self, stop: threading.Event) -> threading.Thread:
        """Renew the lease every second; on losing it to another bridge, set `stop`."""

        def renew() -> None:
            while not stop.wait(RENEW_EVERY_S):
                try:
                    held = self.client.eval(TAKE_OR_KEEP, 1, self.key, self.token, LEASE_TTL_S)
                except redis.exceptions.RedisError:
                    continue  # Redis away: nobody else can take the lease either
                if not held:
                    log.error("another bridge took over %s: stopping", self.data_root)
                    self.lost.set()
                    stop.set()

        thread = threading.Thread(target=renew, name="bridge-lease", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        with contextlib.suppress(redis.exceptions.RedisError):
            self.client.eval(RELEASE, 1, self.key, self.token)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
