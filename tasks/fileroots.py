"""The allowed file roots of PACKMS, pinned: each is the very folder it was when first seen.

`Settings.check_file_roots` refuses unsafe roots when a worker starts, but a root is a path, and
whoever owns its parent (`/tmp/shared` is anyone's) can later swap it for a symlink to `/` or to
the data root. So each root that exists when the worker starts is pinned then (`pin`, from
`worker_init`, before the pool forks, so every pool process inherits the pins): its resolved
path and its (device, inode). Every use resolves it afresh and opens it without following a
link; a root that now resolves elsewhere, or opens as another folder (replaced, or remounted),
packs nothing until the workers restart.

A root that did not exist at start is pinned when first used only if no link leads to it: a
folder someone made there is theirs to fill anyway, but a link could point anywhere (the
configuration, the data root). One broken root never stops files of the other roots.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from taskd.settings import Settings
from tasks.errors import TaskFailed

FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""A folder opened read-only, never through a link (a root, and each folder below it)."""


@dataclass(frozen=True)
class Pin:
    root: Path  # as configured
    real: Path
    identity: tuple[int, int]


_pins: dict[Path, Pin] = {}


def pin(settings: Settings) -> None:
    """Pin every allowed root that exists now (at worker start, in the pool's parent)."""
    for root in settings.allowed_file_roots:
        real = _real(root)
        identity = _folder_identity(real) if real is not None else None
        if real is not None and identity is not None and real != Path("/"):
            _pins[root] = Pin(root, real, identity)


def _real(root: Path) -> Path | None:
    try:
        return Path(os.path.realpath(os.path.normpath(root)))
    except OSError:  # a link taskd's user may not read: nothing there to pack from
        return None


def _folder_identity(real: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(real, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _pin_late(root: Path) -> Pin | TaskFailed | None:
    """A root first seen after the worker started: pinned if it is a folder no link leads to,
    a TaskFailed saying why not otherwise, None while it is not there."""
    real = _real(root)
    identity = _folder_identity(real) if real is not None else None
    if real is None or identity is None:
        return None
    if real != Path(os.path.normpath(os.path.abspath(root))) or real == Path("/"):
        return TaskFailed(
            f"the allowed folder {str(root)!r} (TASKD_ALLOWED_FILE_ROOTS) was made after the "
            f"worker started and is reached through a link (to {real}), so nothing is packed "
            "from it; restart the workers to have it checked as at start"
        )
    pinned = _pins[root] = Pin(root, real, identity)
    return pinned


def _changed(root: Path) -> TaskFailed:
    return TaskFailed(
        f"the allowed folder {str(root)!r} (TASKD_ALLOWED_FILE_ROOTS) is no longer the folder "
        "the worker started with (it was replaced, remounted, or is a link now), so nothing is "
        "packed from it; once it is what it should be, restart the workers"
    )


def current(roots: Iterable[Path]) -> tuple[list[Path], dict[Path, TaskFailed]]:
    """The resolved allowed roots to pack from, each checked against its pin, and the roots
    that may not be used now, with why (the caller says so only for a file under one)."""
    found: list[Path] = []
    broken: dict[Path, TaskFailed] = {}
    for root in roots:
        pinned = _pins.get(root) or _pin_late(root)
        if pinned is None:
            continue  # not there: nothing can be packed from it
        if isinstance(pinned, TaskFailed):
            broken[root] = pinned
        elif _real(root) != pinned.real:
            broken[root] = _changed(root)
        else:
            found.append(pinned.real)
    return found, broken


def open_root(real: Path) -> int:
    """The folder of a pinned root, opened without following a link, and checked to be the
    folder pinned: an fd to walk down from."""
    pinned = next((p for p in _pins.values() if p.real == real), None)
    shown = pinned.root if pinned is not None else real
    try:
        fd = os.open(real, FOLDER_FLAGS)
    except OSError:
        raise _changed(shown) from None
    st = os.fstat(fd)
    if pinned is None or (st.st_dev, st.st_ino) != pinned.identity:
        os.close(fd)
        raise _changed(shown)
    return fd
