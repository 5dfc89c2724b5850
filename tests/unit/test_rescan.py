"""A rescan reads a finished task file once; afterwards it only checks that it is unchanged."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from bridge import files
from bridge.daemon import Bridge
from taskd.settings import Settings
from taskd.tasktypes import load_types
from tests.support.procs import SUPPORT_SCHEMAS
from tests.support.reads import count_reads


def finished(directory: Path, task_id: str, state: str = "SUCCESS") -> Path:
    fields = {"type": "SLOW", "task-id": task_id, "state": state, "progress": 100, "job-id": "j"}
    path = directory / f"{task_id}-AB_100.SLOW"
    path.write_text(json.dumps(fields), encoding="utf-8")
    return path


def test_finished_files_are_read_once_until_they_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_root=tmp_path, settle=0.0)
    bridge = Bridge(settings, load_types([SUPPORT_SCHEMAS]), app=None, client=None)  # type: ignore[arg-type]
    directory = settings.task_queue / "3"
    directory.mkdir(parents=True)
    paths = [finished(directory, f"t{n}") for n in range(20)]
    reads = count_reads(monkeypatch)
    bridge.rescan_once(time.monotonic())
    assert sorted(reads) == sorted(paths)  # the first look reads each one

    reads.clear()
    bridge.rescan_once(time.monotonic())
    assert reads == []  # unchanged: a stat each, no read

    paths[3].write_text(paths[3].read_text(encoding="utf-8") + " ", encoding="utf-8")
    paths[5].unlink()
    bridge.rescan_once(time.monotonic())
    assert reads == [paths[3]]  # changed since: read again
    assert str(paths[5]) not in bridge.settled  # gone: forgotten
    assert len(bridge.settled) == 19


def test_a_rescan_lists_only_user_folders_that_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge import watch
    from bridge.passes import reconcile

    monkeypatch.setattr(reconcile, "RACY_S", -10.0)  # folders made just now count as settled
    settings = Settings(data_root=tmp_path, settle=0.0)
    bridge = Bridge(settings, load_types([SUPPORT_SCHEMAS]), app=None, client=None)  # type: ignore[arg-type]
    bridge.core.watched = lambda path: not path.endswith("/5")  # as if 5's watch had failed
    folders = [settings.task_queue / u for u in ("3", "4", "5")]
    for folder in folders:
        folder.mkdir(parents=True)
        for n in range(5):
            finished(folder, f"t{n}")
    (folders[2] / "t0.notify.eml").write_text("To: a@b\n\nhi\n")
    listed: list[str] = []
    real = watch.scan_entries

    def counting(root: Path, top: Path | None = None) -> Any:
        listed.append(Path(top or root).name)
        return real(root, top)

    monkeypatch.setattr(watch, "scan_entries", counting)
    bridge.rescan_once(time.monotonic())  # the first: everything, read and found finished
    assert sorted(listed) == ["3", "4", "5"]
    listed.clear()
    reconcile.rescan_once(bridge.core, time.monotonic())  # the scan alone, before the passes
    assert listed == ["5"]  # nothing changed: only the unwatched folder is listed
    assert len(bridge.settled) == 15
    bridge.core.watched = lambda path: True
    listed.clear()
    reconcile.rescan_once(bridge.core, time.monotonic())
    assert listed == []  # watched now, and as it was when last listed
    assert folders[2] / "t0.notify.eml" in bridge.core.mails  # handed on as a listing would

    (folders[1] / "new.SLOW").write_text('{"type": "SLOW"}')
    listed.clear()
    bridge.rescan_once(time.monotonic())
    assert listed == ["4"]  # the folder a file was made in
    listed.clear()
    for _ in range(reconcile.FULL_RESCAN_EVERY):
        bridge.rescan_once(time.monotonic())
    assert sorted(set(listed)) == ["3", "4", "5"]  # and now and then every one


def _bridge_on(data_root: Path) -> tuple[Bridge, dict[str, Any], Path]:
    """A bridge without Redis, its types, and user 3's folder."""
    settings = Settings(data_root=data_root, settle=0.0)
    types = load_types([SUPPORT_SCHEMAS])
    bridge = Bridge(settings, types, app=None, client=None)  # type: ignore[arg-type]
    directory = settings.task_queue / "3"
    directory.mkdir(parents=True)
    return bridge, dict(types), directory


def test_the_sweep_keeps_the_spares_of_tracked_files_and_removes_other_temp_files(
    tmp_path: Path,
) -> None:
    from bridge.model import Tracked
    from taskd.atomic import BRIDGE_TEMP_SUFFIX

    bridge, types, directory = _bridge_on(tmp_path)
    job_id = str(uuid.uuid4())
    fields = {"type": "SLOW", "task-id": "t1", "state": "PROGRESS", "job-id": job_id}
    path = directory / "t1-AB_5.SLOW"
    path.write_text(json.dumps(fields), encoding="utf-8")
    live = directory / f".0123456789abcdef{BRIDGE_TEMP_SUFFIX}"
    live.write_bytes(b"the last content")
    stale = directory / f".fedcba9876543210{BRIDGE_TEMP_SUFFIX}"
    stale.write_bytes(b"left by a bridge killed mid-write")
    task = Tracked("3", "t1", types["SLOW"], path, fields)
    task.spare = files.Spare(live, *(lambda s: (s.st_dev, s.st_ino))(live.stat()))
    task.written = files.signature(path)
    bridge.core.table.add(task)
    bridge.rescan_once(time.monotonic())
    assert bridge.core.table.by_job == {job_id: task}
    assert live.exists()
    assert not stale.exists()
    bridge.core.table.drop(task)
    bridge.rescan_once(time.monotonic())  # forgotten without its spare dropped: swept
    bridge.core.rescans = 0  # the next one lists every folder
    bridge.rescan_once(time.monotonic())
    assert not live.exists()


def test_a_temp_file_the_sweep_cannot_remove_is_said_once_and_stops_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from taskd.atomic import BRIDGE_TEMP_SUFFIX

    bridge, _, directory = _bridge_on(tmp_path)
    stuck = directory / f".0123456789abcdef{BRIDGE_TEMP_SUFFIX}"
    stuck.write_bytes(b"another user's, in a sticky folder")
    gone = directory / f".fedcba9876543210{BRIDGE_TEMP_SUFFIX}"
    gone.write_bytes(b"removable")
    real_unlink = Path.unlink

    def refusing(self: Path, missing_ok: bool = False) -> None:
        if self == stuck:
            raise PermissionError(1, "Operation not permitted", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refusing)
    for _ in range(3):
        bridge.core.rescans = 0  # each one lists every folder
        bridge.rescan_once(time.monotonic())
    said = [r.getMessage() for r in caplog.records if "cannot remove" in r.getMessage()]
    assert said == [f"cannot remove {stuck.name!r}: Operation not permitted"]
    assert not gone.exists() and stuck.exists()


def test_a_task_tracked_anew_under_its_job_id_and_a_clean_stop_leave_no_spare(
    tmp_path: Path,
) -> None:
    from bridge.model import Tracked

    bridge, types, directory = _bridge_on(tmp_path)
    fields = {"type": "SLOW", "task-id": "t1", "state": "PROGRESS", "job-id": str(uuid.uuid4())}

    def tracked(name: str) -> Tracked:
        spare = directory / f".{name}.taskd-tmp"
        spare.write_bytes(b"last content")
        task = Tracked("3", "t1", types["SLOW"], directory / f"t1-AB_{name}.SLOW", dict(fields))
        task.spare = files.Spare(spare, 0, spare.stat().st_ino)
        return task

    first, second = tracked("1"), tracked("2")
    bridge.core.track(first)
    bridge.core.track(second)  # the same job: the first one's spare goes
    assert [p.name for p in directory.iterdir()] == [".2.taskd-tmp"]
    bridge.core.drop_spares()
    assert list(directory.iterdir()) == []


def test_a_scan_settles_only_clean_finished_files_itself_and_hands_on_the_rest(
    tmp_path: Path,
) -> None:
    """What a first scan settles from one read is what intake would settle; a file with a
    second name, a forged task-id or a link is intake's to judge, as before."""
    from bridge.passes import reconcile

    bridge, _, directory = _bridge_on(tmp_path)
    clean = finished(directory, "t1")
    forged = directory / "t2-AB_100.SLOW"
    forged.write_text(json.dumps({"type": "SLOW", "task-id": "other", "state": "SUCCESS"}))
    linked = finished(directory, "t3")
    os.link(linked, tmp_path / "elsewhere")
    running = directory / "t4-AB_5.SLOW"
    running.write_text(json.dumps({"type": "SLOW", "task-id": "t4", "state": "PROGRESS"}))
    link = directory / "t5-AB_100.SLOW"
    link.symlink_to(clean)
    reconcile.rescan_once(bridge.core, time.monotonic())  # the scan alone, without intake
    assert set(bridge.settled) == {str(clean)}
    assert bridge.core.owners.by_id["3/t1"] == clean.name
    assert set(bridge.core.intake.pending) == {forged, linked, running, link}  # it ignores links


def test_what_the_scan_must_not_settle_or_open_goes_to_intake_and_never_fails_the_scan(
    tmp_path: Path,
) -> None:
    """A forged state of the wrong kind, a file at the top of task_queue/ and a FIFO: the
    first scan leaves each to intake (which rejects or ignores it, saying why), opens no FIFO
    and carries on."""
    import threading

    from bridge.passes import reconcile

    bridge, _, directory = _bridge_on(tmp_path)
    forged = directory / "x.SLOW"
    forged.write_text('{"task-id": "x", "state": []}')
    top = directory.parent / "y-AB_100.SLOW"
    top.write_text(json.dumps({"type": "SLOW", "task-id": "y", "state": "SUCCESS"}))
    fifo = directory / "z-AB_100.SLOW"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: open(fifo, "wb").close(), daemon=True)
    writer.start()  # blocked until something opens the FIFO to read
    reconcile.rescan_once(bridge.core, time.monotonic())
    assert bridge.settled == {}
    assert {forged, fifo} <= set(bridge.core.intake.pending)
    assert writer.is_alive()  # the scan never opened it
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    writer.join(5)
    bridge.intake_once(time.monotonic())
    assert (directory / "x-ERR.SLOW").exists()  # rejected by intake, the scan went on


def test_a_link_swapped_in_after_the_judging_lstat_reads_as_no_regular_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "0001.SLOW"
    path.write_text("{}")
    judged = os.lstat(path)
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(files.NotRegularFile):
        files.read_regular(path, 1000, expect=judged)


def test_the_sweep_leaves_what_another_account_put_under_its_temp_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the bridge's own user's regular files are swept: another account's file that only
    carries a temp file's name, or a link, is left as it is."""
    from bridge.passes import reconcile
    from taskd.atomic import BRIDGE_TEMP_SUFFIX

    bridge, _, directory = _bridge_on(tmp_path)
    theirs = directory / f".mine{BRIDGE_TEMP_SUFFIX}"
    theirs.write_bytes(b"another account's own data")
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    link = directory / f".0123456789abcdef{BRIDGE_TEMP_SUFFIX}"
    link.symlink_to(victim)
    monkeypatch.setattr(reconcile, "_EUID", os.geteuid() + 1)  # as the bridge of another user
    bridge.core.rescans = 0
    bridge.rescan_once(time.monotonic())
    assert theirs.read_bytes() == b"another account's own data"
    monkeypatch.setattr(reconcile, "_EUID", os.geteuid())  # the bridge's own file: swept
    bridge.core.rescans = 0
    bridge.rescan_once(time.monotonic())
    assert not theirs.exists()
    assert link.is_symlink() and victim.read_bytes() == b"keep"
