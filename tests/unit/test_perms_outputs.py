"""Downloads (PACKMS), result sets (RETRMS) and what marks them get TASKD_OUTPUT_MODE whatever
the umask, the folders made for them the matching folder mode; with the default, a user outside
taskd's group reads none of them."""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskcli.sample import write_sample
from taskd.settings import Settings, folder_mode
from tasks import pack, packms, results, retrms
from tasks.base import Job

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")


@pytest.fixture(params=[0o022, 0o000, 0o077], ids=["umask022", "umask000", "umask077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield int(request.param)
    finally:
        os.umask(old)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder every user may enter (pytest's own tmp_path sits in a folder only root may)."""
    path = Path(tempfile.mkdtemp(prefix="taskd-perms-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def _settings(root: Path, **more: Any) -> Settings:
    data = root / "data"
    write_sample(data / "mail_db")
    (data / "files").mkdir()
    return Settings(data_root=data, allowed_file_roots=(data / "files",), **more)


def _job(settings: Settings, job_type: str, fields: dict[str, Any], job_id: str = "j1") -> Job:
    return Job(
        job_id=job_id,
        type=job_type,
        user_id="3",
        task_id="0001",
        fields=fields,
        settings=settings,
        progress=lambda *a, **k: None,
    )


def _retrms(settings: Settings) -> dict[str, Any]:
    fields = {
        "criterion": {"user": "yukoh", "subject": "haha"},
        "pack": True,
        "retrieve-id": "ABCXYZ",
        "description": "seed",
    }
    out: dict[str, Any] = retrms.run.run(_job(settings, "RETRMS", fields))
    return out


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("mode", [0o640, 0o600, 0o644, 0o660], ids=oct)
def test_a_retrms_that_packs_writes_everything_with_the_configured_mode(
    open_dir: Path, umask: int, mode: int
) -> None:
    settings = _settings(open_dir, output_mode=mode)
    done = _retrms(settings)
    output = Path(done["output"])
    result_set = settings.retrieve / "3" / "ABCXYZ.json"
    marker = packms.marker_path(settings, _job(settings, "RETRMS", {}))
    assert done["matched"] == 6 and output.is_file() and marker.is_file()
    assert (_mode(output), _mode(result_set), _mode(marker)) == (mode, mode, mode)
    made = [
        settings.download,
        settings.download / "3",
        settings.retrieve,
        settings.retrieve / "3",
        settings.data_root / ".taskd",
        marker.parent,
    ]
    assert {_mode(folder) for folder in made} == {folder_mode(mode)}


def test_a_packms_output_gets_the_default_mode(open_dir: Path, umask: int) -> None:
    settings = _settings(open_dir)
    (settings.data_root / "files" / "a.txt").write_text("a")
    job = _job(settings, "PACKMS", {"files": [str(settings.data_root / "files" / "a.txt")]})
    done = packms.run.run(job)
    assert _mode(Path(done["output"])) == 0o640
    assert _mode(settings.download / "3") == 0o750


def test_existing_folders_keep_the_mode_the_operator_gave_them(open_dir: Path) -> None:
    settings = _settings(open_dir)
    (settings.download / "3").mkdir(parents=True)
    os.chmod(settings.download, 0o711)
    os.chmod(settings.download / "3", 0o2770)
    output = Path(_retrms(settings)["output"])
    assert (_mode(settings.download), _mode(settings.download / "3")) == (0o711, 0o2770)
    assert _mode(output) == 0o640


def test_a_result_set_written_alone_gets_its_mode(tmp_path: Path, umask: int) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    target = tmp_path / "retrieve" / "3" / "R1.json"
    header = {"retrieve-id": "R1"}
    assert results.write_result_set(target, scratch, header, iter([{"id": "M1"}]), 0o600) == 1
    assert _mode(target) == 0o600
    assert _mode(target.parent) == _mode(target.parent.parent) == 0o700
    results.write_result_set(target, scratch, header, iter([]))  # the default, over it
    assert _mode(target) == 0o640


def test_an_archive_being_built_is_its_owners_alone(tmp_path: Path, umask: int) -> None:
    work = tmp_path / "work.tar.gz"
    data = b"secret mail"
    member = pack.Member("mails/a.eml", len(data), lambda: io.BytesIO(data))
    pack.build_targz(work, "t", [member])
    assert _mode(work) == 0o600
    published = pack.publish(work, tmp_path, "t", mode=0o640)
    assert _mode(published) == 0o640


def test_an_output_copied_across_file_systems_gets_its_mode(
    tmp_path: Path, umask: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "download"
    out.mkdir()
    work = tmp_path / "t"
    work.write_bytes(b"mine")
    real_link: Callable[..., None] = os.link

    def link_within_download_only(src: Any, dst: Any, **kwargs: Any) -> None:
        if Path(src).parent != out:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", link_within_download_only)
    target = pack.publish(work, out, "r", mode=0o660)
    assert target.read_bytes() == b"mine" and _mode(target) == 0o660
    assert [p.name for p in out.iterdir()] == ["r.tar.gz"]


# --- another user of the machine ---------------------------------------------------------------


def _as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command),
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _open_path_to(path: Path, top: Path) -> None:
    """Let everyone enter every folder from `top` down to `path`'s: only the file's own mode
    then stands between another user and its bytes."""
    folder = path.parent
    while folder != top.parent:
        os.chmod(folder, 0o755)
        folder = folder.parent


@as_root
def test_another_user_cannot_read_a_download_or_a_result_set(open_dir: Path) -> None:
    old = os.umask(0o022)
    try:
        settings = _settings(open_dir)
        done = _retrms(settings)
    finally:
        os.umask(old)
    output = Path(done["output"])
    result_set = settings.retrieve / "3" / "ABCXYZ.json"
    marker = packms.marker_path(settings, _job(settings, "RETRMS", {}))
    # With the default folder mode (0750) nobody cannot even list the user's folders.
    for folder in (settings.download / "3", settings.retrieve / "3"):
        listing = _as_nobody("ls", str(folder))
        assert listing.returncode != 0 and "Permission denied" in listing.stderr
    for secret in (output, result_set, marker):
        _open_path_to(secret, open_dir)
        beside = secret.with_name("readable-control")
        beside.write_text("anyone\n")
        os.chmod(beside, 0o644)
        # The control shows the way in is open; the file itself (0640, root's group) is not.
        assert _as_nobody("cat", str(beside)).stdout == "anyone\n"
        denied = _as_nobody("cat", str(secret))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        assert denied.stdout == ""
    # And the subjects and senders are in there: what the mode protects.
    assert '"subject"' in result_set.read_text(encoding="utf-8")
