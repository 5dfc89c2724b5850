"""One active bridge per data root: a standby waits, and takes over when the active one dies.

Two locks: a local `flock` on `<data-root>/.taskd-bridge.lock` (two bridges on one host), and a
Redis lease named after the data root (bridges on several hosts sharing it over NFS). The active
bridge renews the lease every second from a thread of its own, so a long pass of its loop cannot
let it lapse; if another bridge holds it (Redis came back empty and the standby won), the active
one stops at once. A standby polls twice a second and takes over within the lease's 3 s.

A standby says why it waits, at WARNING and once per change of reason: another bridge holds the
lease (named by its token, host/pid/...), or Redis cannot be asked and why (nothing answers, a
password it refuses, a port that does not speak Redis). The reason also goes to `Metrics`, so
/healthz names it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import socket
import threading
import uuid
from pathlib import Path
from typing import IO, Any

import redis

from bridge.metrics import Metrics
from taskd.leases import RELEASE, TAKE_OR_KEEP
from taskd.settings import redact_url

log = logging.getLogger(__name__)

LEASE_TTL_S = 3
RENEW_EVERY_S = 1.0
POLL_S = 0.5
LOCK_NAME = ".taskd-bridge.lock"
URL_HINT = "set it in TASKD_REDIS_URL as redis://:PASSWORD@host:port/db"
PORT_HINT = "is TASKD_REDIS_URL pointing at the right port?"
DETAIL_MAX = 80

# What redis-py says of a socket error, less the host: "Error 111 connecting to host:6379.
# Connection refused." and "Error while reading from host:6379 : (104, 'Connection reset by
# peer')" -> "Connection refused", "Connection reset by peer"
_SOCKET_ERRORS = (
    re.compile(r"^Error -?\d+ connecting to .*?\. (?P<why>.+?)\.?$"),
    re.compile(r"^Error while \w+ (?:from|to) .*\(-?\d+, '(?P<why>[^']+)'\)$"),
)

Why = tuple[str, str]
"""Why a standby waits: a kind (a change of it is logged) and the sentence for people."""


def lease_key(data_root: Path) -> str:
    digest = hashlib.sha1(str(data_root.resolve()).encode()).hexdigest()[:16]
    return f"taskd:bridge:{digest}"


def _detail(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 1] + "…"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _socket_error(exc: BaseException) -> str:
    for pattern in _SOCKET_ERRORS:
        match = pattern.match(str(exc))
        if match:
            return _lower_first(match.group("why"))
    return _detail(exc)


def explain(exc: redis.exceptions.RedisError, url: str) -> Why:
    """What a Redis error says about TASKD_REDIS_URL, in words an operator can act on.
    `url` must already be redacted."""
    text = str(exc)
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return "auth", (
            f"Redis at {url} refused the password (or needs one): {URL_HINT} "
            f"(Redis said: {_detail(exc)})"
        )
    if isinstance(exc, redis.exceptions.BusyLoadingError):
        return "loading", f"Redis at {url} is still loading its data into memory"
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return "replica", (
            f"Redis at {url} is a read-only replica: point TASKD_REDIS_URL at its master"
        )
    if isinstance(exc, redis.exceptions.InvalidResponse) or "Protocol error" in text:
        answer = text.split(":", 1)[1].strip() if ":" in text else text
        return "not-redis", (
            f"what answers at {url} does not speak the Redis protocol: {PORT_HINT} "
            f"(it answered {_detail(Exception(answer))})"
        )
    if isinstance(exc, redis.exceptions.ConnectionError) and "closed by server" in text:
        return "not-redis", (
            f"what answers at {url} does not speak the Redis protocol: {PORT_HINT} "
            "(it closed the connection without a Redis answer)"
        )
    if isinstance(exc, redis.exceptions.TimeoutError):
        if "reading" in text:
            return "timeout", (
                f"no Redis answers at {url}: timed out (a connection opened, but no answer "
                f"came: {PORT_HINT})"
            )
        return "timeout", f"no Redis answers at {url}: timed out"
    if isinstance(exc, redis.exceptions.ConnectionError):
        return "down", f"no Redis answers at {url}: {_socket_error(exc)}"
    return "refused", f"Redis at {url} refused the bridge's lease: {_detail(exc)}"


def _client_url(client: Any) -> str:
    """A Redis URL for messages when none was given: the client's own host, port and db."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


class Leadership:
    def __init__(
        self,
        client: Any,
        data_root: Path,
        url: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.client = client
        self.data_root = data_root
        self.key = lease_key(data_root)
        self.token = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.url = redact_url(url) if url else _client_url(client)
        self.metrics = metrics
        self._lock_file: IO[str] | None = None
        self._waiting: str | None = None  # the kind of the reason last logged
        self.lost = threading.Event()
        if metrics is not None:
            metrics.standby(f"starting: not yet the active bridge of {data_root}")

    def _try_flock(self) -> bool:
        if self._lock_file is None:
            self._lock_file = open(self.data_root / LOCK_NAME, "a")  # noqa: SIM115 - held for life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _redis_seen(self, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.redis_seen(ok)

    def _holder(self) -> str | None:
        """The token of the bridge holding the lease (host/pid/...), None if nobody does."""
        holder = self.client.get(self.key)
        return holder.decode(errors="replace") if isinstance(holder, bytes) else holder

    def _local_holder(self) -> Why:
        """Another bridge on this host holds the lock file: name it if Redis can say."""
        try:
            holder = self._holder()
            self._redis_seen(True)
        except redis.exceptions.RedisError:
            holder = None
            self._redis_seen(False)
        who = f" ({holder})" if holder else ""
        return f"flock:{holder}", (
            f"another bridge{who} on this host is active on {self.data_root} "
            f"(it holds {self.data_root / LOCK_NAME})"
        )

    def try_once(self) -> Why | None:
        """One try at both locks: None when this bridge holds them, else why it must wait."""
        if not self._try_flock():
            return self._local_holder()
        try:
            if self.client.eval(TAKE_OR_KEEP, 1, self.key, self.token, LEASE_TTL_S):
                self._redis_seen(True)
                return None
            holder = self._holder()
        except redis.exceptions.RedisError as exc:
            self._redis_seen(False)
            return explain(exc, self.url)
        self._redis_seen(True)
        who = holder or "just gone"
        return f"held:{holder}", f"another bridge ({who}) is active on {self.data_root}"

    def acquire_once(self) -> bool:
        """Try once; log (and report) why this bridge waits when that changed."""
        why = self.try_once()
        if why is None:
            if self._waiting is not None:
                log.warning("taking over as the active bridge of %s", self.data_root)
            self._waiting = None
            if self.metrics is not None:
                self.metrics.active()
            return True
        kind, text = why
        if kind != self._waiting:
            log.warning("%s; standing by", text)
            self._waiting = kind
            if self.metrics is not None:
                self.metrics.standby(text)
        return False

    def acquire(self, stop: threading.Event) -> bool:
        """Wait until this bridge may act on the data root (or `stop` is set)."""
        while not stop.is_set():
            if self.acquire_once():
                return True
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
