"""Log lines: a task's ids as fields of their own, in JSON and text, and on bridge events."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge import intake
from bridge.daemon import Bridge
from bridge.logs import JsonFormatter, TextFormatter, ids
from taskd.settings import Settings
from taskd.tasktypes import TaskType, load_types
from tests.support.noredis import NoRedis

ROOT = Path(__file__).resolve().parents[2]
JOB = "0b6e4c1e-5f5e-4f4c-9d37-6f0c2a7d9e11"


def _record(message: str = "took 0001", **extra: Any) -> logging.LogRecord:
    logger = logging.getLogger("bridge.daemon")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 1, message, (), None, extra=extra)


def test_ids_keeps_only_the_known_ones() -> None:
    assert ids("0001", "3", JOB) == {"task_id": "0001", "user_id": "3", "job_id": JOB}
    assert ids("0001", "3") == {"task_id": "0001", "user_id": "3"}
    assert ids(job_id=JOB) == {"job_id": JOB}
    assert ids() == {}


def test_json_lines_carry_each_id_as_its_own_key() -> None:
    line = JsonFormatter().format(_record(**ids("0001", "3", JOB)))
    out = json.loads(line)
    assert (out["task_id"], out["user_id"], out["job_id"]) == ("0001", "3", JOB)
    assert out["message"] == "took 0001"
    assert (out["level"], out["logger"]) == ("info", "bridge.daemon")
    assert "\n" not in line


def test_json_lines_leave_out_ids_that_are_not_known() -> None:
    out = json.loads(JsonFormatter().format(_record(**ids(user_id="3"))))
    assert out["user_id"] == "3"
    assert "task_id" not in out and "job_id" not in out
    plain = json.loads(JsonFormatter().format(_record("Redis is back")))
    assert not {"task_id", "user_id", "job_id"} & plain.keys()


def test_json_keeps_a_traceback_on_one_line_with_the_ids() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = _record(**ids("0001", "3"))
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    out = json.loads(line)
    assert "RuntimeError: boom" in out["traceback"]
    assert out["task_id"] == "0001"
    assert "\n" not in line


def test_text_lines_end_with_the_ids_as_key_value_pairs() -> None:
    line = TextFormatter().format(_record(**ids("0001", "3", JOB)))
    assert line.endswith(f"bridge.daemon: took 0001 task_id=0001 user_id=3 job_id={JOB}")
    assert TextFormatter().format(_record("Redis is back")).endswith(": Redis is back")


# --- the bridge's own event lines -------------------------------------------------------------


@pytest.fixture(scope="module")
def types() -> dict[str, TaskType]:
    return load_types([ROOT / "tests" / "support" / "schemas"])


@pytest.fixture
def bridge(tmp_path: Path, types: dict[str, TaskType]) -> Bridge:
    settings = Settings(data_root=tmp_path)
    (settings.task_queue / "3").mkdir(parents=True)
    return Bridge(settings, types, app=None, client=NoRedis())  # type: ignore[arg-type]


def _one(caplog: pytest.LogCaptureFixture, words: str) -> logging.LogRecord:
    found = [r for r in caplog.records if words in r.getMessage()]
    assert len(found) == 1, [r.getMessage() for r in caplog.records]
    return found[0]


def test_taking_a_file_logs_its_task_user_and_job_ids(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    path = bridge.settings.task_queue / "3" / "0001.SLOW"
    path.write_text('{"type": "SLOW"}')
    bridge.intake.note(path, 0.0, closed=True)
    caplog.set_level(logging.INFO, logger="bridge")
    bridge.intake_once(0.0)
    record = _one(caplog, "as job")
    job_id = next(iter(bridge.table.by_job))
    out = json.loads(JsonFormatter().format(record))
    assert (out["task_id"], out["user_id"], out["job_id"]) == ("0001", "3", job_id)


def test_rejecting_a_file_logs_its_task_and_user_ids(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    path = bridge.settings.task_queue / "3" / "bad-1.SLOW"
    path.write_text('{"type": "SLOW", "steps": "many"}')
    bridge.intake.note(path, 0.0, closed=True)
    caplog.set_level(logging.INFO, logger="bridge")
    bridge.intake_once(0.0)
    record = _one(caplog, "rejected")
    out = json.loads(JsonFormatter().format(record))
    assert (out["task_id"], out["user_id"]) == ("bad-1", "3")
    assert "job_id" not in out  # a rejected file never had a job


def test_a_decision_the_bridge_cannot_carry_out_logs_the_file_ids(
    bridge: Bridge, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = bridge.settings.task_queue / "3" / "0002.SLOW"
    path.write_text('{"type": "SLOW"}')
    bridge.intake.note(path, 0.0, closed=True)

    def broken(*_: Any) -> intake.Decision:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(bridge.intake, "consider", broken)
    caplog.set_level(logging.INFO, logger="bridge")
    bridge.intake_once(0.0)
    record = _one(caplog, "judging")
    assert (record.task_id, record.user_id) == ("0002", "3")  # type: ignore[attr-defined]
