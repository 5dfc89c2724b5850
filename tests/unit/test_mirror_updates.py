"""What a job's Celery backend meta means for its task file (`updates_for`, pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.contract import merge
from bridge.mirror import updates_for
from taskd import jobs, states

NOW = "2024-05-01T10:00:00Z"
QUEUED_FILE: dict[str, Any] = {
    "type": "PACKMS",
    "task-id": "0001",
    "state": "QUEUED",
    "progress": 0,
    "job-id": "job-1",
    "queued-at": "2024-05-01T09:59:00Z",
}
RUNNING_FILE: dict[str, Any] = {
    **QUEUED_FILE,
    "state": "PROGRESS",
    "progress": 42,
    "started-at": "2024-05-01T09:59:30Z",
    "worker": "w1@h",
    "tmp-space": "/data/work_space/3/0001/job-1",
}


def _progress_meta(progress: Any, **fields: Any) -> dict[str, Any]:
    return {
        "status": "PROGRESS",
        "result": {
            "progress": progress,
            "fields": fields,
            "worker": "w1@h",
            "started-at": "2024-05-01T09:59:30Z",
        },
    }


def test_no_meta_gives_no_update() -> None:
    assert updates_for(None, QUEUED_FILE, NOW) == {}


def test_pending_gives_no_update() -> None:
    assert updates_for({"status": "PENDING", "result": None}, QUEUED_FILE, NOW) == {}


def test_started_gives_state_and_worker() -> None:
    meta = {"status": "STARTED", "result": {"pid": 4242, "hostname": "w1@h"}}
    updates = updates_for(meta, QUEUED_FILE, NOW)
    assert updates[states.STATE] == "STARTED"
    assert updates[states.WORKER] == "w1@h"
    assert updates[states.PROGRESS_FIELD] == 0
    assert updates[states.STARTED_AT] == NOW


def test_progress_meta_gives_progress_and_task_fields() -> None:
    updates = updates_for(_progress_meta(42, **{"tmp-space": "/x"}), QUEUED_FILE, NOW)
    assert updates[states.STATE] == "PROGRESS"
    assert updates[states.PROGRESS_FIELD] == 42
    assert updates["tmp-space"] == "/x"
    assert updates[states.WORKER] == "w1@h"
    assert updates[states.STARTED_AT] == "2024-05-01T09:59:30Z"


def test_progress_keeps_the_files_started_at() -> None:
    current = {**RUNNING_FILE, "started-at": "2024-05-01T09:00:00Z"}
    updates = updates_for(_progress_meta(50), current, NOW)
    assert updates[states.STARTED_AT] == "2024-05-01T09:00:00Z"


@pytest.mark.parametrize("reported", [99, 100, 150])
def test_progress_is_capped_at_99_until_success(reported: int) -> None:
    updates = updates_for(_progress_meta(reported), RUNNING_FILE, NOW)
    assert updates[states.PROGRESS_FIELD] == 99


def test_negative_progress_reads_zero() -> None:
    assert updates_for(_progress_meta(-5), RUNNING_FILE, NOW)[states.PROGRESS_FIELD] == 0


def test_success_gives_100_finish_time_and_task_fields() -> None:
    meta = {
        "status": "SUCCESS",
        "result": {"progress": 100, "fields": {"output": "/data/download/3/A.tar.gz"}},
        "date_done": "2024-05-01T10:20:30.123456+00:00",
    }
    updates = updates_for(meta, RUNNING_FILE, NOW)
    assert updates[states.STATE] == "SUCCESS"
    assert updates[states.PROGRESS_FIELD] == 100
    assert updates[states.FINISHED_AT] == "2024-05-01T10:20:30Z"
    assert updates[states.STARTED_AT] == RUNNING_FILE["started-at"]
    assert updates["output"] == "/data/download/3/A.tar.gz"


def test_success_with_a_none_field_removes_it_from_the_file() -> None:
    meta = {
        "status": "SUCCESS",
        "result": {"progress": 100, "fields": {"tmp-space": None, "output": "/o.tar.gz"}},
        "date_done": "2024-05-01T10:20:30",
    }
    fields = merge(RUNNING_FILE, updates_for(meta, RUNNING_FILE, NOW))
    assert "tmp-space" not in fields
    assert fields["output"] == "/o.tar.gz"
    assert fields[states.STATE] == "SUCCESS"


@pytest.mark.parametrize(
    "meta",
    [
        {"status": "SUCCESS", "result": {"progress": 100, "fields": {"exit-code": 0}}},
        {"status": "SUCCESS", "result": None},
        {"status": "FAILURE", "result": {"exc_type": "TaskFailed", "exc_message": ["exit 3"]}},
    ],
    ids=["success saying nothing of it", "success without a result", "failure"],
)
def test_an_ended_job_takes_its_tmp_space_field_with_it(meta: dict[str, Any]) -> None:
    # The worker removes the tmp-space whatever the ending; the file never points at it after.
    fields = merge(RUNNING_FILE, updates_for(meta, RUNNING_FILE, NOW))
    assert fields[states.STATE] == meta["status"]
    assert "tmp-space" not in fields


@pytest.mark.parametrize(
    ("date_done", "finished_at"),
    [
        ("2024-05-01T10:20:30.5", "2024-05-01T10:20:30Z"),  # Celery's naive UTC
        ("2024-05-01T12:20:30+02:00", "2024-05-01T10:20:30Z"),
        (None, NOW),
    ],
)
def test_finished_at_is_utc_from_date_done(date_done: str | None, finished_at: str) -> None:
    meta = {"status": "SUCCESS", "result": None, "date_done": date_done}
    assert updates_for(meta, RUNNING_FILE, NOW)[states.FINISHED_AT] == finished_at


def test_task_failure_shows_the_task_message_exactly() -> None:
    meta = {
        "status": "FAILURE",
        "result": {
            "exc_type": "TaskFailed",
            "exc_message": ["criterion.file[0]: bad"],
            "exc_module": "tasks.errors",
        },
        "traceback": 'Traceback (most recent call last):\n  File "x.py"\ntasks.errors.TaskFailed',
        "date_done": "2024-05-01T10:20:30",
    }
    updates = updates_for(meta, RUNNING_FILE, NOW)
    assert updates[states.STATE] == "FAILURE"
    assert updates[states.ERROR] == "criterion.file[0]: bad"
    assert updates[states.FINISHED_AT] == "2024-05-01T10:20:30Z"


def test_unexpected_exception_is_prefixed_with_its_type() -> None:
    meta = {
        "status": "FAILURE",
        "result": {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"},
    }
    assert updates_for(meta, RUNNING_FILE, NOW)[states.ERROR] == "ValueError: boom"


def test_revoked_changes_nothing_in_the_file_the_bridge_runs_it_again() -> None:
    # A cancel deletes the file; REVOKED with the file present is a killed pool process or a
    # tool's revoke, which the bridge answers by running the job again (bridge/schedule.py).
    meta = {
        "status": "REVOKED",
        "result": {"exc_type": "TaskRevokedError", "exc_message": ["revoked"]},
    }
    assert updates_for(meta, RUNNING_FILE, NOW) == {}


@pytest.mark.parametrize("status", ["PROGRESS", "SUCCESS"])
def test_bridge_fields_in_a_tasks_meta_fields_are_ignored(status: str) -> None:
    sneaky = {
        "task-id": "other",
        "state": "REJECTED",
        "progress": 7,
        "job-id": "job-2",
        "error": "not yours",
        "output": "/o.tar.gz",
    }
    meta = {"status": status, "result": {"progress": 60, "fields": sneaky}}
    updates = updates_for(meta, RUNNING_FILE, NOW)
    assert updates[states.STATE] == status
    assert updates["output"] == "/o.tar.gz"
    for key in ("task-id", "job-id"):
        assert key not in updates
    assert updates.get("error") is None  # cleared, never the task's "not yours"
    assert updates[states.PROGRESS_FIELD] == (100 if status == "SUCCESS" else 60)


def test_a_job_waiting_for_a_retry_shows_state_retry() -> None:
    meta = {
        "status": "RETRY",
        "result": {"exc_type": "Retryable", "exc_message": ["SMTP down"]},
    }
    assert updates_for(meta, RUNNING_FILE, NOW).get(states.STATE) == states.RETRY


def test_a_job_that_ends_before_any_tick_gets_its_worker_and_real_start() -> None:
    result = jobs.finished({"output": "/d/x.tar.gz"}, "w1@host", "2026-11-25T20:01:50Z")
    meta = {"status": "SUCCESS", "result": result, "date_done": "2026-11-25T20:01:56"}
    updates = updates_for(meta, {"type": "PACKMS", "state": "QUEUED"}, "2026-11-25T20:02:00Z")
    assert updates["worker"] == "w1@host"
    assert updates["started-at"] == "2026-11-25T20:01:50Z"
    assert updates["finished-at"] == "2026-11-25T20:01:56Z"
    assert updates["output"] == "/d/x.tar.gz" and updates["progress"] == 100


@pytest.mark.parametrize(
    "result",
    [
        {"progress": "abc", "worker": 7, "started-at": "year 99999"},
        {"progress": 1e308, "fields": ["not", "an", "object"]},
        {"retries": 10**40, "retry-at": 5, "error": None},
        "just text",
        None,
    ],
)
@pytest.mark.parametrize("status", ["PROGRESS", "SUCCESS", "RETRY", "FAILURE"])
def test_a_damaged_meta_never_raises_and_yields_bounded_fields(status: str, result: Any) -> None:
    updates = updates_for({"status": status, "result": result}, {"state": "QUEUED"}, "now")
    assert updates["state"] == status
    progress = updates.get("progress", 0)
    assert isinstance(progress, int) and 0 <= progress <= 100
    assert len(json.dumps(updates)) < 4096


def _running_meta(**extra: Any) -> dict[str, Any]:
    result = {"progress": 30, "fields": {}, "worker": "w@h", "started-at": "2026-01-01T00:00:00Z"}
    return {"status": "PROGRESS", "result": {**result, **extra}}


def test_a_running_tasks_step_and_words_go_into_its_file_and_leave_when_it_ends() -> None:
    meta = _running_meta(step=2, steps=3, text="packing 4/9 MB")
    fields = merge({"type": "SLOW", "state": "STARTED"}, updates_for(meta, {}, "now"))
    assert fields["progress-step"] == 2 and fields["progress-steps"] == 3
    assert fields["progress-text"] == "packing 4/9 MB"
    for end in ({"status": "SUCCESS", "result": {}}, {"status": "FAILURE", "result": "boom"}):
        ended = merge(fields, updates_for(end, fields, "now"))
        assert not {"progress-step", "progress-steps", "progress-text"} & set(ended)


@pytest.mark.parametrize(
    ("step", "steps", "text"),
    [(3, 2, None), (True, 2, None), (0, 2, None), ("1", 2, None), (1, 10**9, None)],
)
def test_an_unbelievable_step_is_left_out(step: Any, steps: Any, text: Any) -> None:
    fields = updates_for(_running_meta(step=step, steps=steps, text=text), {}, "now")
    assert fields["progress-step"] is None and fields["progress-steps"] is None


def test_a_long_or_multi_line_text_is_one_short_line() -> None:
    fields = updates_for(_running_meta(text="a\n\tb " + "x" * 500), {}, "now")
    assert fields["progress-text"].startswith("a b x") and len(fields["progress-text"]) == 120
    assert updates_for(_running_meta(text=["not", "text"]), {}, "now")["progress-text"] is None
