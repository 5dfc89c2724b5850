"""Files written whole or not at all, for every process of taskd.

A new content goes to a hidden temp file in the target's folder (created exclusively, never
through a link planted under its name), is fsynced when it must survive a crash, and is renamed
over the target; the folder is then fsynced so the rename survives too. The temp name is short
and fixed in length, so a target near the file system's 255-byte limit still gets one, and it
ends in a suffix that says whose it is (the bridge sweeps its own at once, others after a
while).

Permissions are set on the open temp file, before the rename, so a reader never meets the new
content with other bits than asked: `chmod` whatever the umask, and `chgrp` where the process
may (a process may give a file only to a group it is in; otherwise the file keeps its group).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

BRIDGE_TEMP_SUFFIX = ".taskd-tmp"
WORKER_TEMP_SUFFIX = ".taskd-wtmp"
TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by name (a folder: so the renames in it are on disk)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def set_permissions(fd: int, chmod: int | None, chgrp: int | None, path: Path) -> None:
    """Give the open file `fd` group `chgrp` (where allowed) and then mode `chmod`, if given.

    The group goes first: a change of group may clear bits the mode then sets again.
    """
    if chgrp is not None and os.fstat(fd).st_gid != chgrp:
        try:
            os.fchown(fd, -1, chgrp)
        except PermissionError as exc:
            # Not in that group: the file keeps the process's group, and still gets its mode.
            log.debug("%s: cannot give it group %d (%s); it keeps its mode only", path, chgrp, exc)
    if chmod is not None:
        os.fchmod(fd, chmod)


def make_dirs(folder: Path, mode: int) -> None:
    """Create `folder` and any missing parent with exactly `mode`, whatever the umask.

    Folders that exist already are left as they are: their mode is the operator's. One made at
    the same moment by another process is left as that process made it.
    """
    missing: list[Path] = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            continue
        fd = os.open(path, _DIR_FLAGS)
        try:
            os.fchmod(fd, mode)
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
    chmod: int | None = None,
    chgrp: int | None = None,
) -> None:
    """Replace `target` with `data` atomically; durable: on disk when this returns.

    The file is created with `mode` less the umask; `chmod` sets its bits exactly instead, and
    `chgrp` gives it that group (see `set_permissions`), both before it takes the name.
    """
    tmp = write_temp(
        target, data, durable=durable, suffix=suffix, mode=mode, chmod=chmod, chgrp=chgrp
    )
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable and sync_dir:
        fsync_path(target.parent)


def write_temp(
    target: Path,
    data: bytes,
    *,
    durable: bool,
    suffix: str,
    mode: int = 0o644,
    chmod: int | None = None,
    chgrp: int | None = None,
) -> Path:
    """`data` in a new temp file beside `target`, fsynced if `durable`; its path. Renaming it
    over `target` is the caller's (see `write_atomic`); on failure nothing is left behind."""
    tmp = temp_beside(target, suffix)
    fd = os.open(tmp, TEMP_FLAGS, mode)
    try:
        set_permissions(fd, chmod, chgrp, tmp)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def sync_file_system(folder: Path) -> None:
    """Every write to the file system holding `folder` is on disk (syncfs(2)): one flush for
    many new files instead of an fsync each. Where syncfs is missing, `sync()`."""
    if _syncfs is None:
        os.sync()
        return
    fd = os.open(folder, _DIR_FLAGS)
    try:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err) if err else "syncfs failed", str(folder))
    finally:
        os.close(fd)
