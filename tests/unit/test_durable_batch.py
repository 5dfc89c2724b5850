"""Changes of state written together (`files.Durable`, `writer.Batch`): a pass's new contents
are staged unflushed, made durable by one flush of the file system (from `SYNCFS_BATCH` files
on, where it is trusted; else an fsync each), and only then swapped in, so no task file's name
ever shows content a crash could lose. A flush that fails fails those files alone: they keep
their old content and the next tick writes them again."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import files
from bridge.daemon import Bridge
from bridge.passes import mirror
from taskd import atomic, states
from tests.support.spares import spares as spares  # noqa: F401 (a fixture)
from tests.unit.test_mirror_glance import States, _meta, _on_disk, _running
from tests.unit.test_mirror_glance import bridge as bridge  # noqa: F401 (a fixture)
from tests.unit.test_mirror_glance import redis_states as redis_states  # noqa: F401

OLD = b'{"state": "QUEUED"}'


@pytest.fixture
def flushes(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, bytes]]:
    """Each syncfs made, as what the task files (not the hidden ones) held at that moment."""
    seen: list[dict[str, bytes]] = []
    real = atomic.syncfs

    def flush(fd: int) -> None:
        names = [n for n in os.listdir(fd) if not n.startswith(".")]
        seen.append({n: _read_at(fd, n) for n in names})
        real(fd)

    monkeypatch.setattr(atomic, "syncfs", flush)
    monkeypatch.setattr(files._FLUSH, "until", 0.0)
    return seen


def _read_at(folder: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY, dir_fd=folder)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def _failing(_: object) -> None:
    raise OSError(errno.EIO, os.strerror(errno.EIO))


def _tasks(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"t{i}.SLOW"
        path.write_bytes(OLD)
        out.append(path)
    return out


def _stage_all(
    durable: files.Durable, paths: list[Path], spares: list[files.Spare | None] | None = None
) -> list[files.Staged]:
    return [
        durable.stage(p, b"new %d" % i, os.lstat(p), spares[i] if spares else None)
        for i, p in enumerate(paths)
    ]


def test_a_batch_is_flushed_once_before_any_file_shows_its_new_content(
    tmp_path: Path, flushes: list[dict[str, bytes]]
) -> None:
    paths = _tasks(tmp_path / "3", files.SYNCFS_BATCH + 3)
    durable = files.Durable()
    staged = _stage_all(durable, paths)
    assert all(p.read_bytes() == OLD for p in paths)  # staged: nothing swapped in yet
    assert durable.flush(staged) == [None] * len(paths)
    assert len(flushes) == 1  # one flush of the file system for them all
    assert set(flushes[0].values()) == {OLD}  # and every name still showed the old content
    for item in staged:
        files.land(item, sync_dir=False)
    assert [p.read_bytes() for p in paths] == [b"new %d" % i for i in range(len(paths))]


def test_a_small_batch_fsyncs_each_file_instead(
    tmp_path: Path, flushes: list[dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    paths = _tasks(tmp_path / "3", files.SYNCFS_BATCH - 1)
    durable = files.Durable()
    staged = _stage_all(durable, paths)
    assert durable.flush(staged) == [None] * len(paths)
    assert flushes == [] and len(synced) == len(paths)


def test_a_failed_flush_fails_its_files_which_keep_their_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files._FLUSH, "until", 0.0)

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(atomic, "syncfs", failing)
    paths = _tasks(tmp_path / "3", files.SYNCFS_BATCH)
    durable = files.Durable()
    errors = durable.flush(_stage_all(durable, paths))
    assert all(isinstance(e, OSError) and e.errno == errno.EIO for e in errors)
    assert all(p.read_bytes() == OLD for p in paths)
    assert sorted(os.listdir(tmp_path / "3")) == sorted(p.name for p in paths)  # no temp left


@pytest.mark.usefixtures("spares")
def test_staged_content_goes_into_each_files_spare(
    tmp_path: Path, flushes: list[dict[str, bytes]]
) -> None:
    paths = _tasks(tmp_path / "3", files.SYNCFS_BATCH)
    first = [files.rewrite_existing(p, b"first", False, os.lstat(p)) for p in paths]
    spares = [r.spare for r in first]
    assert all(s is not None for s in spares)
    durable = files.Durable()
    staged = _stage_all(durable, paths, spares)
    assert [s.tmp for s in staged] == [s.path for s in spares if s is not None]
    assert durable.flush(staged) == [None] * len(paths)
    landed = [files.land(item, sync_dir=False) for item in staged]
    assert all(r.spare is not None for r in landed)
    assert all(r.written == files.signature(p) for r, p in zip(landed, paths, strict=True))


def test_a_file_deleted_before_its_landing_is_not_brought_back(tmp_path: Path) -> None:
    (path,) = _tasks(tmp_path / "3", 1)
    durable = files.Durable()
    staged = _stage_all(durable, [path])
    assert durable.flush(staged) == [None]
    path.unlink()  # the UI cancelled it meanwhile
    with pytest.raises(FileNotFoundError):
        files.land(staged[0], sync_dir=False)
    assert os.listdir(tmp_path / "3") == []


def _start_all(bridge: Bridge, redis_states: States, n: int) -> list:
    tasks = [_running(bridge, i, state=states.QUEUED) for i in range(n)]
    for task in tasks:
        task.published = True
    for i in range(n):
        redis_states.raw[f"j{i}"] = _meta(states.PROGRESS, 30)
    bridge.core.quiet = {t.job_id: None for t in tasks}  # type: ignore[misc]
    return tasks


def test_jobs_starting_together_are_written_with_one_flush(
    bridge: Bridge, redis_states: States, flushes: list[dict[str, bytes]]
) -> None:
    tasks = _start_all(bridge, redis_states, files.SYNCFS_BATCH * 2)
    mirror.glance_once(bridge.core, 100.0)
    assert len(flushes) == 1
    assert all(json.loads(content)["state"] == states.QUEUED for content in flushes[0].values())
    assert all(_on_disk(t)["state"] == states.PROGRESS for t in tasks)
    assert all(t.path.name == f"{t.task_id}-30.SLOW" for t in tasks)


def test_a_failed_flush_holds_the_starts_back_and_a_later_pass_writes_them(
    bridge: Bridge, redis_states: States, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = _start_all(bridge, redis_states, files.SYNCFS_BATCH)
    monkeypatch.setattr(files._FLUSH, "until", 0.0)

    def failing(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "syncfs", failing)
    mirror.glance_once(bridge.core, 100.0)
    assert all(_on_disk(t)["state"] == states.QUEUED for t in tasks)  # nothing half-landed
    assert all(t.job_id not in bridge.core.glanced for t in tasks)  # so the tick looks again
    assert all(t.fields["state"] == states.QUEUED for t in tasks)
    monkeypatch.setattr(atomic, "syncfs", lambda fd: None)
    mirror.glance_once(bridge.core, 200.0)  # past the guard's pause
    assert all(_on_disk(t)["state"] == states.PROGRESS for t in tasks)
    hidden = [n for n in os.listdir(tasks[0].path.parent) if n.startswith(".")]
    assert len(hidden) <= len(tasks)  # at most a spare each: nothing staged was left behind


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 2 * files.SYNCFS_BATCH),
    deleted=st.sets(st.integers(0, 2 * files.SYNCFS_BATCH - 1)),
    fail=st.booleans(),
)
def test_whatever_happens_each_file_shows_old_or_new_content_whole(
    tmp_path_factory: pytest.TempPathFactory, n: int, deleted: set[int], fail: bool
) -> None:
    folder = tmp_path_factory.mktemp("batch") / "3"
    paths = _tasks(folder, n)
    durable = files.Durable()
    staged = _stage_all(durable, paths)
    with pytest.MonkeyPatch.context() as patch:
        if fail:
            patch.setattr(atomic, "syncfs", _failing)
            patch.setattr(files, "_fsync_careful", _failing)
        errors = durable.flush(staged)
    assert all((e is not None) == fail for e in errors)
    for i in deleted & set(range(n)):
        paths[i].unlink()
    for i, (item, error) in enumerate(zip(staged, errors, strict=True)):
        if error is not None:
            files.discard(item)
            continue
        if i in deleted:
            with pytest.raises(FileNotFoundError):
                files.land(item, sync_dir=False)
        else:
            files.land(item, sync_dir=False)
    for i, path in enumerate(paths):
        if i in deleted:
            assert not path.exists()
        else:
            assert path.read_bytes() == (OLD if fail else b"new %d" % i)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_content_put_in_a_staged_files_place_is_swapped_back_out(tmp_path: Path) -> None:
    (path,) = _tasks(tmp_path / "3", 1)
    durable = files.Durable()
    (staged,) = _stage_all(durable, [path])
    stranger = tmp_path / "3" / "stranger"
    stranger.write_bytes(b"not the bridge's")
    os.replace(stranger, staged.tmp)  # another account swaps its own file in
    assert durable.flush([staged]) == [None]
    with pytest.raises(files.StagedChanged):
        files.land(staged, sync_dir=False)
    assert path.read_bytes() == OLD  # the task file as it was, written again by a later pass
    assert os.listdir(tmp_path / "3") == [path.name]


def test_a_file_system_flushed_by_fsyncs_at_its_first_write_stays_so_for_the_batch(
    tmp_path: Path, flushes: list[dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """syncfs reports the errors since its folder was opened: files written before a folder
    could be opened must not be left to one."""
    paths = _tasks(tmp_path / "3", files.SYNCFS_BATCH + 1)
    durable = files.Durable()
    monkeypatch.setattr(files._FLUSH, "until", time.monotonic() + 60)  # a slow flush lately
    first = _stage_all(durable, paths[:1])
    monkeypatch.setattr(files._FLUSH, "until", 0.0)  # the pause is over mid-pass
    rest = [durable.stage(p, b"new", os.lstat(p), None) for p in paths[1:]]
    assert durable.flush(first + rest) == [None] * len(paths)
    assert flushes == []  # an fsync each, none of them left to a syncfs


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_staging_that_fails_leaves_no_descriptor_open(
    bridge: Bridge, redis_states: States, monkeypatch: pytest.MonkeyPatch
) -> None:
    _start_all(bridge, redis_states, 1)

    def full(*args: object, **kwargs: object) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "write_temp", full)
    before = _open_fds()
    for second in range(5):
        mirror.glance_once(bridge.core, 100.0 + 100 * second)
    assert _open_fds() == before


def test_a_start_that_could_not_land_is_looked_at_again(
    bridge: Bridge, redis_states: States, monkeypatch: pytest.MonkeyPatch
) -> None:
    (task,) = _start_all(bridge, redis_states, 1)
    real = files.land

    def refused(staged: files.Staged, sync_dir: bool) -> files.Rewritten:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(files, "land", refused)
    mirror.glance_once(bridge.core, 100.0)
    assert _on_disk(task)["state"] == states.QUEUED
    assert task.job_id not in bridge.core.glanced  # so the tick does not skip it
    monkeypatch.setattr(files, "land", real)
    mirror.glance_once(bridge.core, 200.0)  # past the guard's pause
    assert _on_disk(task)["state"] == states.PROGRESS


def test_a_progress_write_whose_content_was_swapped_is_written_again_not_failed(
    bridge: Bridge, redis_states: States, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = _running(bridge, 1)
    redis_states.raw["j1"] = _meta(states.PROGRESS, 40)
    real = files.rewrite_existing

    def swapped(*args: object, **kwargs: object) -> files.Rewritten:
        raise files.StagedChanged(errno.ESTALE, "its staged content was replaced")

    monkeypatch.setattr(files, "rewrite_existing", swapped)
    mirror.glance_once(bridge.core, 100.0)
    assert task.job_id in bridge.table.by_job and task.fields["progress"] == 10  # not ended
    monkeypatch.setattr(files, "rewrite_existing", real)
    mirror.glance_once(bridge.core, 100.1)
    assert _on_disk(task)["progress"] == 40 and _on_disk(task)["state"] == states.PROGRESS
