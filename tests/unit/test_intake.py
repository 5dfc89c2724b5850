"""Intake on a fake clock: when a file is complete, and what it is (take, reject, adopt, drop)."""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge import files
from bridge.contract import BRIDGE_TEMP_SUFFIX, TaskName
from bridge.intake import ADOPT, DROP, REJECT, TAKE, WAIT, Decision, Intake
from taskd import states
from taskd.settings import Settings
from taskd.tasktypes import TaskType, load_types

ROOT = Path(__file__).resolve().parents[2]
T0 = 1000.0
SETTLE = 0.2
REJECT_AFTER = 10.0
COMPLETE = {"type": "SLOW", "steps": 3}
COMPLETE_RAW = json.dumps(COMPLETE).encode()
HALF_WRITTEN = COMPLETE_RAW[:-4]  # '{"type": "SLOW", "steps"' and nothing more yet


@pytest.fixture(scope="module")
def types() -> dict[str, TaskType]:
    return load_types([ROOT / "tests" / "support" / "schemas"])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_root=tmp_path, settle=SETTLE, reject_after=REJECT_AFTER)


@pytest.fixture
def user_dir(settings: Settings) -> Path:
    directory = settings.task_queue / "3"
    directory.mkdir(parents=True)
    return directory


@pytest.fixture
def intake(settings: Settings, types: dict[str, TaskType]) -> Intake:
    return Intake(settings, types)


@pytest.fixture
def no_open_of(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[Path]]:
    """Paths that must never be opened (os.open is how the bridge opens files)."""
    forbidden: set[Path] = set()
    real_open = os.open

    def guarded(path: Any, *args: Any, **kwargs: Any) -> int:
        if Path(os.fsdecode(path)) in forbidden:
            raise AssertionError(f"{path} was opened")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded)
    yield forbidden


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _kept(decision: Decision) -> bytes:
    """The content a rejected file keeps, whichever way it is kept."""
    fields = decision.verdict.fields
    if states.ORIGINAL_B64 in fields:
        return base64.b64decode(fields[states.ORIGINAL_B64])
    return str(fields[states.ORIGINAL]).encode("utf-8")


# --- complete or not ----------------------------------------------------------------------


def test_a_complete_file_waits_for_settle_then_is_taken(intake: Intake, user_dir: Path) -> None:
    path = _write(user_dir / "0001.SLOW", COMPLETE_RAW)
    intake.note(path, T0)
    assert intake.consider(path, T0).action == WAIT
    assert intake.consider(path, T0 + SETTLE / 2).action == WAIT
    decision = intake.consider(path, T0 + SETTLE + 0.01)
    assert decision.action == TAKE
    assert decision.name == TaskName("3", "0001", "SLOW")
    assert decision.verdict.ok
    assert decision.verdict.fields == COMPLETE


def test_a_closed_complete_file_is_taken_at_once(intake: Intake, user_dir: Path) -> None:
    path = _write(user_dir / "0001.SLOW", COMPLETE_RAW)
    intake.note(path, T0, closed=True)
    decision = intake.consider(path, T0)
    assert decision.action == TAKE
    assert decision.verdict.fields == COMPLETE


def test_a_file_changed_after_its_close_waits_again(intake: Intake, user_dir: Path) -> None:
    path = _write(user_dir / "0001.SLOW", HALF_WRITTEN)
    intake.note(path, T0, closed=True)
    _write(path, COMPLETE_RAW)
    assert intake.consider(path, T0).action == WAIT
    assert intake.consider(path, T0 + SETTLE + 0.01).action == TAKE


def test_a_half_written_file_waits_until_reject_after(intake: Intake, user_dir: Path) -> None:
    path = _write(user_dir / "0001.SLOW", HALF_WRITTEN)
    intake.note(path, T0)
    for now in (T0, T0 + SETTLE + 0.01, T0 + 1.0, T0 + REJECT_AFTER - 0.01):
        assert intake.consider(path, now).action == WAIT, now
    decision = intake.consider(path, T0 + REJECT_AFTER)
    assert decision.action == REJECT
    assert decision.name == TaskName("3", "0001", "SLOW")
    assert decision.verdict.error is not None
    assert "not valid JSON" in decision.verdict.error
    assert "unchanged for 10 s" in decision.verdict.error
    assert decision.verdict.fields == {states.ORIGINAL: HALF_WRITTEN.decode()}


def test_a_closed_half_written_file_still_gets_reject_after(intake: Intake, user_dir: Path) -> None:
    path = _write(user_dir / "0001.SLOW", HALF_WRITTEN)
    intake.note(path, T0, closed=True)
    assert intake.consider(path, T0).action == WAIT
    assert intake.consider(path, T0 + REJECT_AFTER).action == REJECT


def test_a_change_resets_the_settle_clock(intake: Intake, user_dir: Path) -> None:
    path = _write(user_dir / "0001.SLOW", COMPLETE_RAW)
    intake.note(path, T0)
    assert intake.consider(path, T0).action == WAIT
    changed = {"type": "SLOW", "steps": 30}
    _write(path, json.dumps(changed).encode())
    assert intake.consider(path, T0 + SETTLE + 0.01).action == WAIT
    decision = intake.consider(path, T0 + 2 * SETTLE + 0.02)
    assert decision.action == TAKE
    assert decision.verdict.fields == changed


def test_a_change_resets_the_reject_clock(intake: Intake, user_dir: Path) -> None:
    path = _write(user_dir / "0001.SLOW", HALF_WRITTEN[:10])
    intake.note(path, T0)
    assert intake.consider(path, T0).action == WAIT
    _write(path, HALF_WRITTEN)  # the slow writer added some more
    assert intake.consider(path, T0 + 8.0).action == WAIT
    assert intake.consider(path, T0 + REJECT_AFTER + 1.0).action == WAIT
    assert intake.consider(path, T0 + 8.0 + REJECT_AFTER).action == REJECT


# --- what a complete file is --------------------------------------------------------------


def test_a_schema_violation_is_rejected_once_settled(intake: Intake, user_dir: Path) -> None:
    path = _write(user_dir / "0001.SLOW", json.dumps({"type": "SLOW", "steps": "x"}).encode())
    intake.note(path, T0)
    assert intake.consider(path, T0).action == WAIT
    decision = intake.consider(path, T0 + SETTLE + 0.01)
    assert decision.action == REJECT
    assert decision.verdict.error is not None
    assert "'steps'" in decision.verdict.error
    assert decision.verdict.fields == {"type": "SLOW", "steps": "x"}


def test_an_unknown_type_is_rejected(intake: Intake, user_dir: Path) -> None:
    path = _write(user_dir / "0001.NOPE", b'{"type": "NOPE"}')
    intake.note(path, T0, closed=True)
    decision = intake.consider(path, T0)
    assert decision.action == REJECT
    assert decision.verdict.error is not None
    assert "'NOPE'" in decision.verdict.error


def test_a_non_utf8_file_is_rejected_after_reject_after_keeping_it(
    intake: Intake, user_dir: Path
) -> None:
    raw = '{"type": "SLOW", "label": "搜尋"}'.encode("big5")
    path = _write(user_dir / "0001.SLOW", raw)
    intake.note(path, T0, closed=True)
    assert intake.consider(path, T0).action == WAIT
    decision = intake.consider(path, T0 + REJECT_AFTER)
    assert decision.action == REJECT
    assert list(decision.verdict.fields) == [states.ORIGINAL_B64]
    assert _kept(decision) == raw


def test_a_file_owned_by_the_bridge_is_adopted_without_waiting(
    intake: Intake, user_dir: Path
) -> None:
    fields = {
        "type": "SLOW",
        "ticket": "ABCDEFGHJK",
        "task-id": "0001",
        "state": "PROGRESS",
        "progress": 5,
        "job-id": "job-1",
    }
    path = _write(user_dir / "0001-ABCDEFGHJK_5.SLOW", json.dumps(fields, indent=2).encode())
    intake.note(path, T0)  # no close event: the bridge's writes are atomic renames
    decision = intake.consider(path, T0)
    assert decision.action == ADOPT
    assert decision.name == TaskName("3", "0001-ABCDEFGHJK_5", "SLOW")
    assert decision.fields == fields


def test_the_bridges_own_rejected_file_is_adopted_not_rejected_again(
    intake: Intake, user_dir: Path
) -> None:
    fields = {"original": "{oops", "task-id": "0001", "state": "REJECTED", "error": "bad"}
    path = _write(user_dir / "0001-ERR.SLOW", json.dumps(fields).encode())
    intake.note(path, T0, closed=True)
    assert intake.consider(path, T0).action == ADOPT


def test_a_fifo_is_dropped_and_never_opened(
    intake: Intake, user_dir: Path, no_open_of: set[Path]
) -> None:
    fifo = user_dir / "0001.SLOW"
    os.mkfifo(fifo)
    no_open_of.add(fifo)
    intake.note(fifo, T0)
    intake.note(fifo, T0, closed=True)
    assert intake.consider(fifo, T0 + REJECT_AFTER).action == DROP


def test_a_symlink_is_dropped(intake: Intake, user_dir: Path, tmp_path: Path) -> None:
    target = _write(tmp_path / "elsewhere.json", COMPLETE_RAW)
    link = user_dir / "0001.SLOW"
    link.symlink_to(target)
    intake.note(link, T0, closed=True)
    assert intake.consider(link, T0 + REJECT_AFTER).action == DROP


def test_a_vanished_file_is_dropped(intake: Intake, user_dir: Path) -> None:
    path = _write(user_dir / "0001.SLOW", COMPLETE_RAW)
    intake.note(path, T0, closed=True)
    path.unlink()
    assert intake.consider(path, T0).action == DROP


def test_a_too_large_file_is_rejected_unread_and_its_bytes_kept_aside(
    settings: Settings, types: dict[str, TaskType], user_dir: Path
) -> None:
    intake = Intake(settings.with_(max_task_bytes=64), types)
    raw = b"\xff\xfe" + bytes(range(256)) * 4
    path = _write(user_dir / "0001.SLOW", raw)
    intake.note(path, T0, closed=True)
    decision = intake.consider(path, T0)
    assert decision.action == REJECT
    assert decision.name == TaskName("3", "0001", "SLOW")
    assert decision.verdict.error is not None
    assert "TASKD_MAX_TASK_BYTES" in decision.verdict.error
    # Any size may come: nothing of it is read into the verdict, its bytes are kept beside.
    assert decision.verdict.fields == {}
    assert decision.keep_aside


def test_a_too_large_text_file_is_rejected_to_be_kept_aside(
    settings: Settings, types: dict[str, TaskType], user_dir: Path
) -> None:
    intake = Intake(settings.with_(max_task_bytes=64), types)
    raw = json.dumps({"type": "SLOW", "label": "搜尋" * 40}, ensure_ascii=False).encode()
    path = _write(user_dir / "0001.SLOW", raw)
    intake.note(path, T0, closed=True)
    decision = intake.consider(path, T0)
    assert decision.action == REJECT
    assert decision.keep_aside and decision.verdict.fields == {}


def test_a_deeply_nested_file_is_rejected_not_raised(intake: Intake, user_dir: Path) -> None:
    depth = 50_000
    raw = b'{"type": "SLOW", "label": ' + b"[" * depth + b"]" * depth + b"}"
    path = _write(user_dir / "0001.SLOW", raw)
    intake.note(path, T0, closed=True)
    assert intake.consider(path, T0 + REJECT_AFTER).action == REJECT


# --- what is not noted --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "0001.notify.eml",
        ".0001.SLOW",
        f".0001.SLOW.1a2b3c4d{BRIDGE_TEMP_SUFFIX}",
        "0001.SLOW~",
        "#0001.SLOW#",
    ],
)
def test_files_that_are_not_tasks_are_not_pending(
    intake: Intake, user_dir: Path, name: str
) -> None:
    path = _write(user_dir / name, COMPLETE_RAW)
    intake.note(path, T0, closed=True)
    assert intake.pending == {}


def test_paths_outside_the_user_directories_are_not_pending(
    intake: Intake, settings: Settings, tmp_path: Path
) -> None:
    intake.note(tmp_path / "0001.SLOW", T0)
    intake.note(settings.task_queue / "0001.SLOW", T0)
    intake.note(settings.task_queue / "a b" / "0001.SLOW", T0)
    intake.note(settings.task_queue / "3" / "sub" / "0001.SLOW", T0)
    assert intake.pending == {}


def test_an_ignored_path_is_logged_once(
    intake: Intake, user_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = user_dir / "0001.notify.eml"
    with caplog.at_level(logging.INFO, logger="bridge.intake"):
        intake.note(path, T0)
        intake.note(path, T0 + 1)
    assert [str(path) in r.getMessage() for r in caplog.records].count(True) == 1


def test_forget_removes_a_pending_file(intake: Intake, user_dir: Path) -> None:
    path = _write(user_dir / "0001.SLOW", COMPLETE_RAW)
    intake.note(path, T0)
    intake.forget(path)
    assert intake.pending == {}


def test_a_closed_new_file_is_read_once_to_be_taken(
    intake: Intake, user_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(user_dir / "0001.SLOW", COMPLETE_RAW)
    reads: list[Path] = []
    real = files.read_regular

    def counted(where: Path, limit: int, expect: Any = None) -> bytes:
        reads.append(where)
        return real(where, limit, expect)

    monkeypatch.setattr(files, "read_regular", counted)
    intake.note(path, T0, closed=True)
    assert intake.consider(path, T0).action == TAKE
    assert reads == [path]
