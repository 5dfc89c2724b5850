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
import errno
import logging
import os
import platform
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
        try:
            set_permissions(fd, chmod, chgrp, tmp)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]  # os.write raises rather than write nothing
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)  # a network file system may report a failed write only here
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def syncfs(fd: int) -> None:
    """Every write to the file system holding the open folder `fd` is on disk (syncfs(2)), and
    any write error on it since `fd` was opened is raised."""
    if _syncfs is None:
        raise OSError(errno.ENOSYS, "syncfs is missing")
    if _syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err) if err else "syncfs failed")


def _reports_errors(release: str) -> bool:
    """syncfs returns write errors from Linux 5.8 on; before, it said nothing of them."""
    try:
        major, minor = (int(part) for part in release.split(".")[:2])
    except ValueError:
        return False
    return _syncfs is not None and (major, minor) >= (5, 8)


SYNCFS_REPORTS_ERRORS = _reports_errors(platform.release())


def file_system_type(device: int) -> str | None:
    """The type of the mounted file system of `device` (`ext4`, `nfs`...), from the process's
    mount table; None when it is not found."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as table:
            for line in table:
                fields = line.split()
                if len(fields) > 2 and fields[2] == wanted and " - " in line:
                    return line.split(" - ", 1)[1].split()[0]
    except OSError:
        return None
    return None
