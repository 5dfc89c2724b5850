"""Whatever the allowed roots, PACKMS packs nothing of what only taskd may read: the data root
(unless the root granting the file lies inside it), the mail archive, the configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskd.settings import Settings
from tasks import packms
from tasks.base import Job
from tasks.errors import TaskFailed


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The default root /tmp, holding a data root, a mail archive and a configuration folder
    (as a data root made under /tmp by a test or a trial would be)."""
    data = tmp_path / "data"
    for folder in ("download/3", "retrieve/3", "task_queue/3", "files"):
        (data / folder).mkdir(parents=True)
    (data / "download" / "3" / "other.tar.gz").write_bytes(b"someone's download")
    (data / "retrieve" / "3" / "R1.json").write_text('{"mails": []}')
    (data / "task_queue" / "3" / "0001-5.PACKMS").write_text("{}")
    (data / "files" / "ok.txt").write_text("mine to pack")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "taskd.env").write_text("TASKD_SMTP_URL=smtp://u:secret@mx\n")
    (tmp_path / "archive" / "yukoh").mkdir(parents=True)
    (tmp_path / "archive" / "yukoh" / "1.eml").write_text("Subject: private\n\n")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "report.doc").write_text("shared")
    s = Settings(data_root=data, config_dir=tmp_path / "conf", mail_db=tmp_path / "archive")
    assert s.allowed_file_roots == (Path("/tmp"),)
    return s


def _check(settings: Settings, raw: str | Path) -> Path:
    return packms.allowed_file(str(raw), settings.allowed_file_roots, settings.private_folders)


@pytest.mark.parametrize(
    ("inside", "variable"),
    [
        ("data/download/3/other.tar.gz", "TASKD_DATA_ROOT"),
        ("data/retrieve/3/R1.json", "TASKD_DATA_ROOT"),
        ("data/task_queue/3/0001-5.PACKMS", "TASKD_DATA_ROOT"),
        ("data/files/ok.txt", "TASKD_DATA_ROOT"),  # /tmp grants it, not a root in the data root
        ("conf/taskd.env", "TASKD_CONFIG_DIR"),
        ("archive/yukoh/1.eml", "TASKD_MAIL_DB"),
    ],
)
def test_a_file_taskd_keeps_is_refused_though_a_root_holds_it(
    settings: Settings, tmp_path: Path, inside: str, variable: str
) -> None:
    with pytest.raises(TaskFailed) as caught:
        _check(settings, tmp_path / inside)
    text = str(caught.value)
    assert text.startswith(f"field 'files': {str(tmp_path / inside)!r} is inside ")
    assert f"({variable}), whose files only taskd may read" in text
    assert "copy what you want packed to an allowed folder (/tmp, TASKD_ALLOWED_FILE_ROOTS)" in text


def test_a_link_from_an_allowed_folder_into_the_data_root_is_refused(
    settings: Settings, tmp_path: Path
) -> None:
    link = tmp_path / "shared" / "looks-harmless.doc"
    link.symlink_to(settings.download / "3" / "other.tar.gz")
    with pytest.raises(TaskFailed, match=r"TASKD_DATA_ROOT\), whose files only taskd may read"):
        _check(settings, link)
    folder_link = tmp_path / "shared" / "conf"
    folder_link.symlink_to(tmp_path / "conf")
    with pytest.raises(TaskFailed, match="TASKD_CONFIG_DIR"):
        _check(settings, folder_link / "taskd.env")


def test_files_beside_the_data_root_are_packed(settings: Settings, tmp_path: Path) -> None:
    assert (
        _check(settings, tmp_path / "shared" / "report.doc") == tmp_path / "shared" / "report.doc"
    )


def test_a_root_inside_the_data_root_opens_that_root_only(
    settings: Settings, tmp_path: Path
) -> None:
    inner = settings.with_(allowed_file_roots=(settings.data_root / "files",))
    ok = settings.data_root / "files" / "ok.txt"
    assert _check(inner, ok) == ok
    with pytest.raises(TaskFailed, match="is outside the allowed folders"):
        _check(inner, settings.retrieve / "3" / "R1.json")


def test_a_packms_of_another_users_download_fails_naming_why(settings: Settings) -> None:
    job = Job(
        job_id="j1",
        type="PACKMS",
        user_id="4",
        task_id="0001",
        fields={"files": [str(settings.download / "3" / "other.tar.gz")]},
        settings=settings,
        progress=lambda *a, **k: None,
    )
    with pytest.raises(TaskFailed, match="TASKD_DATA_ROOT"):
        packms.run.run(job)
    assert not (settings.download / "4").exists()
