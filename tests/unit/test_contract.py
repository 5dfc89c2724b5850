"""The file contract as pure functions: names, what is a task file, the lenient parse, output."""

from __future__ import annotations

import codecs
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import contract
from bridge.contract import (
    BRIDGE_TEMP_SUFFIX,
    ParseError,
    TaskName,
    dump,
    ignore_reason,
    merge,
    parse_content,
    parse_name,
    render_name,
    runtime_info,
)

# The runtime-info parts of the contract's name table.
RETRMS_PARTS = ("retrieve-id", "progress")
PACKMS_PARTS = ("progress",)

# seeds/README.md, the UI's RETRMS file, verbatim (trailing comma included).
SEED_RETRMS = """{
"type": "RETRMS",
"description": "搜尋任務A計劃",
"criterion": {"session": "yukoh_XXX", "group": "", "user": "yukoh", "label": "",
              "folder": "_ARCHIVE_", "file": ["20171025"], "subject": "haha"},
"pack": true,
"notify": ["yukoh@cellopoint.com","hank@cellopoint.com"],
}
"""
SEED_RETRMS_FIELDS = {
    "type": "RETRMS",
    "description": "搜尋任務A計劃",
    "criterion": {
        "session": "yukoh_XXX",
        "group": "",
        "user": "yukoh",
        "label": "",
        "folder": "_ARCHIVE_",
        "file": ["20171025"],
        "subject": "haha",
    },
    "pack": True,
    "notify": ["yukoh@cellopoint.com", "hank@cellopoint.com"],
}


def _strict_constant(name: str) -> Any:
    raise AssertionError(f"{name} is not strict JSON")


# --- names --------------------------------------------------------------------------------

NAME_TABLE = [
    pytest.param(
        "0001",
        "RETRMS",
        {"state": "PROGRESS", "retrieve-id": "ABCXYZ", "progress": 87},
        RETRMS_PARTS,
        "0001-ABCXYZ_87.RETRMS",
        id="retrms-running",
    ),
    pytest.param(
        "0001",
        "RETRMS",
        {"state": "SUCCESS", "retrieve-id": "ABCXYZ", "progress": 100},
        RETRMS_PARTS,
        "0001-ABCXYZ_100.RETRMS",
        id="retrms-done",
    ),
    pytest.param(
        "0001",
        "RETRMS",
        {"state": "FAILURE", "retrieve-id": "ABCXYZ", "progress": 42},
        RETRMS_PARTS,
        "0001-ABCXYZ_ERR.RETRMS",
        id="retrms-failure-with-retrieve-id",
    ),
    pytest.param(
        "0001",
        "RETRMS",
        {"state": "REJECTED", "retrieve-id": "ABCXYZ"},
        RETRMS_PARTS,
        "0001-ABCXYZ_ERR.RETRMS",
        id="retrms-rejected-with-retrieve-id",
    ),
    pytest.param(
        "0001",
        "RETRMS",
        {"state": "FAILURE", "progress": 0},
        RETRMS_PARTS,
        "0001-ERR.RETRMS",
        id="retrms-failure-before-retrieve-id",
    ),
    pytest.param(
        "0001",
        "RETRMS",
        {"state": "REJECTED"},
        RETRMS_PARTS,
        "0001-ERR.RETRMS",
        id="retrms-rejected-before-retrieve-id",
    ),
    pytest.param(
        "0001",
        "RETRMS",
        {"state": "QUEUED", "retrieve-id": "ABCXYZ", "progress": 0},
        RETRMS_PARTS,
        "0001-ABCXYZ_0.RETRMS",
        id="retrms-queued",
    ),
    pytest.param(
        "0001",
        "PACKMS",
        {"state": "PROGRESS", "progress": 87},
        PACKMS_PARTS,
        "0001-87.PACKMS",
        id="packms-running",
    ),
    pytest.param(
        "0001",
        "PACKMS",
        {"state": "SUCCESS", "progress": 100},
        PACKMS_PARTS,
        "0001-100.PACKMS",
        id="packms-done",
    ),
    pytest.param(
        "0001",
        "PACKMS",
        {"state": "FAILURE", "progress": 87},
        PACKMS_PARTS,
        "0001-ERR.PACKMS",
        id="packms-failure",
    ),
    pytest.param(
        "0001",
        "PACKMS",
        {"state": "REJECTED"},
        PACKMS_PARTS,
        "0001-ERR.PACKMS",
        id="packms-rejected",
    ),
    pytest.param(
        "0001",
        "PACKMS",
        {"state": "QUEUED", "progress": 0},
        PACKMS_PARTS,
        "0001-0.PACKMS",
        id="packms-queued",
    ),
    pytest.param(
        "a-b",
        "PACKMS",
        {"state": "STARTED", "progress": 5},
        PACKMS_PARTS,
        "a-b-5.PACKMS",
        id="task-id-with-dashes",
    ),
]


@pytest.mark.parametrize(("task_id", "task_type", "fields", "parts", "expected"), NAME_TABLE)
def test_render_name_follows_the_contract_name_table(
    task_id: str, task_type: str, fields: dict[str, Any], parts: tuple[str, ...], expected: str
) -> None:
    assert render_name(task_id, task_type, fields, parts) == expected


@pytest.mark.parametrize(("task_id", "task_type", "fields", "parts", "expected"), NAME_TABLE)
def test_runtime_info_is_the_name_part_between_task_id_and_type(
    task_id: str, task_type: str, fields: dict[str, Any], parts: tuple[str, ...], expected: str
) -> None:
    middle = expected.removeprefix(f"{task_id}-").removesuffix(f".{task_type}")
    assert runtime_info(fields, parts) == middle


def test_runtime_info_reads_zero_before_any_progress_is_known() -> None:
    assert runtime_info({"state": "QUEUED", "retrieve-id": "ABCXYZ"}, RETRMS_PARTS) == "ABCXYZ_0"


def test_rendered_name_cannot_leave_the_user_directory() -> None:
    fields = {"state": "QUEUED", "retrieve-id": "../a/b\\c\x00d\ne", "progress": 0}
    name = render_name("0001", "RETRMS", fields, RETRMS_PARTS)
    assert not any(ch in name for ch in "/\\\x00\n")
    assert name.endswith("_0.RETRMS")


@pytest.mark.parametrize(("task_id", "task_type", "fields", "parts", "expected"), NAME_TABLE)
def test_rendered_name_is_still_a_task_file_of_the_same_type(
    task_id: str, task_type: str, fields: dict[str, Any], parts: tuple[str, ...], expected: str
) -> None:
    parsed = parse_name(("3", render_name(task_id, task_type, fields, parts)))
    assert parsed is not None
    assert parsed.type == task_type


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("3", "0001.RETRMS"), TaskName("3", "0001", "RETRMS")),
        (("3", "a-b.PACKMS"), TaskName("3", "a-b", "PACKMS")),
        (("user_7", "x.y.SLOW"), TaskName("user_7", "x.y", "SLOW")),
        (("3", "0001-ABCXYZ_87.RETRMS"), TaskName("3", "0001-ABCXYZ_87", "RETRMS")),
        (("3", "0001.TYPE_2"), TaskName("3", "0001", "TYPE_2")),
    ],
)
def test_parse_name_splits_user_task_id_and_type(
    parts: tuple[str, ...], expected: TaskName
) -> None:
    assert ignore_reason(parts) is None
    assert parse_name(parts) == expected


@pytest.mark.parametrize(
    ("parts", "reason_says"),
    [
        pytest.param(("3", "0001.notify.eml"), "upper-case", id="notify-mail"),
        pytest.param(("3", "0001.retrms"), "upper-case", id="lower-case-type"),
        pytest.param(("3", "0001.Retrms"), "upper-case", id="mixed-case-type"),
        pytest.param(("3", "0001"), "upper-case", id="no-suffix"),
        pytest.param(("3", ".0001.RETRMS"), "hidden", id="dot-file"),
        pytest.param(("3", "#x.RETRMS#"), "editor", id="emacs-autosave"),
        pytest.param(("3", ".#x.RETRMS"), "editor", id="emacs-lock"),
        pytest.param(("3", "x.RETRMS~"), "editor", id="backup-tilde"),
        pytest.param(("3", ".x.RETRMS.swp"), "editor", id="vim-swap"),
        pytest.param(("3", "~x.RETRMS"), "editor", id="tilde-prefix"),
        pytest.param(
            ("3", f".0001-ABCXYZ_0.RETRMS.1a2b3c4d{BRIDGE_TEMP_SUFFIX}"),
            "temporary",
            id="bridge-temp-file",
        ),
        pytest.param(("3", ".0001.RETRMS.submit"), "hidden", id="submit-temp-file"),
        pytest.param(("3", "sub", "0001.RETRMS"), "not directly inside", id="nested"),
        pytest.param(("0001.RETRMS",), "not directly inside", id="no-user-dir"),
        pytest.param(("..", "0001.RETRMS"), "'..'", id="dot-dot-user"),
        pytest.param(("a b", "0001.RETRMS"), "'a b'", id="space-in-user"),
        pytest.param(("ü", "0001.RETRMS"), "'ü'", id="non-ascii-user"),
        pytest.param(("3-4", "0001.RETRMS"), "'3-4'", id="dash-in-user"),
    ],
)
def test_not_a_task_file(parts: tuple[str, ...], reason_says: str) -> None:
    reason = ignore_reason(parts)
    assert reason is not None
    assert reason_says in reason
    assert parse_name(parts) is None


def test_notify_mail_is_recognised_by_name() -> None:
    assert contract.is_notify_mail(contract.notify_mail_name("0001"))
    assert contract.notify_mail_name("0001") == "0001.notify.eml"
    assert not contract.is_notify_mail(".0001.notify.eml")
    assert not contract.is_notify_mail("0001.RETRMS")


# --- the lenient parse --------------------------------------------------------------------


def test_parse_content_reads_the_seed_retrms_file_verbatim() -> None:
    fields = parse_content(SEED_RETRMS)
    assert fields == SEED_RETRMS_FIELDS
    assert list(fields) == ["type", "description", "criterion", "pack", "notify"]


def test_a_utf8_bom_is_accepted() -> None:
    raw = codecs.BOM_UTF8 + SEED_RETRMS.encode("utf-8")
    assert parse_content(contract.decode_utf8(raw)) == SEED_RETRMS_FIELDS


def test_decode_utf8_refuses_other_encodings() -> None:
    with pytest.raises(UnicodeDecodeError):
        contract.decode_utf8(SEED_RETRMS.encode("big5"))


def test_commas_inside_strings_are_untouched() -> None:
    text = r'{"a": "x,}", "b": "[1,]", "c": "say \"hi,\"}", "d": ",",}'
    assert parse_content(text) == {"a": "x,}", "b": "[1,]", "c": 'say "hi,"}', "d": ","}


def test_trailing_comma_in_a_list_is_accepted() -> None:
    assert contract.strip_trailing_commas("[1,2,]") == "[1,2]"
    assert parse_content('{"a": [1, 2, ], "b": [[3,],],}') == {"a": [1, 2], "b": [[3]]}


def test_empty_string_value_is_kept() -> None:
    assert parse_content('{"group": "", "label": "",}') == {"group": "", "label": ""}


@pytest.mark.parametrize("text", ["[1, 2]", "null", '"RETRMS"', "3", "true"])
def test_non_object_json_is_rejected_with_a_clear_message(text: str) -> None:
    with pytest.raises(ParseError, match=r"must be one JSON object"):
        parse_content(text)


def test_invalid_json_message_says_where() -> None:
    with pytest.raises(ParseError, match=r"line 3 column"):
        parse_content('{\n"type": "RETRMS",\n"pack": tru\n}')


def test_parse_content_keeps_field_order() -> None:
    text = '{"zeta": 1, "alpha": 2, "mid": {"y": 1, "b": 2}, "beta": 3,}'
    fields = parse_content(text)
    assert list(fields) == ["zeta", "alpha", "mid", "beta"]
    assert list(fields["mid"]) == ["y", "b"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constants_are_not_accepted(constant: str) -> None:
    with pytest.raises(ParseError):
        parse_content(f'{{"type": "SLOW", "extra": {constant}}}')


def test_deeply_nested_content_is_a_parse_error() -> None:
    depth = 100_000
    with pytest.raises(ParseError):
        parse_content('{"a": ' + "[" * depth + "]" * depth + "}")


# --- merge and dump -----------------------------------------------------------------------


def test_merge_keeps_ui_order_and_appends_bridge_fields() -> None:
    merged = merge(SEED_RETRMS_FIELDS, {"task-id": "0001", "state": "QUEUED", "progress": 0})
    assert list(merged) == [*SEED_RETRMS_FIELDS, "task-id", "state", "progress"]
    assert merged["state"] == "QUEUED"


def test_merge_updates_a_field_in_place() -> None:
    merged = merge({"a": 1, "state": "QUEUED", "b": 2}, {"state": "STARTED"})
    assert list(merged.items()) == [("a", 1), ("state", "STARTED"), ("b", 2)]


def test_merge_none_removes_a_field() -> None:
    fields = {"type": "PACKMS", "tmp-space": "/w/3/x", "retry-at": "later"}
    merged = merge(fields, {"tmp-space": None, "never-there": None, "progress": 100})
    assert merged == {"type": "PACKMS", "retry-at": "later", "progress": 100}


def test_merge_leaves_its_input_alone() -> None:
    fields = {"a": 1}
    merge(fields, {"a": None, "b": 2})
    assert fields == {"a": 1}


def test_dump_is_strict_indented_utf8_json() -> None:
    out = dump(SEED_RETRMS_FIELDS)
    assert isinstance(out, bytes)
    text = out.decode("utf-8")
    assert json.loads(text, parse_constant=_strict_constant) == SEED_RETRMS_FIELDS
    assert "搜尋任務A計劃".encode() in out
    assert b"\\u" not in out
    lines = text.splitlines()
    assert len(lines) > len(SEED_RETRMS_FIELDS)
    assert lines[1].startswith("  ")
    assert text.endswith("\n")


def test_dump_round_trips_with_order() -> None:
    fields = merge(SEED_RETRMS_FIELDS, {"task-id": "0001", "progress": 87})
    back = parse_content(dump(fields).decode("utf-8"))
    assert back == fields
    assert list(back) == list(fields)


def test_dump_writes_any_string_the_parse_accepts() -> None:
    fields = parse_content('{"type": "SLOW", "label": "\\ud800"}')
    assert parse_content(dump(fields).decode("utf-8")) == fields


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30) + 1, max_value=10**30 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=6)


@settings(database=None, deadline=None)
@given(json_objects)
def test_parse_content_inverts_dump(fields: dict[str, Any]) -> None:
    back = parse_content(dump(fields).decode("utf-8"))
    assert back == fields
    assert list(back) == list(fields)


@settings(database=None, deadline=None)
@given(json_objects)
def test_dump_writes_what_json_writes_indented(fields: dict[str, Any]) -> None:
    """The bridge's own indenting is json's, byte for byte, whatever the values."""
    expected = json.dumps(fields, ensure_ascii=False, indent=2, allow_nan=False) + "\n"
    assert contract._indented(fields) == expected
    odd = {1: "a", None: [1.5], 2.5: {"b": None}, **fields}
    assert contract._indented(odd) == json.dumps(odd, ensure_ascii=False, indent=2) + "\n"


@settings(database=None, deadline=None)
@given(st.dictionaries(st.text(), json_values, min_size=1, max_size=6))
def test_a_trailing_comma_before_the_last_brace_still_parses(fields: dict[str, Any]) -> None:
    text = dump(fields).decode("utf-8").rstrip()
    assert text.endswith("}")
    with_comma = text[:-1].rstrip() + ",\n}\n"
    assert parse_content(with_comma) == fields
