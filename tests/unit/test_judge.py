"""Judging a complete task file: taken, or rejected with an error that names the problem."""

from __future__ import annotations

import base64
import codecs
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.contract import TaskName
from bridge.judge import Verdict, judge, too_large
from taskd import states
from taskd.tasktypes import TaskType, load_types

ROOT = Path(__file__).resolve().parents[2]
SLOW = TaskName(user="3", stem="0001", type="SLOW")


@pytest.fixture(scope="module")
def types() -> dict[str, TaskType]:
    return load_types([ROOT / "tests" / "support" / "schemas"])


def _raw(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, ensure_ascii=False).encode("utf-8")


def _rejected(verdict: Verdict) -> str:
    assert not verdict.ok
    assert verdict.error is not None
    return verdict.error


def test_a_valid_slow_file_passes(types: dict[str, TaskType]) -> None:
    content = {"type": "SLOW", "steps": 3, "step-seconds": 0.1, "label": "搜尋任務A計劃"}
    verdict = judge(_raw(content), SLOW, types)
    assert verdict.ok
    assert verdict.error is None
    assert verdict.task_type is types["SLOW"]
    assert verdict.fields == content


def test_a_slow_file_as_the_ui_writes_it_passes(types: dict[str, TaskType]) -> None:
    text = '{\n"type": "SLOW",\n"label": "搜尋, 計劃",\n"notify": ["a@b",],\n}\n'
    verdict = judge(codecs.BOM_UTF8 + text.encode("utf-8"), SLOW, types)
    assert verdict.ok
    assert verdict.fields == {"type": "SLOW", "label": "搜尋, 計劃", "notify": ["a@b"]}


def test_type_field_different_from_suffix_is_named(types: dict[str, TaskType]) -> None:
    error = _rejected(judge(_raw({"type": "RETRMS", "steps": 1}), SLOW, types))
    assert "'type'" in error
    assert "'RETRMS'" in error
    assert ".SLOW" in error


def test_unknown_type_lists_the_known_types(types: dict[str, TaskType]) -> None:
    name = TaskName(user="3", stem="0001", type="NOPE")
    verdict = judge(_raw({"type": "NOPE"}), name, types)
    error = _rejected(verdict)
    assert "'NOPE'" in error
    for known in types:
        assert known in error
    assert verdict.task_type is None


def test_schema_violation_names_the_field(types: dict[str, TaskType]) -> None:
    verdict = judge(_raw({"type": "SLOW", "steps": "x"}), SLOW, types)
    error = _rejected(verdict)
    assert "'steps'" in error
    assert "integer" in error
    assert verdict.task_type is types["SLOW"]


def test_every_schema_violation_is_reported(types: dict[str, TaskType]) -> None:
    error = _rejected(judge(_raw({"type": "SLOW", "steps": "x", "label": 3}), SLOW, types))
    assert "'steps'" in error
    assert "'label'" in error


def test_missing_required_field_is_named(types: dict[str, TaskType]) -> None:
    error = _rejected(judge(_raw({"steps": 1}), SLOW, types))
    assert "'type'" in error
    assert "missing" in error


@pytest.mark.parametrize("field", sorted(states.OWNED_MARKERS))
def test_a_field_taskd_writes_is_refused_in_a_new_file(
    types: dict[str, TaskType], field: str
) -> None:
    error = _rejected(judge(_raw({"type": "SLOW", field: "QUEUED"}), SLOW, types))
    assert repr(field) in error
    assert "taskd" in error


def test_not_utf8_keeps_the_original_as_base64(types: dict[str, TaskType]) -> None:
    raw = '{"type": "SLOW", "label": "搜尋"}'.encode("big5")
    verdict = judge(raw, SLOW, types)
    assert "UTF-8" in _rejected(verdict)
    assert list(verdict.fields) == [states.ORIGINAL_B64]
    assert base64.b64decode(verdict.fields[states.ORIGINAL_B64]) == raw


def test_not_json_keeps_the_original_as_text(types: dict[str, TaskType]) -> None:
    text = "type = SLOW, label = 搜尋\n"
    verdict = judge(text.encode("utf-8"), SLOW, types)
    assert "not valid JSON" in _rejected(verdict)
    assert verdict.fields == {states.ORIGINAL: text}


def test_json_that_is_not_an_object_keeps_the_original(types: dict[str, TaskType]) -> None:
    verdict = judge(b'["SLOW"]', SLOW, types)
    assert "JSON object" in _rejected(verdict)
    assert verdict.fields == {states.ORIGINAL: '["SLOW"]'}


def test_a_rejected_but_parseable_file_keeps_its_fields(types: dict[str, TaskType]) -> None:
    content = {"type": "SLOW", "steps": "x", "label": "keep me"}
    verdict = judge(_raw(content), SLOW, types)
    assert not verdict.ok
    assert verdict.fields == content
    assert not verdict.incomplete


def test_too_large_message_names_the_setting() -> None:
    message = too_large(2_000_000, 1_048_576)
    assert "2000000" in message
    assert "1048576" in message
    assert "TASKD_MAX_TASK_BYTES" in message
