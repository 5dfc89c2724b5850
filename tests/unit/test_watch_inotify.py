"""The watcher on inotify: what it hands the loop, and the bridge's own renames dropped."""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchdog.observers.inotify_c import InotifyConstants as In
from watchdog.observers.inotify_c import WatchDescriptor

from bridge import files, watch
from bridge.ownmoves import OWN, OwnMoves
from bridge.watch import _Reader
from taskd.atomic import BRIDGE_TEMP_SUFFIX
from tests.support.spares import spares as spares  # noqa: F401 (a fixture)


@pytest.fixture
def queue_root(tmp_path: Path) -> Path:
    (tmp_path / "task_queue" / "u1").mkdir(parents=True)
    return tmp_path / "task_queue"


@pytest.fixture
def watcher(queue_root: Path) -> Iterator[watch.Watcher]:
    w = watch.Watcher(queue_root, own=OwnMoves())
    w.start()
    yield w
    w.stop()


@pytest.fixture
def bridge_watcher(queue_root: Path) -> Iterator[watch.Watcher]:
    """A watcher on the process-wide announcements of the bridge's own renames, as the bridge
    uses them."""
    w = watch.Watcher(queue_root)
    w.start()
    yield w
    w.stop()


def _seen(w: watch.Watcher, settle: float = 0.3) -> list[tuple[str, str, str | None]]:
    """Everything handed on until nothing more comes for `settle` seconds."""
    out: list[watch.Seen] = []
    stop = threading.Event()
    while True:
        w.wait(settle, stop)
        more = w.drain()
        if not more:
            break
        out += more
    root = str(w.root) + "/"
    return [
        (s.kind, str(s.path).removeprefix(root), str(s.dest).removeprefix(root) if s.dest else None)
        for s in out
    ]


def test_a_file_written_and_closed_is_created_then_closed(
    watcher: watch.Watcher, queue_root: Path
) -> None:
    (queue_root / "u1" / "a.SLOW").write_text("{}")
    assert _seen(watcher) == [("changed", "u1/a.SLOW", None), ("closed", "u1/a.SLOW", None)]


def test_a_foreign_rename_is_one_move_with_both_names(
    watcher: watch.Watcher, queue_root: Path
) -> None:
    (queue_root / "u1" / "a.SLOW").write_text("{}")
    _seen(watcher)
    os.rename(queue_root / "u1" / "a.SLOW", queue_root / "u1" / "b.SLOW")
    assert _seen(watcher) == [("moved", "u1/a.SLOW", "u1/b.SLOW")]


def test_a_file_moved_out_of_the_queue_is_a_move_to_nowhere(
    watcher: watch.Watcher, queue_root: Path
) -> None:
    (queue_root / "u1" / "a.SLOW").write_text("{}")
    _seen(watcher)
    os.rename(queue_root / "u1" / "a.SLOW", queue_root.parent / "away")
    (queue_root / "u1" / "c.SLOW").write_text("{}")
    seen = _seen(watcher, settle=0.7)  # an unpaired half waits MOVE_PAIR_S for the other
    assert ("moved", "u1/a.SLOW", None) in seen
    assert ("closed", "u1/c.SLOW", None) in seen


def test_the_bridges_own_renames_and_rewrites_hand_nothing_on(
    queue_root: Path, tmp_path: Path
) -> None:
    own = OwnMoves()
    w = watch.Watcher(queue_root, own=own)
    w.start()
    try:
        (queue_root / "u1" / "a.SLOW").write_text("{}")
        _seen(w)
        # What the bridge does: announce, then rename or rewrite (bridge/files.py).
        keys = own.expect(queue_root / "u1" / "a.SLOW", queue_root / "u1" / "a-x.SLOW")
        os.rename(queue_root / "u1" / "a.SLOW", queue_root / "u1" / "a-x.SLOW")
        own.expect(None, queue_root / "u1" / "a-x.SLOW")
        tmp = queue_root / "u1" / f".a-x.SLOW.1{BRIDGE_TEMP_SUFFIX}"
        tmp.write_text('{"state": "QUEUED"}')
        os.rename(tmp, queue_root / "u1" / "a-x.SLOW")
        assert _seen(w) == []
        assert len(own) == 0 and keys
        # Someone else's rewrite of the same file is still seen.
        (queue_root / "u1" / "a-x.SLOW").write_text("{}")
        assert ("closed", "u1/a-x.SLOW", None) in _seen(w)
    finally:
        w.stop()


def test_files_announces_its_renames_to_the_watcher(
    queue_root: Path, bridge_watcher: watch.Watcher
) -> None:
    w = bridge_watcher
    path = queue_root / "u1" / "a.SLOW"
    path.write_text("{}")
    _seen(w)
    before = len(OWN)  # what other tests of this process announced outside any watch
    files.rewrite_then_rename(path, path.with_name("a-1.SLOW"), b'{"state": "QUEUED"}')
    files.atomic_write(path.with_name("a-1.SLOW"), b'{"state": "STARTED"}', durable=False)
    assert _seen(w) == []
    assert len(OWN) == before
    with pytest.raises(FileExistsError):
        path.write_text("{}")
        _seen(w)
        files.rename_noreplace(path, path.with_name("a-1.SLOW"))
    assert len(OWN) == before  # a rename not made is taken back


def test_a_new_user_folder_is_watched_and_reported(
    watcher: watch.Watcher, queue_root: Path
) -> None:
    (queue_root / "u2").mkdir()
    time.sleep(0.2)
    (queue_root / "u2" / "b.SLOW").write_text("{}")
    seen = _seen(watcher)
    assert seen[0] == ("dir", "u2", None)
    assert ("closed", "u2/b.SLOW", None) in seen


def test_a_delete_is_reported(watcher: watch.Watcher, queue_root: Path) -> None:
    (queue_root / "u1" / "a.SLOW").write_text("{}")
    _seen(watcher)
    (queue_root / "u1" / "a.SLOW").unlink()
    assert _seen(watcher) == [("deleted", "u1/a.SLOW", None)]


def test_an_overflow_asks_for_one_full_scan(watcher: watch.Watcher) -> None:
    watcher.own.expect(None, watcher.root / "u1" / "x")
    watcher.overflowed()
    watcher.overflowed()
    assert _seen(watcher) == [("dir", str(watcher.root), None)]
    assert len(watcher.own) == 0


def test_the_watcher_thread_is_alive_until_stopped(queue_root: Path) -> None:
    w = watch.Watcher(queue_root, own=OwnMoves())
    assert not w.alive()
    w.start()
    assert w.alive()
    w.stop()
    assert not w.alive()


def test_a_user_folder_renamed_and_back_reports_its_files_under_its_latest_name(
    watcher: watch.Watcher, queue_root: Path
) -> None:
    os.rename(queue_root / "u1", queue_root / "u9")
    time.sleep(0.2)
    os.rename(queue_root / "u9", queue_root / "u1")
    time.sleep(0.2)
    _seen(watcher)
    (queue_root / "u1" / "a.SLOW").write_text("{}")
    assert _seen(watcher) == [("changed", "u1/a.SLOW", None), ("closed", "u1/a.SLOW", None)]


def test_a_folder_inside_a_user_folder_is_not_watched(
    watcher: watch.Watcher, queue_root: Path
) -> None:
    (queue_root / "u1" / "x1.RETRMS").mkdir()
    (queue_root / "u1" / "x1.RETRMS" / "inner").write_text("{}")
    assert _seen(watcher) == []


def test_a_rename_split_by_other_events_is_still_one_move(queue_root: Path) -> None:
    """The kernel queues a rename's two halves separately: another writer's event may come
    between them, and the move must still be one (a running task's file is followed, not
    cancelled)."""
    from watchdog.observers.inotify_c import InotifyConstants as In

    w = watch.Watcher(queue_root, own=OwnMoves())
    folder = watch._Folder(w, os.fsencode(queue_root / "u1"), top=False)
    src, dst = os.fsencode(queue_root / "u1" / "a.SLOW"), os.fsencode(queue_root / "u1" / "b.SLOW")
    other = os.fsencode(queue_root / "u2" / "x.SLOW")
    w.put(folder, src, In.IN_MOVED_FROM, cookie=7)
    w.put(folder, other, In.IN_CLOSE_WRITE)
    assert [(s.kind, s.path.name) for s in w.drain()] == [("closed", "x.SLOW")]  # still pairing
    w.put(folder, dst, In.IN_MOVED_TO, cookie=7)
    moved = w.drain()
    assert [(s.kind, s.path.name, s.dest.name if s.dest else None) for s in moved] == [
        ("moved", "a.SLOW", "b.SLOW")
    ]


def _event(wd: int, mask: int, name: bytes, cookie: int = 0) -> bytes:
    padded = name + b"\0" * (-len(name) % 16 or 16) if name else b""
    return struct.pack("iIII", wd, mask, cookie, len(padded)) + padded


def test_the_reader_drops_the_bridges_own_events_before_making_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Own temp files and announced renames never become event objects; a foreign event, an
    unannounced rename and an overflow do; other global events are ignored."""
    own = OwnMoves()
    own.expect(Path("/q/7/a.NOOP"), Path("/q/7/a-5.NOOP"))
    reader = _Reader({WatchDescriptor(3): b"/q/7"}, own)
    try:
        buffer = b"".join(
            [
                _event(3, In.IN_CREATE, b".a-5.NOOP.1234" + BRIDGE_TEMP_SUFFIX.encode()),
                _event(3, In.IN_MOVED_FROM, b"a.NOOP", cookie=9),
                _event(3, In.IN_MOVED_TO, b"a-5.NOOP", cookie=9),
                _event(3, In.IN_MOVED_TO, b"b.NOOP", cookie=11),
                _event(3, In.IN_CLOSE_WRITE, b"c.NOOP"),
                _event(-1, In.IN_Q_OVERFLOW, b""),
                _event(-1, In.IN_IGNORED, b""),
            ]
        )
        monkeypatch.setattr(reader, "_read_event_buffer", lambda size: buffer)
        seen = [(e.wd, e.mask, e.name) for e in reader.read_events()]
    finally:
        reader.close()
    assert seen == [
        (3, In.IN_MOVED_TO, b"b.NOOP"),
        (3, In.IN_CLOSE_WRITE, b"c.NOOP"),
        (-1, In.IN_Q_OVERFLOW, b""),
    ]
    assert len(own) == 0  # both halves of the announced rename counted off


@pytest.mark.usefixtures("spares")
def test_progress_writes_through_spares_and_batches_reach_the_watcher_as_nothing(
    queue_root: Path, bridge_watcher: watch.Watcher
) -> None:
    """Every way the mirror rewrites a running task's file (a refilled spare, a new temp file,
    a batch of state changes) is the bridge's own: no event of it is handed to the loop."""
    path = queue_root / "u1" / "a-0.SLOW"
    path.write_text("{}")
    _seen(bridge_watcher)
    before = len(OWN)  # what other tests of this process announced outside any watch
    spare = None
    for k in range(1, 5):
        new = path.with_name(f"a-{k}.SLOW")
        files.rename_noreplace(path, new)
        path = new
        data = b'{"k": %d}' % k
        spare = files.rewrite_existing(path, data, False, os.lstat(path), True, spare).spare
    assert spare is not None  # the later writes refilled it
    durable = files.Durable()
    staged = durable.stage(path, b'{"k": "end"}', os.lstat(path), spare)
    assert durable.flush([staged]) == [None]
    files.land(staged, sync_dir=False)
    assert _seen(bridge_watcher) == []
    assert len(OWN) == before


def test_the_running_watcher_drops_the_bridges_own_renames_before_any_callback(
    queue_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader's thread itself filters: an announced rename never reaches a folder's
    callback (watchdog's own loop would parse it past the filter and call back for it)."""
    called: list[bytes] = []
    was = watch._Folder.on_event

    def on_event(self: watch._Folder, event: object) -> None:
        called.append(event.name)  # type: ignore[attr-defined]
        was(self, event)  # type: ignore[arg-type]

    monkeypatch.setattr(watch._Folder, "on_event", on_event)
    own = OwnMoves()
    w = watch.Watcher(queue_root, own=own)
    w.start()
    try:
        path = queue_root / "u1" / "a.NOOP"
        path.write_text("{}")
        assert _seen(w) == [("changed", "u1/a.NOOP", None), ("closed", "u1/a.NOOP", None)]
        called.clear()
        for k in range(1, 20):
            new = path.with_name(f"a-{k}.NOOP")
            own.expect(path, new)
            os.rename(path, new)
            path = new
        assert _seen(w) == []
    finally:
        w.stop()
    assert called == []
    assert len(own) == 0


def test_an_event_that_fails_is_logged_once_and_the_watcher_goes_on(
    queue_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug on one event never ends the watcher's thread: that kind of failure is logged once
    and the next files are still seen."""
    was = watch._Folder.on_event

    def on_event(self: watch._Folder, event: object) -> None:
        if event.name.startswith(b"bad"):  # type: ignore[attr-defined]
            raise ValueError(f"cannot handle {event.name!r}")  # type: ignore[attr-defined]
        was(self, event)  # type: ignore[arg-type]

    monkeypatch.setattr(watch._Folder, "on_event", on_event)
    w = watch.Watcher(queue_root, own=OwnMoves())
    w.start()
    try:
        for k in range(3):
            (queue_root / "u1" / f"bad{k}.NOOP").write_text("{}")
        (queue_root / "u1" / "good.NOOP").write_text("{}")
        assert _seen(w) == [("changed", "u1/good.NOOP", None), ("closed", "u1/good.NOOP", None)]
        assert w.alive()
    finally:
        w.stop()
    failures = [r for r in caplog.records if "could not be handled" in r.getMessage()]
    assert len(failures) == 1
