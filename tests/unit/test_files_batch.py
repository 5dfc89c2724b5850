"""Taking files (`files.rewrite_then_rename_many`): every new content is durable before any
file is renamed (one flush of the file system for a batch, where that can be trusted), only the
file that was judged is taken (one deleted meanwhile is never brought back, one replaced
meanwhile is left for judging again), and a file that fails ends alone."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from bridge import files
from taskd import atomic

UI = b'{"type": "NOOP"}'


def _batch(folder: Path, n: int) -> list[files.Take]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        old = folder / f"t{i}.NOOP"
        old.write_bytes(UI)
        data = f'{{"task-id": "t{i}"}}'.encode()
        out.append(files.Take(old, folder / f"t{i}-0.NOOP", data, os.lstat(old)))
    return out


@pytest.fixture
def flushes(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Each syncfs made, as the names its folder held at that moment."""
    seen: list[list[str]] = []
    real = atomic.syncfs

    def flush(fd: int) -> None:
        seen.append(sorted(os.listdir(fd)))
        real(fd)

    monkeypatch.setattr(atomic, "syncfs", flush)
    monkeypatch.setattr(files._FLUSH, "until", 0.0)
    return seen


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_no_file_is_renamed_before_the_file_system_is_flushed(
    tmp_path: Path, flushes: list[list[str]]
) -> None:
    batch = _batch(tmp_path / "3", files.SYNCFS_BATCH + 3)
    assert files.rewrite_then_rename_many(batch) == [None] * len(batch)
    assert len(flushes) == 1  # one flush for the whole batch
    names = flushes[0]
    assert [n for n in names if not n.startswith(".")] == sorted(t.old.name for t in batch)
    assert sum(n.endswith(atomic.BRIDGE_TEMP_SUFFIX) for n in names) == len(batch)
    for take in batch:
        assert not take.old.exists() and take.new.read_bytes() == take.data
    assert _names(tmp_path / "3") == sorted(t.new.name for t in batch)


def test_a_small_batch_fsyncs_each_file_instead(tmp_path: Path, flushes: list[list[str]]) -> None:
    batch = _batch(tmp_path / "3", files.SYNCFS_BATCH - 1)
    assert files.rewrite_then_rename_many(batch) == [None] * len(batch)
    assert flushes == [] and all(t.new.read_bytes() == t.data for t in batch)


@pytest.mark.parametrize("n", [1, files.SYNCFS_BATCH + 2], ids=["one file", "a batch"])
def test_a_file_deleted_or_replaced_since_it_was_judged_is_left_as_it_is(
    tmp_path: Path, flushes: list[list[str]], n: int
) -> None:
    batch = _batch(tmp_path / "3", n)
    batch[0].old.unlink()  # the UI cancelled it
    if n > 1:
        batch[1].old.unlink()
        batch[1].old.write_bytes(b'{"type": "NOOP", "again": true}')  # and wrote it anew
    outcome = files.rewrite_then_rename_many(batch)
    assert isinstance(outcome[0], FileNotFoundError)
    assert not batch[0].old.exists() and not batch[0].new.exists()  # never brought back
    if n > 1:
        assert isinstance(outcome[1], FileNotFoundError)  # judged again, as a new file
        assert batch[1].old.read_bytes() == b'{"type": "NOOP", "again": true}'
        assert not batch[1].new.exists()
        assert all(outcome[i] is None for i in range(2, n))
    leftovers = [p for p in (tmp_path / "3").iterdir() if p.name.endswith(".taskd-tmp")]
    assert leftovers == []


@pytest.mark.parametrize("n", [1, files.SYNCFS_BATCH], ids=["one file", "a batch"])
def test_a_taken_new_name_leaves_the_file_as_it_was(tmp_path: Path, n: int) -> None:
    batch = _batch(tmp_path / "3", n)
    batch[0].new.write_bytes(b"someone else's")
    outcome = files.rewrite_then_rename_many(batch)
    assert isinstance(outcome[0], FileExistsError)
    assert batch[0].old.read_bytes() == UI
    assert batch[0].new.read_bytes() == b"someone else's"


def test_a_flush_that_fails_fails_only_the_files_on_that_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = _batch(tmp_path / "3", files.SYNCFS_BATCH)
    monkeypatch.setattr(files._FLUSH, "until", 0.0)

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(atomic, "syncfs", failing)
    outcome = files.rewrite_then_rename_many(batch)
    assert all(isinstance(e, OSError) and e.errno == errno.EIO for e in outcome)
    assert _names(tmp_path / "3") == sorted(t.old.name for t in batch)
    assert all(t.old.read_bytes() == UI for t in batch)


def test_a_folder_gone_fails_only_its_own_files(tmp_path: Path, flushes: list[list[str]]) -> None:
    ok = _batch(tmp_path / "3", files.SYNCFS_BATCH)
    gone = _batch(tmp_path / "4", 2)
    for take in gone:
        take.old.unlink()
    (tmp_path / "4").rmdir()
    outcome = files.rewrite_then_rename_many(ok + gone)
    assert outcome[: len(ok)] == [None] * len(ok)
    assert all(isinstance(e, FileNotFoundError) for e in outcome[len(ok) :])


def test_an_untrusted_file_system_gets_an_fsync_a_file(
    tmp_path: Path, flushes: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files._FLUSH, "types", {})
    monkeypatch.setattr(atomic, "file_system_type", lambda device: "nfs4")
    synced: list[Path] = []
    monkeypatch.setattr(atomic, "fsync_path", synced.append)
    batch = _batch(tmp_path / "3", files.SYNCFS_BATCH)
    assert files.rewrite_then_rename_many(batch) == [None] * len(batch)
    assert flushes == [] and len(synced) == len(batch)


def test_a_slow_flush_falls_back_to_an_fsync_a_file_for_a_while(
    tmp_path: Path, flushes: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files._Flush, "SLOW_S", -1.0)  # every flush counts as slow
    assert (
        files.rewrite_then_rename_many(_batch(tmp_path / "3", files.SYNCFS_BATCH))
        == [None] * files.SYNCFS_BATCH
    )
    assert len(flushes) == 1
    files.rewrite_then_rename_many(_batch(tmp_path / "4", files.SYNCFS_BATCH))
    assert len(flushes) == 1  # the second batch did not flush the file system


def test_the_file_system_type_of_a_real_folder_is_found(tmp_path: Path) -> None:
    assert atomic.file_system_type(os.stat(tmp_path).st_dev) is not None
    assert atomic.file_system_type(-12345 & 0xFFFFFFFF) is None


def test_rewriting_a_deleted_file_never_brings_it_back(tmp_path: Path) -> None:
    path = tmp_path / "t-40.SLOW"
    path.write_text("{}")
    os.chmod(path, 0o640)
    files.rewrite_existing(path, b'{"progress": 41}', durable=False)
    assert path.read_bytes() == b'{"progress": 41}' and (path.stat().st_mode & 0o777) == 0o640
    path.unlink()
    with pytest.raises(FileNotFoundError):
        files.rewrite_existing(path, b'{"progress": 42}', durable=True)
    assert list(tmp_path.iterdir()) == []


def test_two_files_of_one_task_id_in_one_pass_take_one_and_reject_the_other(
    tmp_path: Path,
) -> None:
    bridge, folder = _bridge_on(tmp_path)
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


def _bridge_on(tmp_path: Path) -> tuple[Any, Path]:
    """A bridge with Redis away (intake needs none), and its user folder 3."""
    from bridge.daemon import Bridge
    from taskd.settings import Settings
    from taskd.tasktypes import load_types
    from tests.support.noredis import NoRedis
    from tests.support.procs import SUPPORT_SCHEMAS

    settings = Settings(data_root=tmp_path, settle=0.0)
    folder = settings.task_queue / "3"
    folder.mkdir(parents=True)
    bridge = Bridge(settings, load_types([SUPPORT_SCHEMAS]), app=None, client=NoRedis())  # type: ignore[arg-type]
    return bridge, folder


@pytest.mark.parametrize("others", [0, files.SYNCFS_BATCH], ids=["alone", "in a burst"])
def test_a_file_whose_queued_name_is_taken_is_rejected_saying_by_what(
    tmp_path: Path, others: int
) -> None:
    bridge, folder = _bridge_on(tmp_path)
    (folder / "x-0.SHORT").write_text("not a task of the bridge's")
    for name in ["x.SHORT"] + [f"f{i:02d}.SHORT" for i in range(others)]:
        (folder / name).write_text('{"type": "SHORT"}')
        bridge.intake.note(folder / name, 0.0)
    bridge.intake_once(0.0)
    rejected = json.loads((folder / "x-ERR.SHORT").read_text())
    assert rejected["error"] == "task-id 'x' is already used by x-0.SHORT; use another task-id"
    assert (folder / "x-0.SHORT").read_text() == "not a task of the bridge's"
    assert len(list(folder.glob("f*-0.SHORT"))) == others


@pytest.mark.parametrize("kind", ["folder", "symbolic link"])
def test_a_new_file_whose_name_is_in_the_way_is_rejected_saying_what_is_there(
    tmp_path: Path, kind: str
) -> None:
    """No task file holds the task-id: something else sits at the name it would take."""
    bridge, folder = _bridge_on(tmp_path)
    blocker = folder / "x-0.SHORT"
    if kind == "folder":
        blocker.mkdir()
    else:
        blocker.symlink_to(tmp_path / "nowhere")
    (folder / "x.SHORT").write_text('{"type": "SHORT"}')
    bridge.intake.note(folder / "x.SHORT", 0.0)
    bridge.intake_once(0.0)
    rejected = json.loads((folder / "x-ERR.SHORT").read_text())
    assert rejected["error"] == (
        f"the name 'x-0.SHORT' this task would take is in the way (a {kind}, not a task file): "
        "remove it, or use another task-id"
    )
