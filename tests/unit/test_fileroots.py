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


def _pack_check(roots: tuple[Path, ...], raw: str, private: Settings | None = None) -> Path:
    return packms.allowed_file(raw, roots, private.private_folders if private else ())


def test_a_root_swapped_for_a_link_to_the_whole_disk_after_start_packs_nothing(
    tmp_path: Path, shared: Path
) -> None:
    fileroots.pin(Settings(data_root=tmp_path, allowed_file_roots=(shared,)))
    shared.rename(tmp_path / "moved")
    shared.symlink_to("/")
    with pytest.raises(TaskFailed, match="no longer the folder the worker started with"):
        _pack_check((shared,), str(shared / "etc" / "hostname"))


def test_a_root_replaced_by_another_folder_packs_nothing(tmp_path: Path, shared: Path) -> None:
    assert _pack_check((shared,), str(shared / "report.doc")) == shared / "report.doc"
    shared.rename(tmp_path / "moved")
    shared.mkdir()
    (shared / "report.doc").write_text("planted")
    with pytest.raises(TaskFailed, match=r"TASKD_ALLOWED_FILE_ROOTS\) is no longer the folder"):
        _pack_check((shared,), str(shared / "report.doc"))


@pytest.mark.parametrize(
    ("target", "inside"),
    [("/", "etc/hostname"), ("conf", "taskd.env"), ("data", ".taskd/redis.pass")],
)
def test_a_root_made_after_start_as_a_link_packs_nothing(
    tmp_path: Path, target: str, inside: str
) -> None:
    """Made as a link to the configuration or the data root by whoever may write its parent:
    its files would otherwise pass as inside an allowed root."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "taskd.env").write_text("TASKD_REDIS_URL=redis://:secret@h/0\n")
    (tmp_path / "data" / ".taskd").mkdir(parents=True)
    (tmp_path / "data" / ".taskd" / "redis.pass").write_text("secret")
    settings = Settings(data_root=tmp_path / "data", config_dir=tmp_path / "conf")
    late = tmp_path / "late"
    fileroots.pin(settings.with_(allowed_file_roots=(late,)))  # not there at start
    late.symlink_to(target if target == "/" else tmp_path / target)
    with pytest.raises(TaskFailed, match="made after the worker started and is reached"):
        _pack_check((late,), str(late / inside), settings)


def test_a_root_made_after_start_as_a_folder_is_pinned_when_first_used(tmp_path: Path) -> None:
    late = tmp_path / "late"
    fileroots.pin(Settings(data_root=tmp_path, allowed_file_roots=(late,)))
    late.mkdir()
    (late / "a.txt").write_text("a")
    assert _pack_check((late,), str(late / "a.txt")) == late / "a.txt"


def test_one_broken_root_leaves_the_others_usable(tmp_path: Path, shared: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "a.txt").write_text("a")
    roots = (shared, good)
    fileroots.pin(Settings(data_root=tmp_path, allowed_file_roots=roots))
    shared.rename(tmp_path / "moved")
    shared.symlink_to("/")
    assert _pack_check(roots, str(good / "a.txt")) == good / "a.txt"
    with pytest.raises(TaskFailed, match="is no longer the folder"):
        _pack_check(roots, str(shared / "etc" / "hostname"))
