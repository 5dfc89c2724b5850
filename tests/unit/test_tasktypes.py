"""Task types from `<TYPE>.schema.json`: metadata, retry policy, assigned ids, validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from taskd.tasktypes import (
    ID_ALPHABET,
    RetryPolicy,
    TaskType,
    TaskTypeError,
    field_path,
    load_type,
    load_types,
)

ROOT = Path(__file__).resolve().parents[2]
TEST_SCHEMAS = ROOT / "tests" / "support" / "schemas"
META = {"task": "tests.support.slowtask.run", "queue": "retrieve"}


@pytest.fixture(scope="module")
def slow() -> TaskType:
    return load_types([TEST_SCHEMAS])["SLOW"]


def _write_schema(directory: Path, file_name: str, **schema: Any) -> Path:
    body: dict[str, Any] = {"type": "object", "x-taskd": dict(META)}
    body.update(schema)
    path = directory / file_name
    path.write_text(json.dumps(body), encoding="utf-8")
    return path


def test_slow_metadata_is_read_from_its_schema(slow: TaskType) -> None:
    assert slow.name == "SLOW"
    assert slow.task == "tests.support.slowtask.run"
    assert slow.module == "tests.support.slowtask"
    assert slow.queue == "retrieve"
    assert slow.runtime_info == ("ticket", "progress")
    assert dict(slow.assign) == {"ticket": "token"}
    assert slow.time_limit == 60.0
    assert slow.soft_time_limit == 50.0
    assert slow.retry == RetryPolicy((1.0, 2.0))
    assert slow.schema["title"].startswith("SLOW")


def test_retry_delay_is_the_wait_before_each_further_try(slow: TaskType) -> None:
    assert [slow.retry.delay(n) for n in range(3)] == [1.0, 2.0, None]


def test_no_retry_intervals_means_no_retry() -> None:
    assert RetryPolicy.parse(None).delay(0) is None
    assert RetryPolicy.parse("").intervals == ()


@pytest.mark.parametrize(
    ("raw", "intervals"),
    [("60 600 3600", (60.0, 600.0, 3600.0)), ([1, 2.5], (1.0, 2.5)), ("  5  ", (5.0,))],
)
def test_retry_intervals_parse(raw: Any, intervals: tuple[float, ...]) -> None:
    assert RetryPolicy.parse(raw).intervals == intervals


@pytest.mark.parametrize("raw", ["soon", "60 later", "1 -2", 60, {"a": 1}])
def test_bad_retry_intervals_are_an_error(raw: Any) -> None:
    with pytest.raises(TaskTypeError, match="retry intervals"):
        RetryPolicy.parse(raw)


def test_a_schema_without_x_taskd_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "NOMETA.schema.json"
    path.write_text(json.dumps({"type": "object"}), encoding="utf-8")
    with pytest.raises(TaskTypeError, match="x-taskd") as caught:
        load_type(path)
    assert str(path) in str(caught.value)


def test_a_lower_case_schema_file_name_names_the_file(tmp_path: Path) -> None:
    path = _write_schema(tmp_path, "slow.schema.json")
    with pytest.raises(TaskTypeError, match="upper case") as caught:
        load_types([tmp_path])
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("meta", "says"),
    [
        ({"queue": "retrieve"}, "x-taskd.task"),
        ({"task": "t.run", "queue": ""}, "x-taskd.queue"),
        ({**META, "assign": {"ticket": "uuid"}}, "x-taskd.assign.ticket"),
        ({**META, "time-limit": -1}, "x-taskd.time-limit"),
        ({**META, "soft-time-limit": "long"}, "x-taskd.soft-time-limit"),
        ({**META, "retry-intervals": "never"}, "retry intervals"),
    ],
)
def test_bad_metadata_is_an_error_naming_the_key(
    tmp_path: Path, meta: dict[str, Any], says: str
) -> None:
    path = _write_schema(tmp_path, "BAD.schema.json", **{"x-taskd": meta})
    with pytest.raises(TaskTypeError, match=says):
        load_type(path)


@pytest.mark.parametrize(
    "content", ["{not json", json.dumps({"type": "no-such-type", "x-taskd": META})]
)
def test_an_unusable_schema_names_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "BROKEN.schema.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TaskTypeError) as caught:
        load_type(path)
    assert str(path) in str(caught.value)


def test_runtime_info_defaults_to_progress(tmp_path: Path) -> None:
    task_type = load_type(_write_schema(tmp_path, "PLAIN.schema.json"))
    assert task_type.runtime_info == ("progress",)
    assert dict(task_type.assign) == {}
    assert task_type.retry.intervals == ()
    assert task_type.time_limit is None


def test_a_later_directory_wins_for_the_same_type(tmp_path: Path) -> None:
    _write_schema(tmp_path, "SLOW.schema.json", **{"x-taskd": {**META, "queue": "elsewhere"}})
    types = load_types([TEST_SCHEMAS, tmp_path])
    assert types["SLOW"].queue == "elsewhere"


def test_assign_ids_gives_a_ten_character_id_from_the_alphabet(slow: TaskType) -> None:
    ids = slow.assign_ids({"type": "SLOW"})
    assert list(ids) == ["ticket"]
    assert len(ids["ticket"]) == 10
    assert set(ids["ticket"]) <= set(ID_ALPHABET)


def test_assigned_ids_differ(slow: TaskType) -> None:
    assert len({slow.assign_ids({})["ticket"] for _ in range(20)}) == 20


def test_assign_ids_keeps_an_id_the_ui_gave(slow: TaskType) -> None:
    assert slow.assign_ids({"type": "SLOW", "ticket": "MINE"}) == {}


def test_the_id_alphabet_has_no_look_alikes() -> None:
    assert not set("0O1I") & set(ID_ALPHABET)


def test_validate_accepts_a_valid_file(slow: TaskType) -> None:
    assert slow.validate({"type": "SLOW", "steps": 2, "notify": ["a@b"]}) == []


def test_validate_names_the_field_and_gives_its_description(slow: TaskType) -> None:
    (problem,) = slow.validate({"type": "SLOW", "steps": "x"})
    assert problem.startswith("field 'steps'")
    assert "how many steps" in problem


def test_validate_names_a_missing_field(slow: TaskType) -> None:
    (problem,) = slow.validate({"steps": 1})
    assert problem.startswith("field 'type' is missing")


def test_validate_names_an_item_in_a_list(slow: TaskType) -> None:
    (problem,) = slow.validate({"type": "SLOW", "notify": ["a@b", 7]})
    assert "'notify[1]'" in problem


def test_validate_names_a_field_the_schema_forbids(tmp_path: Path) -> None:
    strict = load_type(
        _write_schema(
            tmp_path,
            "STRICT.schema.json",
            properties={"type": {"const": "STRICT"}},
            additionalProperties=False,
        )
    )
    (problem,) = strict.validate({"type": "STRICT", "lable": "x"})
    assert "'lable'" in problem
    assert "spelling" in problem


def test_field_path_reads_like_the_json() -> None:
    assert field_path(["criterion", "file", 0]) == "criterion.file[0]"
    assert field_path([]) == ""
