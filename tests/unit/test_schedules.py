"""Schedules (bridge/schedules.py): what a schedule file may say, when it is due, what a due
time's task file is called, and how a missed due time is run once or skipped."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import schedules
from bridge.schedules import RUN_ONCE, SKIP, Schedule, ScheduleError

TYPES = {"RETRMS": object(), "SLOW": object()}
T0 = datetime(2026, 12, 3, 8, 0, 0, tzinfo=UTC)


def _raw(**fields: Any) -> bytes:
    base: dict[str, Any] = {"cron": "0 2 * * *", "user-id": "3", "type": "SLOW", "task": {}}
    return json.dumps({**base, **fields}).encode()


def test_a_good_schedule_is_read_with_its_task_typed() -> None:
    s = schedules.parse("nightly", _raw(task={"steps": 2}), TYPES)
    assert (s.cron, s.user, s.type, s.missed) == ("0 2 * * *", "3", "SLOW", RUN_ONCE)
    assert s.task == {"type": "SLOW", "steps": 2}


@pytest.mark.parametrize(
    ("name", "raw", "says"),
    [
        ("bad-name", _raw(), "file name"),
        ("n", b"{not json", "not JSON"),
        ("n", b"[]", "not a JSON object"),
        ("n", _raw(cron="61 * * * *"), "field 'cron'"),
        ("n", _raw(cron="* * *"), "has 3 fields"),
        ("n", _raw(cron=5), "field 'cron'"),
        ("n", _raw(**{"user-id": "../x"}), "field 'user-id'"),
        ("n", _raw(type="NOPE"), "field 'type'"),
        ("n", _raw(task=[1]), "field 'task'"),
        ("n", _raw(task={"type": "RETRMS"}), "field 'task'"),
        ("n", _raw(missed="twice"), "field 'missed'"),
        ("n", _raw(extra=1), "unknown field 'extra'"),
    ],
)
def test_a_bad_schedule_says_which_field_and_how_to_fix_it(
    name: str, raw: bytes, says: str
) -> None:
    with pytest.raises(ScheduleError) as caught:
        schedules.parse(name, raw, TYPES)
    assert says in str(caught.value)


def _every(cron: str, missed: str = RUN_ONCE) -> Schedule:
    return Schedule("s", cron, "3", "SLOW", {"type": "SLOW"}, missed)


def test_five_six_and_seven_fields_as_poulpe_writes_them() -> None:
    assert schedules.next_runs(_every("*/15 * * * *"), T0, 2) == [
        T0 + timedelta(minutes=15),
        T0 + timedelta(minutes=30),
    ]
    assert schedules.next_runs(_every("30 */2 * * * *"), T0, 2) == [
        T0 + timedelta(seconds=30),
        T0 + timedelta(minutes=2, seconds=30),
    ]
    assert schedules.next_runs(_every("0 0 12 * * * 2027"), T0, 1) == [
        datetime(2027, 1, 1, 12, tzinfo=UTC)
    ]


def test_a_due_time_is_written_once_and_named_after_itself() -> None:
    s = _every("*/10 * * * * *")
    assert schedules.due(s, T0, T0 + timedelta(seconds=9)) is None
    when = schedules.due(s, T0, T0 + timedelta(seconds=10))
    assert when == T0 + timedelta(seconds=10)
    assert schedules.due(s, when, T0 + timedelta(seconds=11)) is None  # already written
    assert s.file_name(when) == "s_20261203T080010Z.SLOW"


def test_missed_due_times_run_once_or_are_skipped() -> None:
    late = T0 + timedelta(hours=5, seconds=3)
    assert schedules.due(_every("0 * * * *"), T0, late) == T0 + timedelta(hours=5)
    assert schedules.due(_every("0 * * * *", SKIP), T0, late) == T0 + timedelta(hours=5)  # 3 s
    later = T0 + timedelta(hours=5, minutes=10)
    assert schedules.due(_every("0 * * * *"), T0, later) == T0 + timedelta(hours=5)
    assert schedules.due(_every("0 * * * *", SKIP), T0, later) is None


def test_a_year_long_gone_is_never_due() -> None:
    assert schedules.due(_every("0 0 12 * * * 2020"), T0, T0 + timedelta(days=1)) is None


@settings(database=None, deadline=None, max_examples=60)
@given(
    st.integers(min_value=1, max_value=59),
    st.integers(min_value=0, max_value=4000),
    st.integers(min_value=1, max_value=4000),
)
def test_a_due_time_is_never_written_twice_whatever_the_clock(
    every: int, start: int, steps: int
) -> None:
    """Walking the clock on at any pace, each due time comes out at most once, in order, and
    never one in the future."""
    s = _every(f"*/{every} * * * * *")
    last = T0 + timedelta(seconds=start)
    now = last
    seen: list[datetime] = []
    for i in range(1, 30):
        now = now + timedelta(seconds=(steps * i) % 97)
        when = schedules.due(s, last, now)
        if when is not None:
            assert when <= now and when > last
            seen.append(when)
            last = when
    assert seen == sorted(set(seen))


@pytest.mark.parametrize(
    ("cron", "says"),
    [
        ("R R * * *", "R (random)"),
        ("H * * * *", "R (random)"),
        ("0 0 12 * * * 2020", "never due again"),
        ("0 0 30 2 *", "field 'cron'"),
    ],
)
def test_random_hashed_and_never_due_crons_are_refused(cron: str, says: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        schedules.parse("n", _raw(cron=cron), TYPES, now=T0)
    assert says in str(caught.value)


def test_names_of_days_and_months_are_not_taken_for_random() -> None:
    assert schedules.parse("n", _raw(cron="0 9 * MAR THU"), TYPES, now=T0).cron == "0 9 * MAR THU"


def test_a_task_that_is_not_strict_json_is_refused() -> None:
    raw = b'{"cron": "0 2 * * *", "user-id": "3", "type": "SLOW", "task": {"x": NaN}}'
    with pytest.raises(ScheduleError) as caught:
        schedules.parse("n", raw, TYPES)
    assert "field 'task'" in str(caught.value)


def test_next_runs_of_a_year_with_fewer_left_lists_those_there_are() -> None:
    s = _every("0 0 12 31 12 * 2026")
    assert schedules.next_runs(s, T0, 3) == [datetime(2026, 12, 31, 12, tzinfo=UTC)]
