"""Spares (`files.Spare`): a tracked file's last content, swapped out by its rewrite and kept to
take its next one. The rewrite must still be atomic for every reader, bring nothing back, keep
the file's mode, and never write through whatever a hostile user puts in the spare's place."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import files
from tests.support.spares import spares as spares  # noqa: F401 (a fixture)


def _task(folder: Path, content: bytes = b'{"state": "QUEUED"}') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "0001.SLOW"
    path.write_bytes(content)
    return path


def _hidden(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith("."))


def _rewrite(path: Path, data: bytes, spare: files.Spare | None) -> files.Spare | None:
    return files.rewrite_existing(path, data, False, os.lstat(path), True, spare).spare


@pytest.mark.usefixtures("spares")
def test_one_spare_takes_every_next_content_and_no_new_inode_is_made(tmp_path: Path) -> None:
    path = _task(tmp_path / "u1")
    spare = _rewrite(path, b"one", None)
    assert spare is not None
    assert _hidden(path.parent) == [spare.path]
    assert spare.path.read_bytes() == b'{"state": "QUEUED"}'  # the old content, swapped out
    inodes = {os.lstat(path).st_ino, spare.ino}
    for n in range(2, 30):
        data = b"x" * (n % 7) + f"content {n}".encode()
        spare = _rewrite(path, data, spare)
        assert spare is not None
        assert path.read_bytes() == data
        assert _hidden(path.parent) == [spare.path]  # one hidden file, the same one
        assert {os.lstat(path).st_ino, spare.ino} == inodes  # the two inodes take turns


def test_without_keep_spares_nothing_is_kept(tmp_path: Path) -> None:
    path = _task(tmp_path / "u1")
    assert _rewrite(path, b"one", None) is None
    assert path.read_bytes() == b"one"
    assert _hidden(path.parent) == []


@pytest.mark.usefixtures("spares")
def test_a_reader_holding_the_old_file_reads_it_whole_after_two_more_rewrites(
    tmp_path: Path,
) -> None:
    path = _task(tmp_path / "u1")
    spare = _rewrite(path, b"first content", None)
    with open(path, "rb") as reader:  # opened before the next swap: holds "first content"
        spare = _rewrite(path, b"second content", spare)
        assert spare is not None and spare.ino == os.fstat(reader.fileno()).st_ino
        spare = _rewrite(path, b"third", spare)  # may not refill the reader's file
        assert path.read_bytes() == b"third"
        assert reader.read() == b"first content"
    assert spare is not None and len(_hidden(path.parent)) == 1


@pytest.mark.usefixtures("spares")
def test_a_mapped_old_file_is_not_refilled(tmp_path: Path) -> None:
    import mmap

    path = _task(tmp_path / "u1")
    spare = _rewrite(path, b"first content", None)
    with open(path, "rb") as reader:
        view = mmap.mmap(reader.fileno(), 0, prot=mmap.PROT_READ)
    spare = _rewrite(path, b"second content", spare)
    spare = _rewrite(path, b"third", spare)
    assert bytes(view) == b"first content"
    view.close()


@pytest.mark.usefixtures("spares")
def test_the_mode_and_group_of_the_task_file_are_kept_when_it_changes_between_writes(
    tmp_path: Path,
) -> None:
    path = _task(tmp_path / "u1")
    os.chmod(path, 0o640)
    spare = _rewrite(path, b"one", None)
    spare = _rewrite(path, b"two", spare)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o640
    os.chmod(path, 0o604)  # changed by the UI: the spare still has 0640
    spare = _rewrite(path, b"three", spare)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o604
    assert path.read_bytes() == b"three"


@pytest.mark.usefixtures("spares")
def test_a_file_another_user_owns_is_never_kept(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    path = _task(tmp_path / "u1")
    os.chown(path, 65534, -1)  # the UI's file, not the bridge's
    assert _rewrite(path, b"one", None) is None
    assert _hidden(path.parent) == []


@pytest.mark.usefixtures("spares")
def test_dropping_a_spare_removes_whatever_has_its_name_and_follows_no_link(tmp_path: Path) -> None:
    path = _task(tmp_path / "u1")
    spare = _rewrite(path, b"one", None)
    assert spare is not None
    files.drop_spare(spare)
    assert _hidden(path.parent) == []
    spare = _rewrite(path, b"two", None)
    assert spare is not None
    spare.path.unlink()
    spare.path.symlink_to(path)  # a link put in its place: removed, not followed
    files.drop_spare(spare)
    assert _hidden(path.parent) == [] and path.read_bytes() == b"two"
    files.drop_spare(None)


def _swap_in_link(spare: Path, outside: Path) -> None:
    spare.unlink()
    spare.symlink_to(outside)


def _swap_in_fifo(spare: Path, _outside: Path) -> None:
    spare.unlink()
    os.mkfifo(spare)


def _swap_in_file(spare: Path, _outside: Path) -> None:
    spare.unlink()
    spare.write_bytes(b"planted")


def _link_elsewhere(spare: Path, outside: Path) -> None:
    outside.unlink()
    os.link(spare, outside)  # the spare's inode, now with a second name


def _delete(spare: Path, _outside: Path) -> None:
    spare.unlink()


HOSTILE = [_swap_in_link, _swap_in_fifo, _swap_in_file, _link_elsewhere, _delete]


@pytest.mark.usefixtures("spares")
@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda f: f.__name__.strip("_"))
def test_nothing_is_written_through_what_was_put_in_the_spares_place(
    tmp_path: Path, hostile: object
) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"not the bridge's")
    path = _task(tmp_path / "u1")
    spare = _rewrite(path, b"one", None)
    assert spare is not None
    hostile(spare.path, outside)  # type: ignore[operator]
    before = outside.read_bytes()
    _rewrite(path, b"two: the next content", spare)
    assert path.read_bytes() == b"two: the next content"
    assert outside.read_bytes() == before


@pytest.mark.usefixtures("spares")
def test_a_deleted_task_file_is_not_brought_back_and_its_spare_is_gone(tmp_path: Path) -> None:
    path = _task(tmp_path / "u1")
    spare = _rewrite(path, b"one", None)
    path.unlink()  # the UI cancelled the task
    with pytest.raises(FileNotFoundError):
        files.rewrite_existing(path, b"two", False, None, True, spare)
    assert not path.exists()
    assert _hidden(path.parent) == []


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.binary(max_size=64)),
        st.tuples(st.just("reader"), st.none()),
        st.tuples(st.sampled_from(range(len(HOSTILE))), st.none()),
    ),
    max_size=25,
)


@pytest.mark.usefixtures("spares")
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_any_mix_of_writes_readers_and_hostile_swaps(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str | int, bytes | None]]
) -> None:
    """Whatever is done to the spare and whoever reads, each rewrite lands its content whole,
    every reader keeps reading what it opened, and nothing outside the task file is written."""
    base = tmp_path_factory.mktemp("ops")
    outside = base / "outside"
    outside.write_bytes(b"outside")
    path = _task(base / "u1", b"start")
    spare: files.Spare | None = None
    readers: list[tuple[BinaryIO, bytes]] = []
    current, outside_bytes, tampered = b"start", b"outside", False
    try:
        for op, data in ops:
            if op == "write":
                assert data is not None
                spare = _rewrite(path, data, spare)
                current, tampered = data, False
                assert path.read_bytes() == current
                assert spare is not None and _hidden(path.parent) == [spare.path]  # one, ever
                assert outside.read_bytes() == outside_bytes
            elif op == "reader":
                readers.append((open(path, "rb"), current))  # noqa: SIM115
            elif isinstance(op, int) and spare is not None and not tampered:
                HOSTILE[op](spare.path, outside)
                outside_bytes, tampered = outside.read_bytes(), True
        for reader, seen in readers:
            assert reader.read() == seen
    finally:
        for reader, _ in readers:
            reader.close()


@pytest.mark.usefixtures("spares")
def test_each_write_gives_the_file_its_own_mode_whatever_the_spare_had(tmp_path: Path) -> None:
    path = _task(tmp_path / "u1")
    spare = _rewrite(path, b"one", None)
    for mode in (0o644, 0o640, 0o600, 0o664):
        os.chmod(path, mode)  # the UI changes the file's mode between two writes
        assert spare is not None
        spare = _rewrite(path, b"content at %o" % mode, spare)
        assert stat.S_IMODE(os.lstat(path).st_mode) == mode
        assert path.read_bytes() == b"content at %o" % mode


@pytest.mark.usefixtures("spares")
def test_a_write_reports_the_signature_of_the_file_it_left(tmp_path: Path) -> None:
    path = _task(tmp_path / "u1")
    spare = None
    for data in (b"one", b"two", b"three"):
        written, spare = files.rewrite_existing(path, data, False, os.lstat(path), True, spare)
        assert written == files.signature(path)


@pytest.mark.usefixtures("spares")
@pytest.mark.parametrize("zero_range", [True, False], ids=["zero-range", "truncation"])
def test_pages_a_reader_queued_by_splice_keep_the_old_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zero_range: bool
) -> None:
    if not zero_range:
        monkeypatch.setattr(files, "_fallocate", None)  # as on tmpfs
    path = _task(tmp_path / "u1", b"A" * 4096)
    spare = _rewrite(path, b"A" * 4096, None)
    read_end, write_end = os.pipe()
    try:
        with open(path, "rb") as reader:  # a server queues the file's pages, then closes it
            assert os.splice(reader.fileno(), write_end, 4096) == 4096
        spare = _rewrite(path, b"B" * 2048, spare)  # swaps the spliced file out
        spare = _rewrite(path, b"C" * 2048, spare)  # refills it
        assert os.read(read_end, 8192) == b"A" * 4096
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.usefixtures("spares")
def test_a_spare_removed_under_a_write_is_no_cancel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _task(tmp_path / "u1")
    spare = _rewrite(path, b"one", None)
    real = files._refill

    def then_gone(spare: files.Spare, *args: object) -> bool:
        done = real(spare, *args)  # type: ignore[arg-type]
        spare.path.unlink()  # a sweep or a hand, between the refill and the swap
        return done

    monkeypatch.setattr(files, "_refill", then_gone)
    spare = _rewrite(path, b"two", spare)
    assert path.read_bytes() == b"two"
    assert spare is not None and _hidden(path.parent) == [spare.path]


@pytest.mark.usefixtures("spares")
def test_no_spare_is_kept_on_a_file_system_not_known_to_be_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _task(tmp_path / "u1")
    monkeypatch.setitem(files._FLUSH.types, os.lstat(path).st_dev, False)  # as NFS would be
    assert _rewrite(path, b"one", None) is None
    assert path.read_bytes() == b"one"
    assert _hidden(path.parent) == []
