"""An allowed root swapped after the worker saw it packs nothing (tasks/fileroots.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskd.settings import Settings
from tasks import fileroots, packms
from tasks.errors import TaskFailed


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    root = tmp_path / "shared"
    root.mkdir()
    (root / "report.doc").write_text("shared")
    return root


def _pack_check(root: Path, raw: str) -> Path:
    return packms.allowed_file(raw, (root,))


def test_a_root_swapped_for_a_link_to_the_whole_disk_after_start_packs_nothing(
    tmp_path: Path, shared: Path
) -> None:
    fileroots.pin(Settings(data_root=tmp_path, allowed_file_roots=(shared,)))
    shared.rename(tmp_path / "moved")
    shared.symlink_to("/")
    with pytest.raises(TaskFailed, match="no longer the folder the worker started with"):
        _pack_check(shared, str(shared / "etc" / "hostname"))


def test_a_root_replaced_by_another_folder_packs_nothing(tmp_path: Path, shared: Path) -> None:
    assert _pack_check(shared, str(shared / "report.doc")) == shared / "report.doc"
    shared.rename(tmp_path / "moved")
    shared.mkdir()
    (shared / "report.doc").write_text("planted")
    with pytest.raises(TaskFailed, match=r"TASKD_ALLOWED_FILE_ROOTS\) is no longer the folder"):
        _pack_check(shared, str(shared / "report.doc"))


def test_a_root_first_seen_as_a_link_to_the_whole_disk_is_refused(tmp_path: Path) -> None:
    late = tmp_path / "late"
    late.symlink_to("/")
    with pytest.raises(TaskFailed, match="now resolves to /, the whole disk"):
        _pack_check(late, "/etc/hostname")


def test_a_root_made_after_start_is_pinned_when_first_used(tmp_path: Path) -> None:
    late = tmp_path / "late"
    fileroots.pin(Settings(data_root=tmp_path, allowed_file_roots=(late,)))
    late.mkdir()
    (late / "a.txt").write_text("a")
    assert _pack_check(late, str(late / "a.txt")) == late / "a.txt"
