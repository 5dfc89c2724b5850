"""A rescan reads a finished task file once; afterwards it only checks that it is unchanged."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from bridge import files
from bridge.daemon import Bridge
from taskd.settings import Settings
from taskd.tasktypes import load_types
from tests.support.procs import SUPPORT_SCHEMAS


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
    reads: list[Path] = []
    real_read = files.read_regular

    def counting(path: Path, limit: int, expect: Any = None) -> bytes:
        reads.append(path)
        return real_read(path, limit, expect)

    monkeypatch.setattr(files, "read_regular", counting)
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
