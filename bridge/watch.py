"""Watching task_queue/: a watchdog (inotify) observer plus a full scan, both handing paths on.

Handlers only filter and enqueue; the bridge's loop does the work. inotify can drop events
(queue overflow reports nothing to the handler) and a file written into a brand-new directory
may come with no close event, so the driver also rescans on a timer.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from bridge.contract import USER_RE
from taskd.atomic import BRIDGE_TEMP_SUFFIX, WORKER_TEMP_SUFFIX

log = logging.getLogger(__name__)

CHANGED = "changed"
CLOSED = "closed"
DELETED = "deleted"
MOVED = "moved"
DIR = "dir"
STOP_POLL_S = 0.2
# The bridge's own rewrite temps, and a worker's sent-marker temp (tasks/notify.py).
TEMP_SUFFIXES = (BRIDGE_TEMP_SUFFIX, WORKER_TEMP_SUFFIX, ".notify.sent.tmp")


@dataclass(frozen=True)
class Seen:
    kind: str
    path: Path
    dest: Path | None = None  # MOVED: where it went


def _text(path: bytes | str) -> str:
    return os.fsdecode(path)


WANTED: list[type[FileSystemEvent]] = [
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
]


class _Handler(FileSystemEventHandler):
    def __init__(self, out: queue.SimpleQueue[Seen]) -> None:
        self.out = out

    def _put(self, kind: str, raw: bytes | str, dest: bytes | str | None = None) -> None:
        path = _text(raw)
        if path.endswith(BRIDGE_TEMP_SUFFIX):
            if dest is not None:  # the bridge's own rewrite landing: the target changed
                self.out.put(Seen(CHANGED, Path(_text(dest))))
            return
        self.out.put(Seen(kind, Path(path), Path(_text(dest)) if dest is not None else None))

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileOpenedEvent | FileClosedNoWriteEvent):
            return
        if isinstance(event, DirCreatedEvent | DirMovedEvent):
            self._put(DIR, event.dest_path or event.src_path)
        elif isinstance(event, FileClosedEvent):
            self._put(CLOSED, event.src_path)
        elif isinstance(event, FileDeletedEvent):
            self._put(DELETED, event.src_path)
        elif isinstance(event, FileMovedEvent):
            self._put(MOVED, event.src_path, event.dest_path)
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent):
            self._put(CHANGED, event.src_path)


class Watcher:
    """Owns the observer; `events` is drained by the bridge's loop."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.events: queue.SimpleQueue[Seen] = queue.SimpleQueue()
        self._observer = Observer()
        self._early: list[Seen] = []

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # Only the events the bridge acts on reach the inotify mask: the opens and
        # no-write closes of its own reads (two per file read, a whole tree at start-up) would
        # otherwise be parsed in the watcher's thread, competing with the loop for the GIL.
        self._observer.schedule(
            _Handler(self.events), str(self.root), recursive=True, event_filter=WANTED
        )
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)

    def wait(self, timeout: float, stop: threading.Event) -> None:
        """Sleep until an event arrives, `timeout` passes or `stop` is set (checked often)."""
        deadline = time.monotonic() + timeout
        while not stop.is_set() and not self._early:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                self._early.append(self.events.get(timeout=min(left, STOP_POLL_S)))
            except queue.Empty:
                continue

    def drain(self) -> list[Seen]:
        out, self._early = self._early, []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out


def scan(root: Path, top: Path | None = None) -> Iterator[Path]:
    """Candidate paths: every entry of each user directory, and whatever else sits at the top
    (so the caller can log it once). No symlink is followed and nothing is opened.
    """
    for entry in scan_entries(root, top):
        yield Path(entry.path)


def scan_entries(root: Path, top: Path | None = None) -> Iterator[os.DirEntry[str]]:
    """`scan`, as directory entries: a rescan of many files makes no Path for those it skips."""
    base = top or root
    try:
        entries = list(os.scandir(base))
    except (FileNotFoundError, NotADirectoryError):
        return  # removed since it was listed: nothing in it to take
    except PermissionError as exc:
        _unreadable_once(base, exc)
        return
    _UNREADABLE.discard(base)
    for entry in entries:
        if entry.name.endswith(BRIDGE_TEMP_SUFFIX):
            continue
        if base == root and entry.is_dir(follow_symlinks=False) and USER_RE.fullmatch(entry.name):
            yield from scan_entries(root, Path(entry.path))
        else:
            yield entry


_UNREADABLE: set[Path] = set()


def _unreadable_once(folder: Path, exc: OSError) -> None:
    """A folder the bridge may not list holds tasks it can never take: say so, once."""
    if folder not in _UNREADABLE:
        _UNREADABLE.add(folder)
        log.error(
            "cannot list %s (%s): its task files are not taken; fix its permissions", folder, exc
        )


def leftovers(root: Path) -> Iterator[Path]:
    """Temp files a process killed mid-write left in the user directories."""
    try:
        users = [e for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return  # no queue yet: nothing left behind
    for user in users:
        try:
            entries = list(os.scandir(user.path))
        except (FileNotFoundError, PermissionError):
            continue  # gone, or unreadable (scan_entries says so): nothing to sweep
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIXES):
                yield Path(entry.path)
