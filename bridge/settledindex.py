"""Finished task files the bridge has read, kept across restarts: a start-up needs a `stat` of
each, not a read and a parse, when nothing about it changed.

`<data-root>/.taskd/settled` holds one line per finished file: its path below task_queue/, its
signature (inode, size, mtime and ctime in ns: any write, rename or replacement changes the
ctime, which no one can set back) and the task-id it holds. A file whose signature still matches
is known without reading it; any other is read as before. The index is taskd's own (in its
private folder, written atomically with `taskd/atomic.py`), bounded by the files in the tree,
written at most once per rescan and only when it changed, and at a clean stop. A missing,
unreadable or foreign line only costs a read of the files it names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from taskd import atomic, names

log = logging.getLogger(__name__)

INDEX_FILE = "settled"
MAX_INDEX_BYTES = 256 * 1024 * 1024

Settled = tuple[tuple[int, int, int, int], str]
"""(signature, task-id) of one finished file."""


def index_path(data_root: Path) -> Path:
    return data_root / names.PRIVATE_DIR / INDEX_FILE


def load(data_root: Path, task_queue: Path) -> dict[str, Settled]:
    """The index as full paths; empty when there is none (or it cannot be read)."""
    path = index_path(data_root)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_INDEX_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("cannot read %s (%s); finished files are read once instead", path, exc)
        return {}
    if len(raw) > MAX_INDEX_BYTES:
        return {}
    prefix = f"{task_queue}/"
    out: dict[str, Settled] = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        parsed = _parse(line)
        if parsed is not None:
            out[prefix + parsed[0]] = parsed[1]
    return out


def _parse(line: str) -> tuple[str, Settled] | None:
    parts = line.split("\t")
    if len(parts) != 6 or "/" not in parts[0] or ".." in parts[0].split("/"):
        return None
    try:
        sig = (int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4]))
    except ValueError:
        return None
    return parts[0], (sig, parts[5])


def save(data_root: Path, task_queue: Path, settled: Mapping[str, Settled]) -> None:
    """Write the index whole (names with a tab or a newline cannot be told apart: left out)."""
    prefix = f"{task_queue}/"
    lines = []
    for full, (sig, task_id) in settled.items():
        relative = full.removeprefix(prefix)
        if relative == full or "\t" in full or "\n" in full or "\t" in task_id or "\n" in task_id:
            continue
        lines.append(f"{relative}\t{sig[0]}\t{sig[1]}\t{sig[2]}\t{sig[3]}\t{task_id}\n")
    data = "".join(lines).encode("utf-8", "surrogateescape")
    try:
        atomic.write_atomic(index_path(data_root), data, durable=False, chmod=0o600)
    except OSError as exc:
        log.warning("cannot write %s (%s); the next start reads finished files", data_root, exc)


def user_of(full: str) -> str:
    return os.path.basename(os.path.dirname(full))
