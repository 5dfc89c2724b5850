"""When the bridge publishes: due times, retries, and recovery of jobs whose worker died."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bridge import schedule
from bridge.schedule import Known, decide
from taskd import states

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
QUEUED = {"state": "QUEUED", "queued-at": "2026-11-25T12:00:00Z"}
RUNNING = {"state": "PROGRESS", "queued-at": "2026-11-25T11:00:00Z"}


def _meta(status: str, **result: object) -> dict[str, object]:
    return {"status": status, "result": result}


def test_a_new_job_is_published_and_a_known_one_is_not() -> None:
    assert decide(QUEUED, Known(None, None), NOW).action == schedule.PUBLISH
    assert decide(QUEUED, Known(states.JOB_PUBLISHED, None), NOW).action == schedule.KNOWN
    assert decide(QUEUED, Known(None, _meta("SUCCESS")), NOW).action == schedule.KNOWN


def test_a_crash_between_record_and_send_is_inspected() -> None:
    assert decide(QUEUED, Known(states.JOB_PUBLISHING, None), NOW).action == schedule.INSPECT


def test_run_at_and_delay_wait_until_due() -> None:
    later = {**QUEUED, "run-at": "2026-11-25T12:00:05Z"}
    assert decide(later, Known(None, None), NOW).action == schedule.WAIT
    assert decide(later, Known(None, None), NOW + timedelta(seconds=5)).action == schedule.PUBLISH
    delayed = {**QUEUED, "delay": 30}
    assert decide(delayed, Known(None, None), NOW + timedelta(seconds=29)).action == schedule.WAIT
    assert decide(delayed, Known(None, None), NOW + timedelta(seconds=30)).action == (
        schedule.PUBLISH
    )


def test_a_retry_is_published_once_when_due() -> None:
    meta = _meta("RETRY", retries=2, **{"retry-at": "2026-11-25T12:01:00Z"})
    assert decide(RUNNING, Known(states.JOB_PUBLISHED, meta, attempt=1), NOW).action == (
        schedule.WAIT
    )
    due = decide(RUNNING, Known(states.JOB_PUBLISHED, meta, 1), NOW + timedelta(minutes=1))
    assert (due.action, due.attempt) == (schedule.PUBLISH, 2)
    assert decide(RUNNING, Known(states.JOB_PUBLISHED, meta, 2), NOW).action == schedule.KNOWN


def test_a_started_job_without_a_lease_is_run_again_only_after_the_grace() -> None:
    info = Known(states.JOB_PUBLISHED, _meta("PROGRESS"), leased=False)
    assert decide(RUNNING, info, NOW, orphaned_for=10, grace=30).action == schedule.WAIT
    assert decide(RUNNING, info, NOW, orphaned_for=30, grace=30).action == schedule.RECOVER
    alive = Known(states.JOB_PUBLISHED, _meta("PROGRESS"), leased=True)
    assert decide(RUNNING, alive, NOW, orphaned_for=99, grace=30).action == schedule.KNOWN


def test_after_redis_lost_everything_a_running_job_waits_for_its_worker_to_come_back() -> None:
    lost = Known(None, None, leased=False)
    assert decide(RUNNING, lost, NOW, orphaned_for=5, grace=30).action == schedule.WAIT
    back = Known(None, None, leased=True)
    assert decide(RUNNING, back, NOW).action == schedule.KNOWN
    assert decide(RUNNING, lost, NOW, orphaned_for=30, grace=30).action == schedule.RECOVER
    # a task that never started is simply published again at once
    assert decide(QUEUED, lost, NOW).action == schedule.PUBLISH


def test_parse_time_and_time_errors() -> None:
    assert schedule.parse_time("2026-11-25T12:00:00") == NOW
    assert schedule.parse_time("2026-11-25T13:00:00+01:00") == NOW
    assert schedule.parse_time("soon") is None
    assert schedule.time_error({"run-at": "soon"}) is not None
    assert schedule.time_error({"delay": -1}) is not None
    assert schedule.time_error({"delay": True}) is not None
    assert schedule.time_error({"delay": 5, "run-at": "2026-11-25T12:00:00Z"}) is None


def test_a_revoked_job_whose_file_remains_is_run_again_after_the_grace() -> None:
    info = Known(states.JOB_PUBLISHED, _meta("REVOKED"), leased=False)
    assert decide(RUNNING, info, NOW, orphaned_for=1, grace=3).action == schedule.WAIT
    assert decide(RUNNING, info, NOW, orphaned_for=3, grace=3).action == schedule.RECOVER


def test_an_attempt_published_and_not_begun_by_anyone_is_one_a_dead_worker_may_hold() -> None:
    published = states.JOB_PUBLISHED
    retry_1 = _meta("RETRY", retries=1, **{"retry-at": "2026-11-25T12:00:00Z"})
    held = schedule.handed_out_unstarted
    assert held(Known(published, None))  # a first try, a recovery or a notify mail
    assert held(Known(published, retry_1, attempt=1))  # the retry it asked for, sent
    assert not held(Known(published, retry_1, attempt=0))  # that retry not sent yet
    assert not held(Known(published, None, leased=True))  # a worker holds it
    assert not held(Known(states.JOB_PUBLISHING, None))  # maybe never sent
    assert not held(Known(None, None))  # Redis lost it: another path
    for status in ("STARTED", "PROGRESS", "SUCCESS", "FAILURE"):
        assert not held(Known(published, _meta(status)))  # it began


def test_a_job_run_again_runs_the_try_that_was_running() -> None:
    orphan = Known(states.JOB_PUBLISHED, _meta("PROGRESS"), attempt=2, leased=False)
    # A notify job keeps no count in a file: the record says which try was sent.
    assert decide(RUNNING, orphan, NOW, orphaned_for=30, grace=30).attempt == 2
    assert decide({**RUNNING, "retries": 2}, orphan, NOW, 30, 30).attempt == 2
    lost = Known(None, None, leased=False)  # Redis lost the record: the file's count stands
    assert decide({**RUNNING, "retries": 1}, lost, NOW, 30, 30).attempt == 1
