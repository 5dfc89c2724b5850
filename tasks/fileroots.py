"""The allowed file roots of PACKMS, pinned: each is the very folder it was when first seen.

`Settings.check_file_roots` refuses unsafe roots when a worker starts, but a root is a path, and
whoever owns its parent (`/tmp/shared` is anyone's) can later swap it for a symlink to `/` or to
the data root. So each root is pinned once per worker, at start (`pin`, from `worker_init`, so
the pool's processes inherit the pins) or at its first use: its resolved path and its (device,
inode). Every use resolves it afresh and opens it without following a link; a root that now
resolves elsewhere, or opens as another folder, packs nothing until the workers restart. A root
pinned late (made after the worker started) must not be `/`; files inside taskd's own folders are
refused whatever the root (`Settings.private_folders`, checked by `tasks.packms`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from taskd.settings import Settings
from tasks.errors import TaskFailed

_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Pin:
    real: Path
    identity: tuple[int, int]


_pins: dict[Path, Pin] = {}


def pin(settings: Settings) -> None:
    """Pin every allowed root that exists now (at worker start, in the pool's parent)."""
    for root in settings.allowed_file_roots:
        _pin(root, must=False)


def _real(root: Path) -> Path | None:
    try:
        return Path(os.path.realpath(os.path.normpath(root)))
    except OSError:  # a link taskd's user may not read: nothing there to pack from
        return None


def _pin(root: Path, must: bool = True) -> Pin | None:
    real = _real(root)
    if real is None:
        return None
    try:
        st = os.stat(real, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    if real == Path("/"):
        if must:
            raise TaskFailed(
                f"TASKD_ALLOWED_FILE_ROOTS: {str(root)!r} now resolves to /, the whole disk, so "
                "nothing is packed from it; ops must name a safe folder (e.g. /srv/shared)"
            )
        return None
    _pins[root] = Pin(real, (st.st_dev, st.st_ino))
    return _pins[root]


def _changed(root: Path) -> TaskFailed:
    return TaskFailed(
        f"the allowed folder {str(root)!r} (TASKD_ALLOWED_FILE_ROOTS) is no longer the folder "
        "the worker started with (it was replaced, or is a link now), so nothing is packed from "
        "it; if ops replaced it on purpose, restart the workers"
    )


def current(roots: Iterable[Path]) -> list[Path]:
    """The resolved allowed roots that exist, each checked against its pin."""
    found: list[Path] = []
    for root in roots:
        pinned = _pins.get(root) or _pin(root)
        if pinned is None:
            continue  # not there (yet): nothing can be packed from it
        if _real(root) != pinned.real:
            raise _changed(root)
        found.append(pinned.real)
    return found


def open_root(real: Path) -> int:
    """The folder of a pinned root, opened without following a link, and checked to be the
    folder pinned: an fd to walk down from."""
    pinned = next((p for p in _pins.values() if p.real == real), None)
    try:
        fd = os.open(real, _ROOT_FLAGS)
    except OSError:
        raise _changed(real) from None
    st = os.fstat(fd)
    if pinned is None or (st.st_dev, st.st_ino) != pinned.identity:
        os.close(fd)
        raise _changed(real)
    return fd
