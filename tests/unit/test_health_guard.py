"""A disk that refuses writes (full, over quota, read-only): the file waits with pauses growing
to a cap, one line is logged per change of error, the guard reports it held, and it proceeds
once the disk takes writes again. Errors are injected where the bridge writes task files."""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from bridge import dispatch
from bridge.daemon import Bridge
from bridge.guard import BACKOFF_CAP_S, STALE_S, Guard, Held
from bridge.model import Tracked
from bridge.schedule import Known
from taskd import atomic, states
from taskd.settings import Settings
from taskd.tasktypes import TaskType, load_types
from tests.support.noredis import NoRedis
from tests.support.procs import SUPPORT_SCHEMAS

REFUSALS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
}


@pytest.fixture(scope="module")
def types() -> dict[str, TaskType]:
    return load_types([SUPPORT_SCHEMAS])


@pytest.fixture
def bridge(tmp_path: Path, types: dict[str, TaskType]) -> Bridge:
    settings = Settings(data_root=tmp_path, settle=0.0)
    (settings.task_queue / "3").mkdir(parents=True)
    return Bridge(settings, types, app=None, client=NoRedis())  # type: ignore[arg-type]


class Refusing:
    """`atomic.write_temp` (where every write of a task file starts) while the disk refuses:
    the temp file's name (new on every try, as the real one is) rides on the error, as when the
    open of the temp file itself fails."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.calls = 0

    def __call__(self, path: Path, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        temp = path.with_name(f".{secrets.token_hex(8)}.taskd-tmp")
        raise OSError(self.code, os.strerror(self.code), str(temp))


def _lines(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


@pytest.mark.parametrize("code", sorted(REFUSALS), ids=[REFUSALS[c] for c in sorted(REFUSALS)])
def test_a_file_the_disk_refuses_is_taken_later_and_logged_once(
    bridge: Bridge,
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = bridge.settings.task_queue / "3" / "f.SLOW"
    path.write_text('{"type": "SLOW"}')
    refusing = Refusing(code)
    monkeypatch.setattr(atomic, "write_temp", refusing)
    caplog.set_level(logging.INFO, logger="bridge")
    now = 0.0
    for _ in range(6000):  # 5 minutes of a loop turning every 50 ms, each turn an intake pass
        bridge.intake.note(path, now)
        bridge.intake_once(now)
        now += 0.05
    assert len(_lines(caplog, "f.SLOW")) == 1, _lines(caplog, "f.SLOW")
    assert "trying again with growing pauses" in _lines(caplog, "f.SLOW")[0]
    # Pauses of 0.5, 1, 2 ... 30 s: 5 minutes are a dozen tries, not one per pass.
    assert 8 <= refusing.calls <= 16
    reason = f"{REFUSALS[code]} taking task_queue/3/f.SLOW"
    assert bridge.core.guard.held(now, bridge.settings.data_root) == [Held(REFUSALS[code], reason)]
    trouble = bridge.core.guard.troubles[str(path)]
    assert trouble.delay == BACKOFF_CAP_S

    monkeypatch.undo()  # the disk takes writes again
    caplog.set_level(logging.INFO, logger="bridge")
    for _ in range(int(BACKOFF_CAP_S / 0.05) + 2):
        bridge.intake_once(now)
        now += 0.05
    (name,) = [p.name for p in path.parent.iterdir() if not p.name.startswith(".")]
    assert name.startswith("f-")
    assert json.loads((path.parent / name).read_text())["state"] == "QUEUED"
    assert len(_lines(caplog, "works again")) == 1
    assert "taking" in _lines(caplog, "works again")[0]
    assert bridge.core.guard.held(now, bridge.settings.data_root) == []


def test_a_different_error_is_logged_again(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = bridge.settings.task_queue / "3" / "g.SLOW"
    path.write_text('{"type": "SLOW"}')
    caplog.set_level(logging.ERROR, logger="bridge")
    now = 0.0
    for code in (errno.ENOSPC, errno.ENOSPC, errno.EROFS, errno.EROFS):
        monkeypatch.setattr(atomic, "write_temp", Refusing(code))
        for _ in range(400):
            bridge.intake.note(path, now)
            bridge.intake_once(now)
            now += 0.05
    lines = _lines(caplog, "g.SLOW")
    assert len(lines) == 2
    assert "No space left" in lines[0] and "Read-only" in lines[1]


def _running(bridge: Bridge, types: dict[str, TaskType]) -> Tracked:
    fields: dict[str, Any] = {
        "type": "SLOW",
        "task-id": "t1",
        "state": "PROGRESS",
        "progress": 1,
        "job-id": "j1",
        "ticket": "AB",
    }
    path = bridge.settings.task_queue / "3" / "t1-AB_1.SLOW"
    path.write_text(json.dumps(fields))
    task = Tracked("3", "t1", types["SLOW"], path, fields)
    bridge.table.add(task)
    return task


def test_a_running_task_the_disk_refuses_is_logged_once_though_its_name_moves_on(
    bridge: Bridge,
    types: dict[str, TaskType],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The mirror renames first, then writes: each try moves the name on with the progress, so
    the file is held by its job, not its name."""
    task = _running(bridge, types)
    progress = {"n": 1}

    def known(ids: Any, quiet: Any = None) -> tuple[dict[str, Known], str]:
        progress["n"] += 1
        meta = {"status": "PROGRESS", "result": {states.META_PROGRESS: progress["n"]}}
        return {"j1": Known(states.JOB_PUBLISHED, meta)}, "run1"

    monkeypatch.setattr(bridge.core.publisher, "known", known)
    monkeypatch.setattr(dispatch, "publish_when_due", lambda *a, **k: None)
    refusing = Refusing(errno.ENOSPC)
    monkeypatch.setattr(atomic, "write_temp", refusing)
    caplog.set_level(logging.INFO, logger="bridge")
    now = 0.0
    for _ in range(120):  # two minutes of mirror ticks
        bridge.mirror_once(now)
        now += 1.0
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "mirroring" in lines[0].getMessage() and "No space left" in lines[0].getMessage()
    assert refusing.calls <= 10  # pauses growing to 30 s, not a try every tick
    (held,) = bridge.core.guard.held(now, bridge.settings.data_root)
    assert held.error == "no space left on device"
    assert held.reason.startswith("no space left on device mirroring task_queue/3/t1-AB_")
    assert held.reason.endswith(task.path.name)


def test_a_running_task_is_written_when_the_disk_has_room_again(
    bridge: Bridge,
    types: dict[str, TaskType],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = _running(bridge, types)
    real_write = atomic.write_temp

    def known(ids: Any, quiet: Any = None) -> tuple[dict[str, Known], str]:
        meta = {"status": "PROGRESS", "result": {states.META_PROGRESS: 42}}
        return {"j1": Known(states.JOB_PUBLISHED, meta)}, "run1"

    monkeypatch.setattr(bridge.core.publisher, "known", known)
    monkeypatch.setattr(dispatch, "publish_when_due", lambda *a, **k: None)
    monkeypatch.setattr(atomic, "write_temp", Refusing(errno.ENOSPC))
    caplog.set_level(logging.INFO, logger="bridge")
    now = 0.0
    for _ in range(10):
        bridge.mirror_once(now)
        now += 1.0
    assert bridge.core.guard.held(now)
    monkeypatch.setattr(atomic, "write_temp", real_write)
    for _ in range(int(BACKOFF_CAP_S) + 2):
        bridge.mirror_once(now)
        now += 1.0
    assert json.loads(task.path.read_text())["progress"] == 42
    assert task.path.name == "t1-AB_42.SLOW"
    assert bridge.core.guard.held(now) == []
    assert len(_lines(caplog, "works again")) == 1


def test_a_file_no_pass_asks_for_any_more_is_no_longer_held() -> None:
    guard = Guard()

    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    guard.run("/d/task_queue/3/x.SLOW", "taking", 0.0, full)
    assert guard.held(1.0, Path("/d")) == [
        Held("no space left on device", "no space left on device taking task_queue/3/x.SLOW")
    ]
    # Its task ended or the file went: nobody tries it again, so nothing is held for it.
    assert guard.held(1.0 + STALE_S) == []
    assert guard.troubles == {}


def test_an_earlier_step_that_works_does_not_release_the_file(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Judging a file again works while taking it still fails: no 'works again', and the
    pauses keep growing."""
    guard = Guard()
    caplog.set_level(logging.INFO, logger="bridge")

    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    now, delays = 0.0, []
    for _ in range(8):
        now = guard.troubles["k"].retry_at if "k" in guard.troubles else now
        assert guard.run("k", "judging", now, lambda: "take") == "take"
        guard.run("k", "taking", now, full)
        delays.append(guard.troubles["k"].delay)
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert not _lines(caplog, "works again")
    assert len(_lines(caplog, "failed")) == 1
    guard.run("k", "taking", now + 30, lambda: None)
    assert len(_lines(caplog, "taking k works again")) == 1
    assert guard.troubles == {}
