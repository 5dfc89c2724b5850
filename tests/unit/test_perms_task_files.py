"""A task file the bridge rewrites keeps the mode and the group the UI gave it, whatever the
bridge's umask: on the plain rewrite, on rewrite-then-rename (taking a file, `taskd retry`),
and on rename-then-rewrite (every later change)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tempfile
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge import contract, files, writer
from bridge.model import Table, Tracked
from taskcli.retry import retry_file
from taskd import states
from taskd.settings import Settings
from taskd.tasktypes import load_types

NOGROUP = 65534
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another group needs root")
MODES = [0o600, 0o640, 0o660, 0o644, 0o400]


@pytest.fixture(params=[0o022, 0o077, 0o000], ids=["umask022", "umask077", "umask000"])
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


def _task_file(folder: Path, name: str, fields: dict[str, Any], mode: int, gid: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(fields), encoding="utf-8")
    os.chown(path, -1, gid)
    os.chmod(path, mode)
    return path


def _perms(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_gid, st.st_uid


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


@as_root
@pytest.mark.parametrize("mode", MODES, ids=oct)
@pytest.mark.parametrize("durable", [True, False])
def test_a_rewrite_keeps_the_mode_and_the_group(
    tmp_path: Path, umask: int, mode: int, durable: bool
) -> None:
    path = _task_file(tmp_path, "0001-5.PACKMS", {"type": "PACKMS"}, mode, NOGROUP)
    files.atomic_write(path, b'{"type": "PACKMS", "progress": 6}\n', durable=durable)
    assert path.read_bytes() == b'{"type": "PACKMS", "progress": 6}\n'
    assert _perms(path) == (mode, NOGROUP, os.geteuid())  # the owner stays the bridge's
    assert _no_temp_files(tmp_path)


@as_root
@pytest.mark.parametrize("mode", MODES, ids=oct)
def test_rewrite_then_rename_keeps_the_mode_and_the_group(
    tmp_path: Path, umask: int, mode: int
) -> None:
    old = _task_file(tmp_path, "0001.PACKMS", {"type": "PACKMS"}, mode, NOGROUP)
    new = tmp_path / "0001-0.PACKMS"
    files.rewrite_then_rename(old, new, b'{"task-id": "0001"}\n')
    assert not old.exists() and new.read_bytes() == b'{"task-id": "0001"}\n'
    assert _perms(new) == (mode, NOGROUP, os.geteuid())


@as_root
def test_setuid_and_setgid_bits_are_not_carried_over(tmp_path: Path) -> None:
    path = _task_file(tmp_path, "0001-5.PACKMS", {}, 0o6640, NOGROUP)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o6640
    files.atomic_write(path, b"{}\n", durable=True)
    assert _perms(path)[:2] == (0o640, NOGROUP)


def test_a_group_the_bridge_may_not_give_is_left_and_the_mode_still_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = _task_file(tmp_path, "0001-5.PACKMS", {}, 0o640, os.getegid())
    foreign = os.getegid() + 1

    def refused(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(files, "kept_permissions", lambda p: (0o640, foreign))
    monkeypatch.setattr(os, "fchown", refused)
    with caplog.at_level(logging.DEBUG, logger="taskd.atomic"):
        files.atomic_write(path, b"{}\n", durable=True)
    assert _perms(path)[:2] == (0o640, os.getegid())
    assert f"cannot give it group {foreign}" in caplog.text
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "taskd.atomic")


@as_root
def test_a_bridge_outside_the_files_group_really_gets_eperm_and_keeps_the_mode(
    open_dir: Path,
) -> None:
    """The same, for real: a bridge running as `nobody` rewrites a root-group 0640 file."""
    folder = open_dir / "3"
    folder.mkdir()
    os.chown(folder, NOBODY, NOGROUP)
    path = _task_file(folder, "0001-5.PACKMS", {}, 0o640, 0)
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, rewrite, report by exit code
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOGROUP)
            os.setuid(NOBODY)
            files.atomic_write(path, b'{"state": "STARTED"}\n', durable=True)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert path.read_bytes() == b'{"state": "STARTED"}\n'
    assert _perms(path) == (0o640, NOGROUP, NOBODY)  # mode kept; group not the bridge's to give


def test_a_file_that_is_not_there_gets_the_default_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        files.atomic_write(tmp_path / "0001-5.PACKMS", b"{}\n", durable=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(tmp_path / "0001-5.PACKMS").st_mode) == 0o644


# --- through the bridge's own callers ---------------------------------------------------------

TYPES = load_types()


def _running(path: Path) -> Tracked:
    fields = {
        "type": "PACKMS",
        "files": ["/tmp/a"],
        states.TASK_ID: "0001",
        states.STATE: states.STARTED,
        states.PROGRESS_FIELD: 5,
        states.JOB_ID: str(uuid.uuid4()),
    }
    path.write_text(json.dumps(fields), encoding="utf-8")
    return Tracked("3", "0001", TYPES["PACKMS"], path, fields)


@as_root
@pytest.mark.parametrize("mode", [0o600, 0o640], ids=oct)
def test_a_progress_write_renames_then_rewrites_keeping_mode_and_group(
    tmp_path: Path, umask: int, mode: int
) -> None:
    folder = tmp_path / "task_queue" / "3"
    folder.mkdir(parents=True)
    task = _running(folder / "0001-5.PACKMS")
    os.chown(task.path, -1, NOGROUP)
    os.chmod(task.path, mode)
    table = Table()
    table.add(task)
    core: Any = types.SimpleNamespace(
        settings=Settings(data_root=tmp_path),
        table=table,
        owners=types.SimpleNamespace(note=lambda *args: None),
    )
    writer.write(core, task, {states.PROGRESS_FIELD: 42}, now=100.0)
    assert task.path == folder / "0001-42.PACKMS"
    assert json.loads(task.path.read_text(encoding="utf-8"))[states.PROGRESS_FIELD] == 42
    assert _perms(task.path) == (mode, NOGROUP, os.geteuid())
    assert [p.name for p in folder.iterdir()] == ["0001-42.PACKMS"]


@as_root
@pytest.mark.parametrize("mode", [0o600, 0o640], ids=oct)
def test_taskd_retry_keeps_mode_and_group(tmp_path: Path, umask: int, mode: int) -> None:
    queue = tmp_path / "task_queue"
    fields = {
        "type": "PACKMS",
        "files": ["/tmp/a"],
        states.TASK_ID: "0001",
        states.STATE: states.FAILURE,
        states.PROGRESS_FIELD: 5,
        states.JOB_ID: str(uuid.uuid4()),
        states.ERROR: "broken",
        states.FINISHED_AT: "2026-01-01T00:00:00Z",
    }
    path = _task_file(queue / "3", "0001-ERR.PACKMS", fields, mode, NOGROUP)
    retry_file(path, TYPES, queue)
    (again,) = (queue / "3").iterdir()
    assert json.loads(again.read_text(encoding="utf-8"))[states.STATE] == states.QUEUED
    assert _perms(again) == (mode, NOGROUP, os.geteuid())


def test_the_contract_dump_is_what_the_writer_writes() -> None:
    # The tests above compare parsed content; the bytes are the contract's own.
    assert contract.dump({"a": 1}) == b'{\n  "a": 1\n}\n'
