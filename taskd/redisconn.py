"""Redis for every part of taskd from one URL, as Celery and kombu read it:

- `redis://[user:password@]host:port/db`: a password, or an ACL user and its password;
- `rediss://...`: TLS, the server's certificate checked against the system's CAs or
  `TASKD_REDIS_CA_FILE`;
- `unix:///path/to/redis.sock?db=0`;
- `sentinel://[user:password@]host:port/db;sentinel://host:port;...`: the sentinels to ask
  which Redis is the master now, `TASKD_REDIS_MASTER` naming it; the user and password are the
  master's (the sentinels are asked without one).

The bridge and the tools get their client from `client`; Celery (workers, the bridge's
publishing app, Flower) gets the same from `celery_options`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.sentinel

from taskd.settings import Settings

SENTINEL_SCHEME = "sentinel"
SEPARATOR = ";"


@dataclass(frozen=True)
class Sentinels:
    hosts: list[tuple[str, int]]
    db: int
    username: str | None
    password: str | None


def is_sentinel(url: str) -> bool:
    return url.split(":", 1)[0].lower() == SENTINEL_SCHEME


def is_tls(url: str) -> bool:
    return url.split(":", 1)[0].lower() == "rediss"


def sentinels(url: str) -> Sentinels:
    """The sentinels of a `sentinel://` URL, and the master's database and credentials (from
    the first part that names them)."""
    hosts: list[tuple[str, int]] = []
    db, username, password = 0, None, None
    for chunk in url.split(SEPARATOR):
        part = urlsplit(chunk.strip())
        if part.scheme.lower() != SENTINEL_SCHEME or not part.hostname:
            raise ValueError(
                f"{chunk.strip()[:60]!r} is not sentinel://host:port; write "
                "sentinel://host1:26379/0;sentinel://host2:26379;sentinel://host3:26379"
            )
        hosts.append((part.hostname, part.port or 26379))
        path = part.path.strip("/")
        if path.isdigit() and db == 0:
            db = int(path)
        if part.password is not None and password is None:
            username = unquote(part.username) if part.username else None
            password = unquote(part.password)
    return Sentinels(hosts, db, username, password)


def _tls(settings: Settings) -> dict[str, Any]:
    if not is_tls(settings.redis_url):
        return {}
    found: dict[str, Any] = {"ssl_cert_reqs": "required"}
    if settings.redis_ca_file is not None:
        found["ssl_ca_certs"] = str(settings.redis_ca_file)
    return found


def client(settings: Settings, socket_timeout: float, connect_timeout: float) -> Any:
    """A Redis client for the URL of `settings`; with sentinels, one that follows the master
    wherever a failover moves it."""
    url = settings.redis_url
    timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **timeouts, **_tls(settings))
    found = sentinels(url)
    auth = {"username": found.username, "password": found.password}
    watch = redis.sentinel.Sentinel(found.hosts, sentinel_kwargs=dict(timeouts), **timeouts)
    return watch.master_for(str(settings.redis_master), db=found.db, **timeouts, **auth)


def transport_options(settings: Settings) -> dict[str, Any]:
    """What kombu and Celery's backend need beyond the URL: the master's name and how to talk
    to the sentinels."""
    url = settings.redis_url
    if not is_sentinel(url):
        return {}
    sentinels(url)  # said at start when malformed, not by kombu at the first connect
    return {"master_name": settings.redis_master}


def celery_tls(settings: Settings) -> dict[str, Any]:
    """Celery's broker_use_ssl and redis_backend_use_ssl for a `rediss://` URL."""
    if not is_tls(settings.redis_url):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_ca_file)
    return {"broker_use_ssl": options, "redis_backend_use_ssl": options}
