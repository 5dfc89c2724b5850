"""Result sets: written whole or not at all, read back one mail at a time."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from tasks.errors import TaskFailed
from tasks.results import ResultSet, read_result_set, write_result_set

HEADER = {"retrieve-id": "R1", "criterion": {"subject": "haha"}, "job-id": "j"}


def mails(count: int) -> list[dict[str, Any]]:
    return [
        {"id": f"M{n}", "user": "yukoh", "subject": f"haha «{n}» ]", "from": "a, b", "size": n}
        for n in range(count)
    ]


def written(tmp_path: Path, entries: list[dict[str, Any]]) -> Path:
    target = tmp_path / "retrieve" / "3" / "R1.json"
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    assert write_result_set(target, scratch, HEADER, iter(entries)) == len(entries)
    return target


@pytest.mark.parametrize("count", [0, 1, 3])
def test_what_is_written_is_plain_json_and_reads_back(tmp_path: Path, count: int) -> None:
    target = written(tmp_path, mails(count))
    data = json.loads(target.read_text(encoding="utf-8"))
    assert data == {**HEADER, "count": count, "mails": mails(count)}
    result = ResultSet(target, "R1", "3")
    assert result.header == {**HEADER, "count": count}
    assert list(result.mails()) == mails(count)
    assert list(result.mails()) == mails(count)  # read again, from the start
    assert read_result_set(target, "R1", "3") == data


def test_a_result_set_laid_out_by_another_tool_is_read_whole(tmp_path: Path) -> None:
    target = tmp_path / "R1.json"
    target.write_text(json.dumps({**HEADER, "count": 2, "mails": mails(2)}), encoding="utf-8")
    result = ResultSet(target, "R1", "3")
    assert result.header["count"] == 2
    assert list(result.mails()) == mails(2)


def test_a_cut_short_result_set_is_named_damaged(tmp_path: Path) -> None:
    target = written(tmp_path, mails(50))
    text = target.read_text(encoding="utf-8")
    target.write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(TaskFailed, match="'R1' is damaged.*run the RETRMS again"):
        list(ResultSet(target, "R1", "3").mails())


def test_a_missing_result_set_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(TaskFailed, match="not a result set of user 3; run the RETRMS first"):
        ResultSet(tmp_path / "nope.json", "nope", "3")


def test_pick_keeps_the_archive_order_and_names_unknown_ids_first(tmp_path: Path) -> None:
    result = ResultSet(written(tmp_path, mails(5)), "R1", "3")
    assert [m["id"] for m in result.pick(["M3", "M1", "M3"])] == ["M1", "M3"]
    picked = result.pick(["M1", "X9", "../etc"])
    with pytest.raises(TaskFailed, match=r"field 'mails': 'X9', '\.\./etc' not in result set"):
        next(picked)


def test_reading_holds_one_mail_at_a_time(tmp_path: Path) -> None:
    target = written(tmp_path, mails(20_000))
    size = target.stat().st_size
    result = ResultSet(target, "R1", "3")
    tracemalloc.start()
    try:
        count = sum(1 for _ in result.mails())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 20_000
    assert peak < size // 20, f"peak {peak} bytes reading a {size}-byte result set"
