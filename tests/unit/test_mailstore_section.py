"""A partition's section of the header cache: written, read back in place, searched as bytes."""

from __future__ import annotations

import pickle
from array import array
from pathlib import Path

import pytest

from tasks.mailstore import Criterion
from tasks.mailstore import section as section_module


@pytest.mark.parametrize(
    ("text", "needle", "lines"),
    [
        (b"haha\nno\nhaha haha\n\nhaha", b"haha", [0, 2, 4]),
        (b"no\nno", b"haha", []),
        (b"\n\nxhahax", b"haha", [2]),
        (b"hah\nahaha\n", b"haha", [1]),  # never across a line break
        ("計劃\n計\n劃計劃".encode(), "計劃".encode(), [0, 2]),
    ],
)
def test_lines_holding_a_needle(text: bytes, needle: bytes, lines: list[int]) -> None:
    data = b"before" + text + b"after"  # found in place, within the bounds given
    start = len(b"before")
    assert list(section_module._lines_with(data, start, start + len(text), needle)) == lines


def test_a_section_reads_back_what_was_written() -> None:
    rows = {
        f"M{n}.eml": ((n, 10**18 + n), mail_row(f"subject {n}", f"from{n}@example.com"))
        for n in range(12)
    }
    rows["odd\udce9name.eml"] = ((7, 7), mail_row("Re: 計劃 plan", "ann@example.com"))
    rows["splits"] = ((1, 2), ((0, 10), (10, 20)))  # not an entry: never matched
    built = section_module.Columns.build(rows, b"extra bytes")
    section = section_module.Columns(b"in front" + built.data, len(b"in front"))
    assert section.keys == tuple(sorted(rows))
    assert section.extra == b"extra bytes"
    assert list(array("q", section.stamps)) == [v for k in sorted(rows) for v in rows[k][0]]
    assert section.as_dict() == rows
    plan = Criterion.from_json({"subject": "計劃"}).raw_filter()
    assert [section.keys[n] for n, _ in section.matching(plan)] == ["odd\udce9name.eml"]
    both = Criterion.from_json({"subject": "subject 1", "from": "from11"}).raw_filter()
    assert [section.keys[n] for n, _ in section.matching(both)] == ["M11.eml"]
    assert len(section.matching(None)) == 13


def mail_row(subject: str, sender: str) -> tuple[object, ...]:
    folded = subject.casefold()
    return ("2017-10-25", sender, "bob@example.com", subject, "<id>", (), folded, sender, "", None)


def test_a_row_naming_a_callable_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "owned-by-cache"
    evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    good = section_module.Columns.build({"a.eml": ((1, 2), ("x",) * 10)})
    count, keys, *texts, rows, extra = section_module._HEADER.unpack_from(good.data)
    starts = array("q", [0, len(evil)]).tobytes()
    head = section_module._HEADER.pack(count, keys, *texts, len(starts) + len(evil), extra)
    body = good.data[section_module._HEADER.size : good._rows_at]
    columns = section_module.Columns(head + body + starts + evil)
    with pytest.raises(pickle.UnpicklingError):
        columns.row(0)
    assert not marker.exists()


def test_new_extra_bytes_keep_everything_else() -> None:
    rows = {
        f"M{n}.eml": ((n, n), ("2017", "a", "b", f"s{n}", "", (), f"s{n}", "a", "b", None))
        for n in range(3)
    }
    built = section_module.Columns.build(rows, b"old")
    again = section_module.Columns(section_module.Columns(built.data).with_extra(b"new extra"))
    assert again.extra == b"new extra"
    assert again.keys == built.keys
    assert again.stamps == built.stamps
    assert again.as_dict() == rows


def test_a_row_without_text_where_text_belongs_is_no_entry() -> None:
    good = ("2017", "a", "b", "plan", "", (), "plan", "a", "b", None)
    odd = ("2017", "a", "b", "plan", "", (), 42, "a", "b", None)
    section = section_module.Columns.build({"a.eml": ((1, 1), good), "b.eml": ((1, 1), odd)})
    assert [n for n, _ in section.matching(None)] == [0]
    plan = Criterion.from_json({"from": "a"}).raw_filter()
    assert [n for n, _ in section.matching(plan)] == [0]


@pytest.mark.parametrize(
    ("names", "plain"),
    [
        (["a.eml", "B.EML", "x y.Eml", "b..c.eml"], True),
        ([], True),
        (["a.eml", "../a.eml"], False),
        (["sub/a.eml"], False),
        (["a.eml", ".hidden.eml"], False),
        ([".."], False),
    ],
)
def test_names_from_a_cache_cannot_lead_out_of_the_folder(names: list[str], plain: bool) -> None:
    section = section_module.Columns.build({name: ((1, 1), ()) for name in names})
    assert section.keys_are_file_names() is plain
