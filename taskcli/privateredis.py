"""The Redis `taskd up` uses: the one that answers at TASKD_REDIS_URL, or a private one with a
password, configured by a file only its owner may read (never on a command line)."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import redis

from taskcli.child import Child
from taskcli.secretfile import private_dir, read_secret, secret, url_password, with_password
from taskd import names, redisconn
from taskd.settings import Settings, redact_url

log = logging.getLogger("taskcli.up")

REDIS_PASSWORD_FILE = "redis.pass"
"""Under <data-root>/.taskd/: the private Redis's password, when TASKD_REDIS_URL has none."""
REDIS_DIR = names.REDIS_DIR
"""Under the data root, mode 0700: the private Redis's config (with its password) and data."""
REDIS_CONF = "redis.conf"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


ANSWERS, REFUSED, SILENT = "answers", "refused", "silent"
REFUSALS = (
    redis.exceptions.AuthenticationError,
    redis.exceptions.AuthenticationWrongNumberOfArgsError,  # a Redis before 6 given a user
)


def probe(url: str) -> str:
    """Whether a Redis answers at `url`, answers but refuses its password (or its lack of
    one), or does not answer at all."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
        return ANSWERS
    except REFUSALS:
        return REFUSED
    except redis.exceptions.BusyLoadingError:  # a Redis reading its data: it answers
        return ANSWERS
    except redis.exceptions.ResponseError as exc:
        return REFUSED if str(exc).startswith(("NOAUTH", "WRONGPASS")) else ANSWERS
    except redis.exceptions.RedisError:
        return SILENT
    finally:
        client.close()


def redis_answers(url: str) -> bool:
    return probe(url) == ANSWERS


@dataclass
class RedisPlan:
    """The URL the children use (with its password), and the private Redis to start, if any."""

    url: str
    child: Child | None = None
    password_file: Path | None = None
    """Where the password is kept, when `up` made it."""
    folder: Path | None = None
    """Where the private Redis keeps its data, when `up` starts one."""


def _refused(settings: Settings) -> SystemExit:
    shown = redact_url(settings.redis_url)
    if url_password(settings.redis_url) is not None:
        return SystemExit(
            f"the Redis at {shown} refused the password in TASKD_REDIS_URL; give the password "
            "it has, or point TASKD_REDIS_URL at another port"
        )
    return SystemExit(
        f"the Redis at {shown} asks for a password; put it in TASKD_REDIS_URL "
        "(redis://:PASSWORD@host:port/db), or point TASKD_REDIS_URL at another port"
    )


def plan_redis(settings: Settings) -> RedisPlan:
    """Use the Redis that answers at TASKD_REDIS_URL, or plan a private one with a password:
    the URL's own, else one made once and kept under the data root."""
    url = settings.redis_url
    if redisconn.is_sentinel(url) or redisconn.is_tls(url):
        return RedisPlan(url)  # ops' own Redis, by sentinels or TLS: never one of up's
    answer = probe(url)
    if answer == ANSWERS:
        return RedisPlan(url)
    given = url_password(url)
    stored = private_dir(settings) / REDIS_PASSWORD_FILE
    if answer == REFUSED:
        # Without a password of its own, the URL may lead to the private Redis of another
        # `up` on this data root.
        if given is None and stored.exists():
            known = with_password(url, read_secret(stored))
            if probe(known) == ANSWERS:
                log.info("a Redis answers at %s with the password in %s", redact_url(url), stored)
                return RedisPlan(known, None, stored)
        raise _refused(settings)
    if urlsplit(url).hostname not in LOCAL_HOSTS:
        raise SystemExit(f"no Redis answers at {redact_url(url)}, and it is not local")
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            f"no Redis answers at {redact_url(url)} and redis-server is not installed "
            "(make run installs it)"
        )
    password = given if given is not None else secret(stored)
    full = url if given is not None else with_password(url, password)
    conf = write_redis_conf(settings, password)
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    child = Child("redis-server", [binary, str(conf.absolute())], env, role="redis")
    return RedisPlan(full, child, None if given is not None else stored, conf.parent)


def conf_quote(value: str) -> str:
    """`value` as one double-quoted argument of a Redis config line."""
    out = []
    for byte in value.encode():
        if byte in b'"\\':
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'


def redis_conf(settings: Settings, password: str) -> str:
    """The private Redis's config: loopback only, append-only, never evicting, a password."""
    parts = urlsplit(settings.redis_url)
    user = unquote(parts.username or "")
    lines = [
        "# taskd up writes this at each start; it holds the password: keep it mode 0600",
        f"port {parts.port or 6379}",
        f"bind {'::1' if parts.hostname == '::1' else '127.0.0.1'}",
        "protected-mode yes",
        f"dir {conf_quote(str((settings.data_root / REDIS_DIR).absolute()))}",
        "appendonly yes",
        "appendfsync everysec",
        "maxmemory-policy noeviction",
        f"requirepass {conf_quote(password)}",
    ]
    if user and user != "default":
        lines.append(f"user {conf_quote(user)} on {conf_quote('>' + password)} ~* &* +@all")
    return "\n".join(lines) + "\n"


def write_redis_conf(settings: Settings, password: str) -> Path:
    """<data-root>/redis/redis.conf, mode 0600 in a folder of mode 0700."""
    folder = settings.data_root / REDIS_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.chmod(folder, 0o700)  # made by an earlier version with the umask's mode
    except OSError as exc:
        raise SystemExit(f"{folder}: cannot make it private (mode 0700): {exc.strerror}") from None
    path = folder / REDIS_CONF
    temp = folder / f".{REDIS_CONF}.{os.getpid()}"
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, redis_conf(settings, password).encode())
    finally:
        os.close(fd)
    os.replace(temp, path)
    return path
