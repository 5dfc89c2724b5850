"""Caps per type: the schema's `x-taskd.max-running`, the file `taskd cap` writes, which jobs
hold a slot, and the bridge's count that keeps a type's jobs back at its cap."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.caps import Caps
from bridge.model import Tracked
from bridge.schedule import INSPECT, KNOWN, Known, decide, holds_slot
from taskcli import cli
from taskd import caps, states
from taskd.tasktypes import RetryPolicy, TaskType, TaskTypeError, load_type, load_types

META = {"task": "tests.support.slowtask.run", "queue": "retrieve"}


def _schema(folder: Path, name: str, **meta: Any) -> Path:
    path = folder / f"{name}.schema.json"
    path.write_text(json.dumps({"type": "object", "x-taskd": {**META, **meta}}))
    return path


def _types(tmp_path: Path, **cap_of: int | None) -> dict[str, TaskType]:
    for name, cap in cap_of.items():
        _schema(tmp_path, name, **({} if cap is None else {"max-running": cap}))
    return {n: t for n, t in load_types([tmp_path]).items() if n in cap_of}


def _task(task_type: TaskType, state: str = states.QUEUED, n: int = 0) -> Tracked:
    fields = {states.JOB_ID: f"job-{task_type.name}-{n}", states.STATE: state}
    return Tracked("u", f"t{n}", task_type, Path(f"/q/u/t{n}.{task_type.name}"), fields)


def test_the_schema_declares_a_cap(tmp_path: Path) -> None:
    assert load_type(_schema(tmp_path, "CAPPED", **{"max-running": 2})).max_running == 2
    assert load_type(_schema(tmp_path, "HELD", **{"max-running": 0})).max_running == 0
    assert load_type(_schema(tmp_path, "FREE")).max_running is None


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2", [1]])
def test_a_cap_that_is_not_a_whole_number_is_refused_naming_the_key(
    tmp_path: Path, bad: object
) -> None:
    with pytest.raises(TaskTypeError, match="x-taskd.max-running must be a whole number"):
        load_type(_schema(tmp_path, "BAD", **{"max-running": bad}))


def test_ops_overrides_win_over_the_schema_and_null_lifts_a_cap(tmp_path: Path) -> None:
    types = _types(tmp_path, A=2, B=3, C=None)
    assert caps.effective(types, {}) == {"A": 2, "B": 3}
    assert caps.effective(types, {"A": 5, "B": None, "C": 0}) == {"A": 5, "C": 0}


def test_the_caps_file_is_written_and_read_back(tmp_path: Path) -> None:
    assert caps.read(tmp_path) == {}
    assert caps.signature(tmp_path) is None
    caps.write(tmp_path, {"PACKMS": 2, "EXEC": None})
    assert caps.read(tmp_path) == {"PACKMS": 2, "EXEC": None}
    assert caps.signature(tmp_path) is not None


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "is not JSON"),
        (b"[1, 2]", "must hold an object"),
        (b'{"PACKMS": -3}', "the cap of PACKMS is '-3'"),
        (b'{"PACKMS": "2"}', "the cap of PACKMS"),
        (b'{"PACKMS": 2.5}', "the cap of PACKMS"),
    ],
)
def test_a_bad_caps_file_says_what_is_wrong(tmp_path: Path, body: bytes, words: str) -> None:
    caps.caps_path(tmp_path).parent.mkdir(parents=True)
    caps.caps_path(tmp_path).write_bytes(body)
    with pytest.raises(caps.CapsError, match=words):
        caps.read(tmp_path)


def test_a_link_in_the_caps_files_place_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"PACKMS": 1}')
    caps.caps_path(tmp_path).parent.mkdir(parents=True)
    os.symlink(secret, caps.caps_path(tmp_path))
    with pytest.raises(caps.CapsError, match="cannot read"):
        caps.read(tmp_path)


@pytest.mark.parametrize(("text", "value"), [("3", 3), (" 0 ", 0), ("none", None), ("NONE", None)])
def test_a_cap_as_ops_type_it(text: str, value: int | None) -> None:
    assert caps.parse_cap(text) == value


@pytest.mark.parametrize("text", ["-1", "two", "1.5", "", str(caps.MAX_CAP + 1)])
def test_a_cap_ops_mistype_is_refused(text: str) -> None:
    with pytest.raises(caps.CapsError):
        caps.parse_cap(text)


RETRY_WAITING = {"status": states.RETRY, "result": {states.META_RETRIES: 1}}


@pytest.mark.parametrize(
    ("state", "known", "holds"),
    [
        (states.QUEUED, Known(None, None), False),  # not published yet
        (states.QUEUED, Known(states.JOB_PUBLISHING, None), True),
        (states.QUEUED, Known(states.JOB_PUBLISHED, None), True),  # in its queue
        (states.STARTED, Known(states.JOB_PUBLISHED, {"status": "STARTED"}, leased=True), True),
        (states.PROGRESS, Known(states.JOB_PUBLISHED, {"status": "PROGRESS"}), True),  # orphan
        (states.STARTED, Known(states.JOB_PUBLISHED, {"status": "REVOKED"}), True),  # run again
        (states.SUCCESS, Known(states.JOB_PUBLISHED, {"status": "SUCCESS"}), False),
        (states.FAILURE, Known(states.JOB_PUBLISHED, {"status": "FAILURE"}), False),
        (states.RETRY, Known(states.JOB_PUBLISHED, RETRY_WAITING, attempt=0), False),
        (states.RETRY, Known(states.JOB_PUBLISHED, RETRY_WAITING, attempt=1), True),
        (states.STARTED, Known(None, None), True),  # Redis lost a running job: run again
        (states.RETRY, Known(None, None), True),
        (states.QUEUED, Known(None, None, leased=True), True),
    ],
)
def test_which_jobs_hold_a_slot(state: str, known: Known, holds: bool) -> None:
    assert holds_slot({states.STATE: state}, known) is holds


def test_a_capped_type_waits_until_the_first_count(tmp_path: Path) -> None:
    types = _types(tmp_path, A=2, FREE=None)
    kept = Caps(tmp_path, types)
    assert not kept.admit(_task(types["A"]))
    assert kept.admit(_task(types["FREE"]))
    kept.recount([], set())
    assert kept.admit(_task(types["A"]))


def test_jobs_beyond_the_cap_are_held_and_counted(tmp_path: Path) -> None:
    types = _types(tmp_path, A=2)
    kept = Caps(tmp_path, types)
    published = Known(states.JOB_PUBLISHED, None)
    kept.recount([(_task(types["A"], n=0), published)], set())
    assert [kept.admit(_task(types["A"], n=n)) for n in (1, 2, 3)] == [True, False, False]
    assert kept.summary() == {"A": {"cap": 2, "running": 2, "held": 2}}


@given(
    cap=st.integers(0, 5),
    holding=st.lists(st.booleans(), max_size=12),
    asks=st.integers(0, 12),
)
def test_never_more_than_the_cap_hold_a_slot(cap: int, holding: list[bool], asks: int) -> None:
    task_type = TaskType("A", {}, "t", "q", (), {}, None, None, RetryPolicy(), max_running=cap)
    kept = Caps(Path("/nonexistent"), {"A": task_type})
    known = [Known(states.JOB_PUBLISHED if h else None, None) for h in holding]
    kept.recount([(_task(task_type, n=n), k) for n, k in enumerate(known)], set())
    waiting = len(holding) - sum(holding)  # counted, QUEUED, not holding: first in line
    admitted = sum(kept.admit(_task(task_type, n=n)) for n in range(len(holding)) if not holding[n])
    admitted += sum(kept.admit(_task(task_type, n=100 + n)) for n in range(asks))
    assert admitted == max(0, min(waiting + asks, cap - sum(holding)))


def test_a_new_caps_file_is_read_at_the_next_refresh_and_a_bad_one_keeps_the_caps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    types = _types(tmp_path, A=2)
    kept = Caps(tmp_path, types)
    assert kept.limits == {"A": 2}
    caps.write(tmp_path, {"A": 7})
    kept.refresh()
    assert kept.limits == {"A": 7}
    caps.caps_path(tmp_path).write_text("{broken")
    with caplog.at_level(logging.ERROR):
        kept.refresh()
        kept.refresh()
    assert kept.limits == {"A": 7}
    assert len([r for r in caplog.records if "is not JSON" in r.message]) == 1


def test_taskd_cap_lists_sets_and_drops_a_cap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = ["--data-root", str(tmp_path)]
    (tmp_path / "task_queue").mkdir()
    assert cli.main(["cap", "PACKMS", "2", *root]) == 0
    assert "PACKMS: 2 (set by ops; the schema says no cap)" in capsys.readouterr().out
    assert caps.read(tmp_path) == {"PACKMS": 2}
    assert cli.main(["cap", "EXEC", "none", *root]) == 0  # a type that is off here too
    assert cli.main(["cap", "PACKMS", "--default", *root]) == 0
    assert "PACKMS: no cap" in capsys.readouterr().out
    assert caps.read(tmp_path) == {"EXEC": None}


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["cap", "NOPE", "1"], cli.EXIT_USAGE, "no task type 'NOPE'"),
        (["cap", "PACKMS"], cli.EXIT_USAGE, "give TYPE and a value"),
        (["cap", "PACKMS", "1", "--default"], cli.EXIT_USAGE, "give TYPE and a value"),
        (["cap", "PACKMS", "lots"], cli.EXIT_BAD, "'lots' is not a cap"),
    ],
)
def test_taskd_cap_refuses_what_it_cannot_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, words: str
) -> None:
    (tmp_path / "task_queue").mkdir()
    assert cli.main([*argv, "--data-root", str(tmp_path)]) == code
    assert words in capsys.readouterr().err
    assert caps.read(tmp_path) == {}


def test_a_job_sent_again_after_a_crash_keeps_its_own_slot(tmp_path: Path) -> None:
    types = _types(tmp_path, A=1)
    kept = Caps(tmp_path, types)
    stuck = _task(types["A"])
    publishing = Known(states.JOB_PUBLISHING, None)
    kept.recount([(stuck, publishing)], set())
    assert kept.admit(stuck, holds_slot(stuck.fields, publishing))  # its own slot
    assert not kept.admit(_task(types["A"], n=1))  # and no other


def test_a_retry_whose_send_was_cut_short_is_looked_for_and_sent_again() -> None:
    meta = {"status": states.RETRY, "result": {states.META_RETRIES: 2}}
    known = Known(states.JOB_PUBLISHING, meta, attempt=2)
    decision = decide({states.STATE: states.RETRY}, known, datetime.now(UTC))
    assert (decision.action, decision.attempt) == (INSPECT, 2)
    sent = Known(states.JOB_PUBLISHED, meta, attempt=2)
    assert decide({states.STATE: states.RETRY}, sent, datetime.now(UTC)).action == KNOWN


def test_files_found_at_start_are_counted_before_a_capped_type_runs(tmp_path: Path) -> None:
    types = _types(tmp_path, A=1)
    kept = Caps(tmp_path, types)
    unread = tmp_path / "task_queue" / "u" / "running-elsewhere.A"
    kept.backlog = {unread}
    kept.recount([], {unread})
    assert not kept.admit(_task(types["A"]))  # that file's job may be running
    kept.recount([], set())
    assert kept.admit(_task(types["A"]))


def test_a_job_taken_between_counts_waits_behind_those_already_waiting(tmp_path: Path) -> None:
    types = _types(tmp_path, A=1)
    kept = Caps(tmp_path, types)
    older = _task(types["A"], n=1)
    kept.recount([(older, Known(None, None))], set())
    assert not kept.admit(_task(types["A"], n=2))  # newer: behind the older one
    assert kept.admit(older)


def test_a_caps_file_bad_from_the_start_leaves_the_schemas_caps(tmp_path: Path) -> None:
    types = _types(tmp_path, A=1)
    caps.caps_path(tmp_path).parent.mkdir(parents=True)
    caps.caps_path(tmp_path).write_text('{"A": 2,}')
    assert Caps(tmp_path, types).limits == {"A": 1}


def test_a_caps_file_nested_past_reason_is_a_caps_error(tmp_path: Path) -> None:
    caps.caps_path(tmp_path).parent.mkdir(parents=True)
    caps.caps_path(tmp_path).write_text("[" * 30000)
    with pytest.raises(caps.CapsError):
        caps.read(tmp_path)


def test_taskd_cap_sets_a_cap_over_a_broken_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "task_queue").mkdir()
    caps.caps_path(tmp_path).parent.mkdir(parents=True)
    caps.caps_path(tmp_path).write_text('{"A": 2,}')
    assert cli.main(["cap", "PACKMS", "2", "--data-root", str(tmp_path)]) == 0
    assert "starting afresh" in capsys.readouterr().err
    assert caps.read(tmp_path) == {"PACKMS": 2}
