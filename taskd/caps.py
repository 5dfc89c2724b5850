"""Caps per task type: at most N jobs of a type running at once, all workers together.

A type's schema may declare one (`x-taskd.max-running`); ops change it while everything runs
with `taskd cap`, which writes `<data-root>/.taskd/caps.json`: `{"PACKMS": 2, "EXEC": null}`,
a number setting the cap (0 holds every job of the type), null lifting the schema's. A type not
named there keeps its schema's cap. The active bridge reads the file again when it changes, so
a new cap holds from its next tick; workers need nothing (`bridge/caps.py` says why).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from taskd import atomic, names
from taskd.tasktypes import TaskType

CAPS_FILE = "caps.json"
MAX_CAPS_BYTES = 64 * 1024
MAX_CAP = 1_000_000

Overrides = dict[str, int | None]


class CapsError(ValueError):
    """The caps file cannot be used; the message says what to fix."""


def caps_path(data_root: Path) -> Path:
    return data_root / names.PRIVATE_DIR / CAPS_FILE


def signature(data_root: Path) -> tuple[int, int, int, int] | None:
    """What changes whenever the file is written (None: there is none)."""
    try:
        st = os.lstat(caps_path(data_root))
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def parse_cap(text: str) -> int | None:
    """A cap as ops type it: a whole number of jobs, or `none` for no cap."""
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_CAP:
        raise CapsError(
            f"{text!r} is not a cap: write a whole number of jobs from 0 (hold them all) to "
            f"{MAX_CAP}, or none for no cap"
        )
    return value


def _checked(where: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CAP:
        raise CapsError(
            f"{where} is {str(value)[:40]!r}: write a whole number of jobs from 0 to {MAX_CAP}, "
            "or null for no cap"
        )
    return value


def read(data_root: Path) -> Overrides:
    """The overrides ops set; none when there is no file. Never follows a link."""
    path = caps_path(data_root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CapsError(f"cannot read {path}: {exc}; set the caps again with taskd cap") from exc
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise CapsError(f"{path} is not a regular file; remove it and use taskd cap")
        raw = handle.read(MAX_CAPS_BYTES + 1)
    if len(raw) > MAX_CAPS_BYTES:
        raise CapsError(f"{path} is larger than {MAX_CAPS_BYTES} bytes; set it with taskd cap")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise CapsError(f"{path} is not JSON ({exc}); set the caps again with taskd cap") from exc
    if not isinstance(data, dict):
        raise CapsError(f"{path} must hold an object of type names; set it with taskd cap")
    return {str(k): _checked(f"{path}: the cap of {k}", v) for k, v in data.items()}


def write(data_root: Path, overrides: Mapping[str, int | None]) -> None:
    path = caps_path(data_root)
    atomic.make_dirs(path.parent, 0o755)
    body = json.dumps(dict(sorted(overrides.items())), indent=2) + "\n"
    atomic.write_atomic(path, body.encode(), chmod=0o644)


def effective(types: Mapping[str, TaskType], overrides: Mapping[str, int | None]) -> dict[str, int]:
    """The cap of each capped type: the override where ops set one, else the schema's."""
    out: dict[str, int] = {}
    for name, task_type in types.items():
        cap = overrides.get(name, task_type.max_running)
        if cap is not None:
            out[name] = cap
    return out
