"""A file taken keeps the content it had (the UI's) as its first spare, while the bridge tracks
few enough tasks: its job's start, the file's first write, then refills that spare instead of
making a new file (2,000 jobs starting at once on a slow disk: 2,000 files not made in the
second they start). A long queue keeps none."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge import files
from bridge.daemon import Bridge
from bridge.passes import intake as intake_pass
from tests.support.spares import spares as spares  # noqa: F401 (a fixture)
from tests.unit.test_bridge_hostile import _drop, _passes
from tests.unit.test_bridge_hostile import bridge as bridge  # noqa: F401 (a fixture)
from tests.unit.test_bridge_hostile import types as types  # noqa: F401 (a fixture)

UI = b'{"type": "NOOP", "description": "as the UI wrote it"}'


def _takes(folder: Path, n: int, keep: bool) -> list[files.Take]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        old = folder / f"t{i}.NOOP"
        old.write_bytes(UI)
        data = b'{"task-id": "t%d", "state": "QUEUED"}' % i
        out.append(files.Take(old, folder / f"t{i}-0.NOOP", data, os.lstat(old), keep))
    return out


def _hidden(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.usefixtures("spares")
def test_a_take_that_keeps_gets_the_uis_content_as_a_hidden_spare(tmp_path: Path) -> None:
    folder = tmp_path / "3"
    batch = _takes(folder, 3, keep=True)
    kept = files.rewrite_then_rename_many(batch)
    assert all(isinstance(k, files.Spare) for k in kept), kept
    assert _hidden(folder) == sorted(k.path for k in kept if isinstance(k, files.Spare))
    for take, spare in zip(batch, kept, strict=True):
        assert isinstance(spare, files.Spare)
        assert spare.path.read_bytes() == UI  # what the UI wrote, not the new content
        assert (spare.dev, spare.ino) == (take.judged.st_dev, take.judged.st_ino)
        assert take.new.read_bytes() == take.data


@pytest.mark.usefixtures("spares")
def test_the_first_write_after_a_take_refills_its_spare_instead_of_making_a_file(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "3"
    (take,) = _takes(folder, 1, keep=True)
    (spare,) = files.rewrite_then_rename_many([take])
    assert isinstance(spare, files.Spare)
    written, after = files.rewrite_existing(take.new, b'{"state": "STARTED"}', True, spare=spare)
    assert take.new.read_bytes() == b'{"state": "STARTED"}'
    assert written is not None and written[0] == spare.ino  # the spare's inode swapped in
    assert after is not None and after.path.read_bytes() == take.data  # the next spare
    assert _hidden(folder) == [after.path]


@pytest.mark.usefixtures("spares")
def test_a_take_that_does_not_keep_or_fails_leaves_no_hidden_file(tmp_path: Path) -> None:
    folder = tmp_path / "3"
    plain = _takes(folder, 2, keep=False)
    assert files.rewrite_then_rename_many(plain) == [None, None]
    clash = _takes(tmp_path / "4", 1, keep=True)
    clash[0].new.write_bytes(b"another task's file")
    (outcome,) = files.rewrite_then_rename_many(clash)
    assert isinstance(outcome, FileExistsError)
    assert _hidden(folder) == [] and _hidden(tmp_path / "4") == []


def test_without_spares_a_take_keeps_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "3"
    assert files.rewrite_then_rename_many(_takes(folder, 2, keep=True)) == [None, None]
    assert _hidden(folder) == []


@pytest.mark.usefixtures("spares")
def test_the_bridge_keeps_first_spares_only_while_it_tracks_few_tasks(
    bridge: Bridge,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(intake_pass, "FIRST_SPARES", 3)
    for i in range(2):
        _drop(bridge, f"a{i}.SLOW", {"type": "SLOW", "steps": 1})
    _passes(bridge)
    for i in range(3):
        _drop(bridge, f"b{i}.SLOW", {"type": "SLOW", "steps": 1})
    _passes(bridge, start=100.0)
    tasks = bridge.table.by_job.values()
    with_spare = sorted(t.task_id for t in tasks if t.spare is not None)
    assert len(tasks) == 5 and with_spare == ["a0", "a1"]
    folder = bridge.settings.task_queue / "3"
    assert _hidden(folder) == sorted(t.spare.path for t in tasks if t.spare is not None)
    bridge.core.drop_spares()  # a clean stop leaves none
    assert _hidden(folder) == []


@pytest.mark.usefixtures("spares")
def test_a_take_that_cannot_be_tracked_leaves_no_spare(
    bridge: Bridge,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = files.signature

    def swapped(path: Path) -> tuple[int, int, int, int] | None:
        if "-" in path.name:  # a hand put a FIFO at the new name just after the rename
            raise files.NotRegularFile(22, "not a regular file", str(path))
        return real(path)

    monkeypatch.setattr(files, "signature", swapped)
    _drop(bridge, "a0.SLOW", {"type": "SLOW", "steps": 1})
    _passes(bridge, rounds=1)
    assert not bridge.table.by_job
    assert _hidden(bridge.settings.task_queue / "3") == []
