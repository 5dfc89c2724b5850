"""A job's stored state that is not a JSON object, or cannot be read, is no state at all:
never an error out of the mirror's tick."""

from __future__ import annotations

import pytest

from taskd.jobs import parse_meta


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000, b"{" * 100_000, b"[1]", b'"PROGRESS"', b"", b"\xff\xfe\x00", b"{", None],
    ids=["deep-list", "deep-object", "list", "string", "empty", "not-utf8", "cut", "none"],
)
def test_what_is_not_an_object_reads_as_no_state(raw: bytes | None) -> None:
    assert parse_meta(raw) is None


def test_a_state_reads_as_json_reads_it() -> None:
    assert parse_meta(b'{"status": "PROGRESS", "n": NaN, "big": 12345678901234567890123}') == {
        "status": "PROGRESS",
        "n": pytest.approx(float("nan"), nan_ok=True),
        "big": 12345678901234567890123,
    }
