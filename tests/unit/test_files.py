"""The only code that writes task files: atomic rewrite, no-clobber rename, careful reads."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge import files


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _returns_within(fn: Callable[[], Any], seconds: float, unblock: Callable[[], None]) -> Any:
    """fn's outcome (value or exception), failing the test if it blocks past `seconds`."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        unblock()
        thread.join(seconds)
        pytest.fail(f"blocked for more than {seconds} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture(params=["renameat2", "fallback"])
def renamer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """rename_noreplace both ways: the kernel's RENAME_NOREPLACE, and check-then-rename."""
    if request.param == "renameat2" and files._renameat2 is None:
        pytest.skip("no renameat2 in this libc")
    if request.param == "fallback":
        monkeypatch.setattr(files, "_renameat2", None)
    return str(request.param)


# --- atomic_write -------------------------------------------------------------------------


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_replaces_content_and_leaves_no_temp_file(
    tmp_path: Path, durable: bool
) -> None:
    target = tmp_path / "0001-5.PACKMS"
    target.write_bytes(b'{"old": true}')
    files.atomic_write(target, b'{"new": true}', durable=durable)
    assert target.read_bytes() == b'{"new": true}'
    assert _names(tmp_path) == [target.name]


def test_atomic_write_creates_a_missing_file(tmp_path: Path) -> None:
    target = tmp_path / "0001.PACKMS"
    files.atomic_write(target, b"{}", durable=True)
    assert target.read_bytes() == b"{}"
    assert _names(tmp_path) == [target.name]


def test_atomic_write_never_changes_the_old_file_in_place(tmp_path: Path) -> None:
    target = tmp_path / "0001-5.PACKMS"
    target.write_bytes(b"old content")
    with target.open("rb") as reader:
        files.atomic_write(target, b"new content", durable=False)
        assert reader.read() == b"old content"
    assert target.read_bytes() == b"new content"


def test_atomic_write_that_fails_removes_its_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "0001.PACKMS"
    target.mkdir()  # the final rename cannot replace a directory
    with pytest.raises(OSError):
        files.atomic_write(target, b"{}", durable=True)
    assert _names(tmp_path) == [target.name]
    assert target.is_dir()


# --- rename_noreplace ---------------------------------------------------------------------


def test_rename_noreplace_moves_the_file(tmp_path: Path, renamer: str) -> None:
    src, dst = tmp_path / "0001.PACKMS", tmp_path / "0001-0.PACKMS"
    src.write_bytes(b"content")
    files.rename_noreplace(src, dst)
    assert _names(tmp_path) == [dst.name]
    assert dst.read_bytes() == b"content"


def test_rename_noreplace_refuses_to_clobber(tmp_path: Path, renamer: str) -> None:
    src, dst = tmp_path / "0001.PACKMS", tmp_path / "0001-0.PACKMS"
    src.write_bytes(b"mine")
    dst.write_bytes(b"another task's")
    with pytest.raises(FileExistsError):
        files.rename_noreplace(src, dst)
    assert src.read_bytes() == b"mine"
    assert dst.read_bytes() == b"another task's"


def test_rename_noreplace_of_a_missing_file_is_file_not_found(tmp_path: Path, renamer: str) -> None:
    with pytest.raises(FileNotFoundError):
        files.rename_noreplace(tmp_path / "gone.PACKMS", tmp_path / "gone-0.PACKMS")
    assert _names(tmp_path) == []


def test_rename_noreplace_to_the_same_name_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "0001-5.PACKMS"
    path.write_bytes(b"content")
    files.rename_noreplace(path, path)
    assert path.read_bytes() == b"content"


# --- reads --------------------------------------------------------------------------------


def test_read_regular_reads_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "0001.PACKMS"
    path.write_bytes(b"x" * 64)
    assert files.read_regular(path, limit=64) == b"x" * 64


def test_read_regular_raises_too_large_over_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "0001.PACKMS"
    path.write_bytes(b"x" * 65)
    with pytest.raises(files.TooLarge) as caught:
        files.read_regular(path, limit=64)
    assert (caught.value.size, caught.value.limit) == (65, 64)


def test_read_regular_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "0001.PACKMS"
    os.mkfifo(fifo)

    def unblock() -> None:  # a blocked reader returns once a writer opens the FIFO
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    with pytest.raises(files.NotRegularFile):
        _returns_within(lambda: files.read_regular(fifo, limit=1024), 5.0, unblock)


def test_read_regular_refuses_a_symlink_to_a_regular_file(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"{}")
    link = tmp_path / "0001.PACKMS"
    link.symlink_to(target)
    with pytest.raises(files.NotRegularFile):
        files.read_regular(link, limit=1024)


def test_read_regular_refuses_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "0001.PACKMS"
    directory.mkdir()
    with pytest.raises(files.NotRegularFile):
        files.read_regular(directory, limit=1024)


def test_read_regular_of_a_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        files.read_regular(tmp_path / "gone.PACKMS", limit=1024)


def test_signature_is_none_for_a_missing_file(tmp_path: Path) -> None:
    assert files.signature(tmp_path / "gone.PACKMS") is None


def test_signature_changes_when_the_file_is_written(tmp_path: Path) -> None:
    path = tmp_path / "0001.PACKMS"
    path.write_bytes(b"{")
    before = files.signature(path)
    with path.open("ab") as handle:
        handle.write(b"}")
    assert files.signature(path) != before


def test_signature_refuses_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "0001.PACKMS"
    os.mkfifo(fifo)
    with pytest.raises(files.NotRegularFile):
        files.signature(fifo)


# --- taking a new file: the content first, then the name ---------------------------------


def test_rewrite_then_rename_ends_with_one_file_with_new_name_and_content(
    tmp_path: Path,
) -> None:
    old, new = tmp_path / "0001.PACKMS", tmp_path / "0001-0.PACKMS"
    old.write_bytes(b'{"type": "PACKMS"}')
    files.rewrite_then_rename(old, new, b'{"type": "PACKMS", "task-id": "0001"}')
    assert _names(tmp_path) == [new.name]
    assert new.read_bytes() == b'{"type": "PACKMS", "task-id": "0001"}'
