"""Resource faults: a task file the bridge cannot write, a disk full while packing."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.daemon import Bridge
from bridge.model import Tracked
from taskcli.sample import write_sample
from taskd import atomic
from taskd.settings import Settings
from taskd.tasktypes import load_types
from tasks.base import Job
from tasks.errors import as_retryable
from tasks.packms import pack_to_download
from tests.support.procs import SUPPORT_SCHEMAS


def test_a_task_file_that_cannot_be_rewritten_is_kept_and_written_on_a_later_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_root=tmp_path)
    types = load_types([SUPPORT_SCHEMAS])
    bridge = Bridge(settings, types, app=None, client=None)  # type: ignore[arg-type]
    directory = settings.task_queue / "3"
    directory.mkdir(parents=True)
    fields: dict[str, Any] = {
        "type": "SLOW",
        "task-id": "t1",
        "state": "QUEUED",
        "progress": 0,
        "job-id": "j1",
        "ticket": "AB",
    }
    path = directory / "t1-AB_0.SLOW"
    path.write_text(json.dumps(fields))
    task = Tracked("3", "t1", types["SLOW"], path, fields)
    bridge.table.add(task)
    real_write = atomic.write_temp

    def read_only(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic, "write_temp", read_only)
    bridge.write(task, {"state": "PROGRESS", "progress": 40}, now=10.0)
    monkeypatch.setattr(atomic, "write_temp", real_write)
    renamed = directory / "t1-AB_40.SLOW"
    assert renamed.exists() and json.loads(renamed.read_text())["state"] == "QUEUED"
    assert bridge.table.by_job["j1"].path == renamed
    bridge.write(task, {"state": "PROGRESS", "progress": 40}, now=11.0)
    assert json.loads(renamed.read_text())["progress"] == 40
    assert [p.name for p in directory.iterdir()] == [renamed.name]


def test_a_full_disk_while_packing_is_a_passing_failure_leaving_no_output(tmp_path: Path) -> None:
    write_sample(tmp_path / "mail_db")
    settings = Settings(data_root=tmp_path)
    job = Job(
        "job-full", "PACKMS", "3", "0001", {"description": "full"}, settings, lambda *a, **k: None
    )
    with pytest.raises(OSError) as raised, job.work_dir() as tmp:
        (tmp / f"{job.job_id}.tar.gz").symlink_to("/dev/full")  # every write: ENOSPC
        pack_to_download(job, lambda: [{"id": "A11111", "user": "yukoh"}], [], lambda d, t: None)
    assert raised.value.errno == errno.ENOSPC
    retry = as_retryable(raised.value)
    assert retry is not None and "No space left" in retry.message
    assert not list((settings.download / "3").glob("*.tar.gz"))
    assert not job.tmp_space.exists()


def test_a_write_that_fails_only_when_closed_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A network file system may report a failed write at close(): the error is raised and the
    temp file is gone, as with any other failed write."""
    import os

    real_close = os.close

    def failing_close(fd: int) -> None:
        real_close(fd)
        raise OSError(errno.EDQUOT, "quota exceeded")

    monkeypatch.setattr(atomic.os, "close", failing_close)
    with pytest.raises(OSError, match="quota"):
        atomic.write_temp(tmp_path / "t.json", b"{}", durable=False, suffix=".tmp")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
