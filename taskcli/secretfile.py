"""Passwords `taskd up` makes once and keeps under `<data-root>/.taskd/` (mode 0600), and
Redis URLs that carry one."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from taskd.names import PRIVATE_DIR
from taskd.settings import Settings

SECRET_BYTES = 32
"""Random bytes in a generated password (43 URL-safe characters)."""


def private_dir(settings: Settings) -> Path:
    return settings.data_root / PRIVATE_DIR


def read_secret(path: Path) -> str:
    """A password file: a regular file of ours that no one else may read, never a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:  # a link (ELOOP), or not ours to read
        raise SystemExit(
            f"{path}: cannot read it ({exc.strerror}); delete it for a new one"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise SystemExit(
                f"{path} must be a regular file of this user's that no one else may read "
                f"(mode 0600); others may have seen it, so delete it for a new one"
            )
        value = os.read(fd, 4096).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    if not value:
        raise SystemExit(f"{path} is empty; delete it for a new one")
    return value


def secret(path: Path) -> str:
    """The password kept in `path` (mode 0600), made the first time it is asked for."""
    with contextlib.suppress(FileNotFoundError):
        return read_secret(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(SECRET_BYTES)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, f"{value}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, path)  # complete or absent, and never over another `up`'s password
    except FileExistsError:
        return read_secret(path)
    finally:
        temp.unlink()
    return value


def url_password(url: str) -> str | None:
    password = urlsplit(url).password
    return None if password is None else unquote(password)


def with_password(url: str, password: str) -> str:
    """`url` carrying `password` (redis://[user]:PASSWORD@host:port/db)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    user = quote(unquote(parts.username or ""), safe="")
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))
