"""A batch of takes (`files.rewrite_then_rename_many`): every new content is on disk before any
file is renamed, one flush of the file system for all, and a file that fails ends alone."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from bridge import files
from taskd import atomic


def _batch(folder: Path, n: int) -> list[tuple[Path, Path, bytes]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        old = folder / f"t{i}.NOOP"
        old.write_bytes(b'{"type": "NOOP"}')
        out.append((old, folder / f"t{i}-0.NOOP", f'{{"task-id": "t{i}"}}'.encode()))
    return out


def test_no_file_is_renamed_before_the_file_system_is_flushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = _batch(tmp_path / "3", files.SYNCFS_BATCH + 3)
    seen_at_flush: list[list[str]] = []
    real = atomic.sync_file_system

    def flush(folder: Path) -> None:
        seen_at_flush.append(sorted(p.name for p in folder.iterdir()))
        real(folder)

    monkeypatch.setattr(atomic, "sync_file_system", flush)
    assert files.rewrite_then_rename_many(batch) == [None] * len(batch)
    assert len(seen_at_flush) == 1  # one flush for the whole batch
    names = seen_at_flush[0]
    assert [n for n in names if not n.startswith(".")] == sorted(o.name for o, _, _ in batch)
    assert sum(n.endswith(atomic.BRIDGE_TEMP_SUFFIX) for n in names) == len(batch)
    for old, new, data in batch:
        assert not old.exists() and new.read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "3").iterdir()) == sorted(n.name for _, n, _ in batch)


def test_a_small_batch_fsyncs_each_file_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = _batch(tmp_path / "3", files.SYNCFS_BATCH - 1)
    monkeypatch.setattr(atomic, "sync_file_system", lambda folder: pytest.fail("flushed"))
    assert files.rewrite_then_rename_many(batch) == [None] * len(batch)
    assert all(new.read_bytes() == data for _, new, data in batch)


def test_a_file_gone_or_whose_name_is_taken_fails_alone(tmp_path: Path) -> None:
    batch = _batch(tmp_path / "3", files.SYNCFS_BATCH + 2)
    batch[1][0].unlink()  # deleted by the UI meanwhile
    batch[2][1].write_bytes(b"someone else's")  # the new name is taken
    outcome = files.rewrite_then_rename_many(batch)
    assert isinstance(outcome[1], FileNotFoundError)
    assert not batch[1][0].exists() and not batch[1][1].exists()  # never brought back
    assert isinstance(outcome[2], FileExistsError)
    assert batch[2][1].read_bytes() == b"someone else's"
    assert batch[2][0].read_bytes() == b'{"type": "NOOP"}'  # left as the UI wrote it
    assert all(outcome[i] is None for i in range(3, len(batch)))
    leftovers = [p for p in (tmp_path / "3").iterdir() if p.name.endswith(".taskd-tmp")]
    assert leftovers == []


def test_a_flush_that_fails_renames_nothing_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = _batch(tmp_path / "3", files.SYNCFS_BATCH)

    def failing(folder: Path) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(folder))

    monkeypatch.setattr(atomic, "sync_file_system", failing)
    outcome = files.rewrite_then_rename_many(batch)
    assert all(isinstance(e, OSError) and e.errno == errno.EIO for e in outcome)
    assert sorted(p.name for p in (tmp_path / "3").iterdir()) == sorted(o.name for o, _, _ in batch)
    assert all(old.read_bytes() == b'{"type": "NOOP"}' for old, _, _ in batch)


def test_sync_file_system_flushes_a_real_folder(tmp_path: Path) -> None:
    atomic.sync_file_system(tmp_path)
    with pytest.raises(FileNotFoundError):
        atomic.sync_file_system(tmp_path / "missing")


def test_two_files_of_one_task_id_in_one_pass_take_one_and_reject_the_other(
    tmp_path: Path,
) -> None:
    from bridge.daemon import Bridge
    from taskd.settings import Settings
    from taskd.tasktypes import load_types
    from tests.support.noredis import NoRedis
    from tests.support.procs import SUPPORT_SCHEMAS

    settings = Settings(data_root=tmp_path, settle=0.0)
    folder = settings.task_queue / "3"
    folder.mkdir(parents=True)
    bridge = Bridge(settings, load_types([SUPPORT_SCHEMAS]), app=None, client=NoRedis())  # type: ignore[arg-type]
    names = [f"f{i:02d}.SLOW" for i in range(files.SYNCFS_BATCH)] + ["same.SLOW", "same.SHORT"]
    for name in names:
        (folder / name).write_text(json.dumps({"type": name.rsplit(".", 1)[1]}))
        bridge.intake.note(folder / name, 0.0)
    bridge.intake_once(0.0)
    same = sorted(p.name for p in folder.glob("same*"))
    assert len(same) == 2 and sum("-ERR." in n for n in same) == 1, same
    rejected = next(folder.glob("same-ERR.*"))
    assert "already used" in json.loads(rejected.read_text())["error"]
    taken = [p for p in folder.iterdir() if "-ERR." not in p.name and "-" in p.name]
    assert len(taken) == files.SYNCFS_BATCH + 1


@pytest.mark.parametrize("n", [1, files.SYNCFS_BATCH], ids=["one file", "a batch"])
def test_a_taken_new_name_leaves_the_file_as_it_was(tmp_path: Path, n: int) -> None:
    batch = _batch(tmp_path / "3", n)
    batch[0][1].write_bytes(b"someone else's")
    outcome = files.rewrite_then_rename_many(batch)
    assert isinstance(outcome[0], FileExistsError)
    assert batch[0][0].read_bytes() == b'{"type": "NOOP"}'
    assert batch[0][1].read_bytes() == b"someone else's"


@pytest.mark.parametrize("others", [0, files.SYNCFS_BATCH], ids=["alone", "in a burst"])
def test_a_file_whose_queued_name_is_taken_is_rejected_saying_by_what(
    tmp_path: Path, others: int
) -> None:
    from bridge.daemon import Bridge
    from taskd.settings import Settings
    from taskd.tasktypes import load_types
    from tests.support.noredis import NoRedis
    from tests.support.procs import SUPPORT_SCHEMAS

    settings = Settings(data_root=tmp_path, settle=0.0)
    folder = settings.task_queue / "3"
    folder.mkdir(parents=True)
    bridge = Bridge(settings, load_types([SUPPORT_SCHEMAS]), app=None, client=NoRedis())  # type: ignore[arg-type]
    (folder / "x-0.SHORT").write_text("not a task of the bridge's")
    for name in ["x.SHORT"] + [f"f{i:02d}.SHORT" for i in range(others)]:
        (folder / name).write_text('{"type": "SHORT"}')
        bridge.intake.note(folder / name, 0.0)
    bridge.intake_once(0.0)
    rejected = json.loads((folder / "x-ERR.SHORT").read_text())
    assert rejected["error"] == "task-id 'x' is already used by x-0.SHORT; use another task-id"
    assert (folder / "x-0.SHORT").read_text() == "not a task of the bridge's"
    assert len(list(folder.glob("f*-0.SHORT"))) == others
