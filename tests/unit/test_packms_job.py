"""PACKMS effects are idempotent: a second delivery finds the output; a died run leaves nothing."""

from __future__ import annotations

import os
import tarfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from taskcli.sample import write_sample
from taskd.settings import Settings
from tasks import pack, packms
from tasks.base import Job
from tasks.errors import TaskFailed
from tasks.packms import allowed_file, pack_to_download


def _job(settings: Settings, job_id: str = "job-1") -> Job:
    return Job(
        job_id=job_id,
        type="PACKMS",
        user_id="3",
        task_id="0001",
        fields={"description": "報告 ../../etc/passwd\x00"},
        settings=settings,
        progress=lambda *a, **k: None,
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    write_sample(tmp_path / "mail_db")
    (tmp_path / "files").mkdir()
    return Settings(data_root=tmp_path, allowed_file_roots=(tmp_path / "files",))


MAILS: list[dict[str, Any]] = [{"id": "A11111", "user": "yukoh", "subject": "haha"}]


def _outputs(settings: Settings) -> list[Path]:
    return sorted((settings.download / "3").glob("*.tar.gz"))


def test_a_second_delivery_of_the_same_job_publishes_nothing_new(settings: Settings) -> None:
    job = _job(settings)
    with job.work_dir():
        first = pack_to_download(job, lambda: MAILS, [], lambda d, t: None)
    with job.work_dir():
        second = pack_to_download(job, lambda: MAILS, [], lambda d, t: None)
    assert first == second and _outputs(settings) == [first]
    assert "/" not in first.name and "\x00" not in first.name and ".." not in first.name
    other = _job(settings, "job-2")
    with other.work_dir():
        third = pack_to_download(other, lambda: MAILS, [], lambda d, t: None)
    assert third.name.endswith(" (2).tar.gz")
    with tarfile.open(first) as tar:
        assert any(n.endswith("/mails/A11111.eml") for n in tar.getnames())


def test_a_run_that_died_half_way_leaves_nothing_visible_and_the_rerun_starts_clean(
    settings: Settings,
) -> None:
    job = _job(settings)
    job.tmp_space.mkdir(parents=True)
    (job.tmp_space / f"{job.job_id}.tar.gz").write_bytes(b"half an archive")
    assert _outputs(settings) == []
    with job.work_dir() as tmp:
        assert list(tmp.iterdir()) == []
        output = pack_to_download(job, lambda: MAILS, [], lambda d, t: None)
    assert not job.tmp_space.exists()
    with tarfile.open(output) as tar:
        assert len(tar.getnames()) > 2


@pytest.mark.parametrize(
    "raw",
    ["/etc/passwd", "FILES/../../../../../../../../etc/passwd", "FILES/out", "rel.doc", "FILES/d"],
)
def test_files_outside_the_roots_or_not_regular_are_refused(settings: Settings, raw: str) -> None:
    files = settings.data_root / "files"
    (files / "out").symlink_to("/etc/hostname")
    (files / "d").mkdir()
    with pytest.raises(TaskFailed, match="field 'files'"):
        allowed_file(raw.replace("FILES", str(files)), settings.allowed_file_roots)


def test_a_symlink_inside_the_roots_is_followed(settings: Settings) -> None:
    files = settings.data_root / "files"
    (files / "real.doc").write_bytes(b"x")
    (files / "alias.doc").symlink_to(files / "real.doc")
    assert allowed_file(str(files / "alias.doc"), settings.allowed_file_roots) == (
        files / "real.doc"
    )


def test_a_second_delivery_of_a_finished_retrms_returns_its_result_without_searching(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import retrms

    job = Job(
        job_id="job-r1",
        type="RETRMS",
        user_id="3",
        task_id="0001",
        fields={
            "criterion": {"user": "yukoh", "subject": "haha"},
            "pack": True,
            "retrieve-id": "ABCXYZ",
            "description": "seed",
        },
        settings=settings,
        progress=lambda *a, **k: None,
    )
    first = retrms.run.run(job)
    assert first["matched"] == 6 and first["output"].endswith("seed.tar.gz")

    def no_search(*args: object, **kwargs: object) -> None:
        raise AssertionError("searched again")

    monkeypatch.setattr(retrms, "run_search", no_search)
    assert retrms.run.run(job) == first
    assert _outputs(settings) == [Path(first["output"])]


# --- files: checked, then opened without following links --------------------------------------


def _tree(settings: Settings) -> tuple[Path, Path]:
    """An allowed `files/sub/doc.txt`, and outside the roots a `secret/sub/doc.txt`."""
    inside = settings.data_root / "files" / "sub"
    inside.mkdir()
    (inside / "doc.txt").write_bytes(b"the user's own file\n")
    outside = settings.data_root / "secret" / "sub"
    outside.mkdir(parents=True)
    (outside / "doc.txt").write_bytes(b"SECRET outside the allowed folders\n")
    return inside, outside


def _swap_for_link(folder: Path, target: Path) -> None:
    folder.rename(folder.with_name(folder.name + ".old"))
    folder.symlink_to(target, target_is_directory=True)


def _archived(output: Path) -> bytes:
    with tarfile.open(output) as tar:
        return b"".join(
            handle.read()
            for member in tar.getmembers()
            if (handle := tar.extractfile(member)) is not None
        )


def test_a_folder_swapped_for_a_link_after_the_check_is_not_followed(settings: Settings) -> None:
    inside, outside = _tree(settings)
    raw = str(inside / "doc.txt")
    real, root = packms.allowed_root(raw, settings.allowed_file_roots)
    _swap_for_link(inside, outside)  # between the check and the open
    assert (inside / "doc.txt").read_bytes().startswith(b"SECRET")  # a path would lead out
    with pytest.raises(TaskFailed, match="field 'files'.*changed while it was packed"):
        packms.open_below(root, real, raw)


def test_a_swap_between_listing_and_packing_fails_the_pack_and_packs_nothing_outside(
    settings: Settings,
) -> None:
    inside, outside = _tree(settings)
    members = packms.file_members([str(inside / "doc.txt")], settings)
    _swap_for_link(inside, outside)
    dest = settings.data_root / "out.tar.gz"
    with pytest.raises(TaskFailed, match="changed while it was packed"):
        pack.build_targz(dest, "top", members)
    assert not dest.exists()


def test_a_swap_during_a_packms_job_never_puts_an_outside_file_in_the_archive(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    inside, outside = _tree(settings)
    checked = packms.allowed_root

    def check_then_swap(
        raw: str, roots: Iterable[Path], private: Iterable[tuple[str, Path]] = ()
    ) -> tuple[Path, Path]:
        found = checked(raw, roots, private)
        if not inside.is_symlink():
            _swap_for_link(inside, outside)
        return found

    monkeypatch.setattr(packms, "allowed_root", check_then_swap)
    job = _job(settings)
    with job.work_dir(), pytest.raises(TaskFailed, match="changed while it was packed"):
        pack_to_download(job, lambda: [], [str(inside / "doc.txt")], lambda d, t: None)
    assert _outputs(settings) == []


def test_a_file_replaced_by_another_inside_the_roots_after_listing_fails(
    settings: Settings,
) -> None:
    inside, _ = _tree(settings)
    members = packms.file_members([str(inside / "doc.txt")], settings)
    (inside / "new.txt").write_bytes(b"the user's own file\n")  # same size, another inode
    (inside / "new.txt").replace(inside / "doc.txt")
    with pytest.raises(TaskFailed, match="replaced by another file"):
        pack.build_targz(settings.data_root / "out.tar.gz", "top", members)


def test_allowed_files_are_packed_from_the_checked_file(settings: Settings) -> None:
    inside, _ = _tree(settings)
    (settings.data_root / "files" / "alias.txt").symlink_to(inside / "doc.txt")
    job = _job(settings)
    with job.work_dir():
        output = pack_to_download(
            job, lambda: [], [str(settings.data_root / "files" / "alias.txt")], lambda d, t: None
        )
    assert b"the user's own file" in _archived(output)
    assert b"SECRET" not in _archived(output)


@pytest.mark.parametrize("kind", ["fifo", "dir"])
def test_a_fifo_or_folder_in_files_is_refused_without_waiting(
    settings: Settings, kind: str
) -> None:
    path = settings.data_root / "files" / "odd"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with pytest.raises(TaskFailed, match="not a regular file"):
        packms.file_members([str(path)], settings)


# --- limits -------------------------------------------------------------------------------------


def test_more_files_than_the_limit_fail_naming_field_limit_and_setting(
    settings: Settings,
) -> None:
    (settings.data_root / "files" / "a.doc").write_bytes(b"a")
    small = settings.with_(max_pack_files=3)
    packms.file_members([str(settings.data_root / "files" / "a.doc")] * 3, small)
    with pytest.raises(TaskFailed, match=r"field 'files': 4 entries.*3 \(TASKD_MAX_PACK_FILES\)"):
        packms.file_members([str(settings.data_root / "files" / "a.doc")] * 4, small)


def test_more_mails_than_the_limit_fail_naming_field_limit_and_setting(
    settings: Settings,
) -> None:
    job = _job(settings.with_(max_pack_mails=1))
    with job.work_dir(), pytest.raises(TaskFailed, match="field 'mails'.*1 mails.*MAX_PACK_MAILS"):
        pack_to_download(job, lambda: MAILS * 2, [], lambda d, t: None)
    assert _outputs(settings) == []


def test_more_bytes_than_the_limit_fail_naming_field_limit_and_setting(
    settings: Settings,
) -> None:
    (settings.data_root / "files" / "big.bin").write_bytes(b"x" * 100)
    job = _job(settings.with_(max_pack_bytes=99))
    with job.work_dir(), pytest.raises(TaskFailed, match="field 'files'.*99 bytes.*MAX_PACK_BYTES"):
        pack_to_download(
            job, lambda: [], [str(settings.data_root / "files" / "big.bin")], lambda d, t: None
        )


def test_a_file_listed_many_times_is_packed_once(settings: Settings) -> None:
    files = settings.data_root / "files"
    (files / "a.doc").write_bytes(b"a" * 1000)
    (files / "b.doc").write_bytes(b"b")
    (files / "link.doc").symlink_to(files / "a.doc")  # another way to the same file
    listed = [str(files / "a.doc")] * 300 + [str(files / "link.doc"), str(files / "b.doc")]
    job = _job(settings)
    with job.work_dir():
        output = pack_to_download(job, lambda: [], listed, lambda d, t: None)
    with tarfile.open(output) as tar:
        names = [n.split("/files/")[1] for n in tar.getnames() if "/files/" in n]
    assert names == ["a.doc", "b.doc"]


# --- output markers -----------------------------------------------------------------------------


def test_the_output_marker_lives_outside_download_and_old_ones_are_swept(
    settings: Settings,
) -> None:
    stale = _job(settings, "job-old")
    with stale.work_dir():
        pack_to_download(stale, lambda: MAILS, [], lambda d, t: None)
    old_marker = packms.marker_path(settings, stale)
    week_ago = time.time() - packms.MARKER_KEEP_S - 60
    os.utime(old_marker, (week_ago, week_ago))
    job = _job(settings)
    with job.work_dir():
        output = pack_to_download(job, lambda: MAILS, [], lambda d, t: None)
    marker = packms.marker_path(settings, job)
    assert marker.read_text() == output.name
    assert marker.is_relative_to(settings.data_root / ".taskd") and not old_marker.exists()
    assert [p.name for p in (settings.download / "3").iterdir()] == [
        p.name for p in _outputs(settings)
    ]  # outputs only: no hidden markers, no temp files


def test_a_marker_of_an_older_version_in_download_is_still_honoured(settings: Settings) -> None:
    job = _job(settings)
    with job.work_dir():
        first = pack_to_download(job, lambda: MAILS, [], lambda d, t: None)
    packms.marker_path(settings, job).rename(
        settings.download / "3" / f"{packms.MARKER_PREFIX}{job.job_id}"
    )
    with job.work_dir():
        assert pack_to_download(job, lambda: MAILS, [], lambda d, t: None) == first
    assert _outputs(settings) == [first]
