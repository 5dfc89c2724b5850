"""Watching task_queue/: inotify on the top folder and each user folder, plus a full scan.

The watcher works at watchdog's inotify layer (`InotifyFD`: one thread reading the inotify fd,
a callback per watched folder), with only the events the bridge acts on in the mask (no opens,
reads or modifications). A rename's two halves are paired by cookie, whatever comes between
them, and no other event waits behind an unpaired half (watchdog's observer held every event
back half a second behind one: the tail of the intake latency). The
bridge's own renames are announced beforehand (`bridge/ownmoves.py`) and dropped here with one
lookup, and its temp files by their suffix, as the inotify buffer is read (`_Reader`): no
object is made for them, and while mirroring they are most of the events. Handlers only filter
and enqueue; the bridge's loop does the work. An inotify overflow asks for a full scan at once;
and as a file written into a brand-new directory may come with no event, the driver also
rescans on a timer.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchDescriptor,
)
from watchdog.observers.inotify_c import InotifyConstants as In

from bridge.contract import USER_RE
from bridge.ownmoves import FROM, OWN, TO, OwnMoves
from taskd.atomic import BRIDGE_TEMP_SUFFIX, WORKER_TEMP_SUFFIX

log = logging.getLogger(__name__)

CHANGED = "changed"
CLOSED = "closed"
DELETED = "deleted"
MOVED = "moved"
DIR = "dir"
STOP_POLL_S = 0.2
MOVE_PAIR_S = 0.5
# The bridge's own rewrite temps, and a worker's sent-marker temp (tasks/notify.py).
TEMP_SUFFIXES = (BRIDGE_TEMP_SUFFIX, WORKER_TEMP_SUFFIX, ".notify.sent.tmp")
_OWN_TEMP = os.fsencode(BRIDGE_TEMP_SUFFIX)

_FOLDER_FLAGS = In.IN_ONLYDIR | In.IN_DONT_FOLLOW
TOP_MASK = Mask(
    In.IN_CREATE
    | In.IN_CLOSE_WRITE
    | In.IN_MOVED_TO
    | In.IN_MOVED_FROM
    | In.IN_DELETE
    | _FOLDER_FLAGS
)
"""New user folders (created or moved in), and files at the top, which are logged once."""
USER_MASK = Mask(
    In.IN_CREATE
    | In.IN_CLOSE_WRITE
    | In.IN_MOVED_TO
    | In.IN_MOVED_FROM
    | In.IN_DELETE
    | In.IN_EXCL_UNLINK
    | _FOLDER_FLAGS
)
"""A file made (IN_CREATE: noted, waits to settle if it is never closed), written and closed,
renamed in or out, deleted. Not IN_MODIFY: a write is acted on when its writer closes the file
(or, never closed, once it settles)."""


@dataclass(frozen=True)
class Seen:
    kind: str
    path: Path
    dest: Path | None = None  # MOVED: where it went


class _Folder:
    """The callback of one watched folder: inotify events to `Seen`s."""

    def __init__(self, watcher: Watcher, path: bytes, top: bool) -> None:
        self.watcher, self.path, self.top = watcher, path, top

    def on_event(self, event: InotifyEvent) -> None:
        name, mask = event.name, event.mask
        if not name or name.endswith(_OWN_TEMP):
            return
        full = self.path + b"/" + name
        if mask & In.IN_MOVED_TO:
            if self.watcher.own.consume(TO + full):
                return
        elif mask & In.IN_MOVED_FROM and self.watcher.own.consume(FROM + full):
            return
        self.watcher.put(self, full, mask, event.cookie)

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        self.watcher.forget(self.path)

    def on_queue_overflow(self) -> None:
        self.watcher.overflowed()

    def on_events_lost(self) -> None:
        """watchdog 7.1 says so after every folder heard of the overflow: the scan is asked."""


_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
_MOVES = In.IN_MOVED_FROM | In.IN_MOVED_TO
_BUSY_BYTES = 512
_GATHER_S = 0.002


class _Reader(InotifyFD):
    """watchdog's inotify thread, reading its buffer itself: the bridge's own temp files and
    announced renames are dropped with a suffix test and a set lookup before any event object
    is made (watchdog's reader makes one for every event, then the callback drops it)."""

    def __init__(self, paths: dict[WatchDescriptor, bytes], own: OwnMoves) -> None:
        super().__init__()
        self._folders, self._own = paths, own

    def run(self) -> None:
        """Read, filter and hand on in this one thread. watchdog 7.1's own loop reads on this
        thread and parses every event on a second one, past `read_events`: all the events the
        filter drops would be made into objects, locked and called back again."""
        failed: set[str] = set()
        try:
            while self.should_keep_running():
                for event in self.read_events():
                    try:
                        self.handle_event(event)
                    except Exception as exc:  # one event's failure, never the watcher's
                        _failed_once(failed, exc)
        finally:
            if self.should_keep_running():  # ended by an error, not by `stop`: let go of inotify
                self.stop()

    def read_events(self, *, event_buffer_size: int = 64 * 1024) -> list[InotifyEvent]:
        buffer = self._read_event_buffer(event_buffer_size)
        if len(buffer) >= _BUSY_BYTES:  # more are coming: let them gather, then read them at once
            time.sleep(_GATHER_S)
        folders, consume = self._folders, self._own.consume
        out: list[InotifyEvent] = []
        at, end = 0, len(buffer) - _EVENT.size
        while at <= end:
            wd, mask, cookie, length = _EVENT.unpack_from(buffer, at)
            start = at + _EVENT.size
            at = start + length
            name = buffer[start:at].rstrip(b"\0")
            if wd == -1 and not mask & In.IN_Q_OVERFLOW:
                continue  # other global events: ignored, as watchdog does
            if name.endswith(_OWN_TEMP):
                continue
            folder = folders.get(WatchDescriptor(wd)) if mask & _MOVES else None
            if folder is not None and consume(
                (TO if mask & In.IN_MOVED_TO else FROM) + folder + b"/" + name
            ):
                continue
            out.append(InotifyEvent(WatchDescriptor(wd), Mask(mask), cookie, name))
        return out


def _failed_once(failed: set[str], exc: Exception) -> None:
    """Log each kind of event failure once (by its type: a message may hold any file name, and
    the set must not grow with them); its file is still found by the next rescan."""
    kind = type(exc).__name__
    if kind not in failed:
        failed.add(kind)
        log.exception("an inotify event could not be handled (%s); the rescan finds its file", exc)


class Watcher:
    """Owns the inotify thread; `events` is drained by the bridge's loop."""

    def __init__(self, root: Path, own: OwnMoves = OWN) -> None:
        self.root = root
        self.own = own
        self.events: queue.SimpleQueue[Seen] = queue.SimpleQueue()
        self._fd: InotifyFD | None = None
        self._early: list[Seen] = []
        self._wds: dict[bytes, tuple[WatchDescriptor, CallbackId]] = {}
        self._paths: dict[WatchDescriptor, bytes] = {}  # the other way round
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        # Foreign renames' IN_MOVED_FROMs by cookie, until their IN_MOVED_TO says where each
        # went (other events may come between the two halves), or MOVE_PAIR_S passes.
        self._moving: dict[int, tuple[bytes, float]] = {}
        self._overflowing = False

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._fd = _Reader(self._paths, self.own)
        self._fd.start()
        self._watch(os.fsencode(self.root), top=True)
        for entry in listed(self.root):
            if entry.is_dir(follow_symlinks=False) and USER_RE.fullmatch(entry.name):
                self._watch(os.fsencode(entry.path), top=False)

    def stop(self) -> None:
        if self._fd is not None:
            self._fd.stop()
            self._fd.join(timeout=5)

    def alive(self) -> bool:
        return self._fd is not None and self._fd.is_alive()

    def _watch(self, path: bytes, top: bool) -> None:
        """Watch a folder once. inotify gives a folder one watch whatever its name: a folder
        renamed back and forth keeps one callback, under its latest name."""
        assert self._fd is not None
        if path in self._wds:
            return
        callback = CallbackId(next(self._ids))
        try:
            wd = self._fd.add_callback(
                path, TOP_MASK if top else USER_MASK, _Folder(self, path, top), callback
            )
        except OSError as exc:  # gone, a link, or the watch limit reached: the rescan sees it
            log.warning("cannot watch %s (%s); its files are found by the rescan", path, exc)
            return
        with self._lock:
            old = self._paths.get(wd)
            stale = self._wds.pop(old, None) if old is not None else None
            self._wds[path], self._paths[wd] = (wd, callback), path
        if stale is not None:
            self._fd.remove_callbacks([stale])

    def forget(self, path: bytes) -> None:
        with self._lock:
            held = self._wds.pop(path, None)
            if held is not None and self._paths.get(held[0]) == path:
                del self._paths[held[0]]

    def _unwatch(self, path: bytes) -> None:
        with self._lock:
            held = self._wds.pop(path, None)
            if held is not None and self._paths.get(held[0]) == path:
                del self._paths[held[0]]
        if held is not None and self._fd is not None:
            self._fd.remove_callbacks([held])

    def put(self, folder: _Folder, full: bytes, mask: int, cookie: int = 0) -> None:
        if mask & In.IN_MOVED_TO and not mask & In.IN_ISDIR:
            with self._lock:
                moving = self._moving.pop(cookie, None)
            if moving is not None:
                self.events.put(Seen(MOVED, _path(moving[0]), _path(full)))
                return
        elif mask & In.IN_MOVED_FROM and not mask & In.IN_ISDIR:
            with self._lock:
                self._moving[cookie] = (full, time.monotonic())
            return
        path = _path(full)
        if mask & In.IN_ISDIR:
            self._folder_event(folder, full, mask, path)
        elif mask & In.IN_CLOSE_WRITE:
            self.events.put(Seen(CLOSED, path))
        elif mask & In.IN_DELETE:
            self.events.put(Seen(DELETED, path))
        else:  # IN_CREATE, IN_MOVED_TO from outside
            self.events.put(Seen(CHANGED, path))

    def _folder_event(self, folder: _Folder, full: bytes, mask: int, path: Path) -> None:
        if not folder.top:
            return  # a folder inside a user folder holds no task files
        if mask & (In.IN_CREATE | In.IN_MOVED_TO):
            if USER_RE.fullmatch(path.name):
                self._watch(full, top=False)
            self.events.put(Seen(DIR, path))  # what was written in it before the watch
        elif mask & In.IN_MOVED_FROM:
            self._unwatch(full)  # its files are no longer in task_queue/ under that name

    def watches(self, path: str) -> bool:
        """Whether a user folder is watched (the rescan may skip it only then)."""
        return os.fsencode(path) in self._wds

    def overflowed(self) -> None:
        """Events were lost: the announcements of the bridge's own renames may never be met,
        and any file may have changed. A full scan at once (one, though every watched folder
        hears of the overflow)."""
        self.own.clear()
        with self._lock:
            if self._overflowing:
                return
            self._overflowing = True
        self.events.put(Seen(DIR, self.root))

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
        with self._lock:
            self._overflowing = False
            # Unpaired for a while: it left task_queue/ (a recent one may be half of a rename
            # whose other half the watcher's thread has yet to read).
            now = time.monotonic()
            gone = [c for c, (_, at) in self._moving.items() if now - at > MOVE_PAIR_S]
            for cookie in gone:
                self.events.put(Seen(MOVED, _path(self._moving.pop(cookie)[0])))
        out, self._early = self._early, []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out


def _path(raw: bytes) -> Path:
    return Path(os.fsdecode(raw))


def listed(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of a folder; none when it cannot be listed (gone, or not a folder)."""
    try:
        return list(os.scandir(folder))
    except OSError:
        return []


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


def leftovers(root: Path, skip: set[str] | frozenset[str] = frozenset()) -> Iterator[Path]:
    """Temp files a process killed mid-write left in the user directories (but those in
    `skip`, by path)."""
    try:
        users = [
            e for e in os.scandir(root) if e.is_dir(follow_symlinks=False) and e.path not in skip
        ]
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
