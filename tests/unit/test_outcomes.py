"""Outcomes kept on disk (taskd/outcomes.py), and the two readers that trust them: the mirror,
where Redis could not be told, and `taskd retry`, which never runs a finished job again."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.passes.mirror import with_kept_outcome
from bridge.schedule import Known
from taskcli.retry import retry_file
from taskd import outcomes, states
from taskd.tasktypes import load_types

ROOT = Path(__file__).resolve().parents[2]
RESULT = {"progress": 100, "fields": {"output": "/d/x.tar.gz"}, "worker": "w1", "started-at": "s"}


def test_an_outcome_kept_is_found_again(tmp_path: Path) -> None:
    job = str(uuid.uuid4())
    assert outcomes.keep(tmp_path, job, outcomes.record(states.SUCCESS, RESULT))
    assert outcomes.find(tmp_path, job) == {"state": "SUCCESS", "result": RESULT}
    failed = str(uuid.uuid4())
    outcomes.keep(tmp_path, failed, outcomes.record(states.FAILURE, "no such mail"))
    assert outcomes.find(tmp_path, failed) == {"state": "FAILURE", "error": "no such mail"}
    assert outcomes.find(tmp_path, str(uuid.uuid4())) is None


@given(st.text(max_size=80))
def test_only_job_ids_taskd_makes_name_an_outcome(job_id: str) -> None:
    path = outcomes._path(Path("/data"), job_id)
    if path is not None:
        assert job_id == str(uuid.UUID(job_id))
        assert path.parent.parent == Path("/data/.taskd/done")


def test_a_planted_link_or_a_foreign_file_is_no_outcome(tmp_path: Path) -> None:
    job = str(uuid.uuid4())
    path = outcomes._path(tmp_path, job)
    assert path is not None
    path.parent.mkdir(parents=True)
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"state": "SUCCESS", "result": {}}))
    path.symlink_to(secret)
    assert outcomes.find(tmp_path, job) is None
    path.unlink()
    path.write_text(json.dumps({"state": "RUNNING"}))
    assert outcomes.find(tmp_path, job) is None
    path.write_bytes(b" " * (outcomes.MAX_OUTCOME_BYTES + 1))
    assert outcomes.find(tmp_path, job) is None


def _core(data_root: Path) -> Any:
    return SimpleNamespace(settings=SimpleNamespace(data_root=data_root))


def _task(job_id: str) -> Any:
    return SimpleNamespace(job_id=job_id)


@pytest.mark.parametrize(
    ("known", "looked_up"),
    [
        (Known(None, {"status": "FAILURE", "result": {"exc_type": "BackendStoreError"}}), True),
        (Known(None, None), True),  # Redis lost the job
        (Known("published", {"status": "PROGRESS", "result": {}}, leased=False), True),
        (Known("published", {"status": "PROGRESS", "result": {}}, leased=True), False),
        (Known("published", None), False),  # waiting in its queue
    ],
)
def test_the_mirror_trusts_a_kept_success_only_where_redis_could_not_be_told(
    tmp_path: Path, known: Known, looked_up: bool
) -> None:
    job = str(uuid.uuid4())
    outcomes.keep(tmp_path, job, outcomes.record(states.SUCCESS, RESULT))
    seen = with_kept_outcome(_core(tmp_path), _task(job), known)
    if looked_up:
        assert seen.meta == {"status": "SUCCESS", "result": RESULT}
    else:
        assert seen == known


def test_a_kept_failure_never_hides_a_failure_or_overrides_nothing(tmp_path: Path) -> None:
    job = str(uuid.uuid4())
    outcomes.keep(tmp_path, job, outcomes.record(states.FAILURE, "bad criteria"))
    failed = Known(None, {"status": "FAILURE", "result": {"exc_message": ["x"]}})
    assert with_kept_outcome(_core(tmp_path), _task(job), failed) == failed
    lost = with_kept_outcome(_core(tmp_path), _task(job), Known(None, None))
    assert lost.meta is not None and lost.meta["status"] == "FAILURE"


def _failed_file(queue: Path, job: str) -> Path:
    (queue / "7").mkdir(parents=True)
    path = queue / "7" / "t1.SLOW"
    path.write_text(
        json.dumps(
            {
                "type": "SLOW",
                "task-id": "t1",
                "state": "FAILURE",
                "progress": 40,
                "job-id": job,
                "queued-at": "2026-01-01T00:00:00Z",
                "error": "BackendStoreError: failed to store result on the backend",
                "finished-at": "2026-01-01T00:01:00Z",
            }
        )
    )
    return path


def test_retry_restores_a_finished_jobs_success_instead_of_running_it_again(
    tmp_path: Path,
) -> None:
    queue = tmp_path / "task_queue"
    job = str(uuid.uuid4())
    path = _failed_file(queue, job)
    outcomes.keep(tmp_path, job, outcomes.record(states.SUCCESS, RESULT))
    types = load_types([ROOT / "tests" / "support" / "schemas"])
    target, restored = retry_file(path, types, queue)
    assert restored
    fields = json.loads(target.read_text())
    assert fields["state"] == "SUCCESS" and fields["job-id"] == job
    assert fields["output"] == "/d/x.tar.gz" and fields["progress"] == 100
    assert "error" not in fields and "previous-errors" not in fields
    assert [p.name for p in (queue / "7").iterdir()] == [target.name]


def test_retry_runs_a_real_failure_again(tmp_path: Path) -> None:
    queue = tmp_path / "task_queue"
    job = str(uuid.uuid4())
    path = _failed_file(queue, job)
    types = load_types([ROOT / "tests" / "support" / "schemas"])
    target, restored = retry_file(path, types, queue)
    fields = json.loads(target.read_text())
    assert not restored and fields["state"] == "QUEUED" and fields["job-id"] != job
    assert fields["previous-errors"][0]["job-id"] == job
    assert os.path.exists(target)
