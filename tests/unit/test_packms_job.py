"""PACKMS effects are idempotent: a second delivery finds the output; a died run leaves nothing."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import pytest

from taskd.sample import write_sample
from taskd.settings import Settings
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
