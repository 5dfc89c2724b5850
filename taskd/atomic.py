"""Files written whole or not at all, for every process of taskd.

A new content goes to a hidden temp file in the target's folder (created exclusively, never
through a link planted under its name), is fsynced when it must survive a crash, and is renamed
over the target; the folder is then fsynced so the rename survives too. The temp name is short
and fixed in length, so a target near the file system's 255-byte limit still gets one, and it
ends in a suffix that says whose it is (the bridge sweeps its own at once, others after a
while).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

BRIDGE_TEMP_SUFFIX = ".taskd-tmp"
WORKER_TEMP_SUFFIX = ".taskd-wtmp"
TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by name (a folder: so the renames in it are on disk)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_beside(target: Path, suffix: str) -> Path:
    return target.with_name(f".{secrets.token_hex(8)}{suffix}")


def write_atomic(
    target: Path,
    data: bytes,
    *,
    durable: bool = True,
    sync_dir: bool = True,
    suffix: str = WORKER_TEMP_SUFFIX,
    mode: int = 0o644,
) -> None:
    """Replace `target` with `data` atomically; durable: on disk when this returns."""
    tmp = temp_beside(target, suffix)
    fd = os.open(tmp, TEMP_FLAGS, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable and sync_dir:
        fsync_path(target.parent)
