"""The RETRMS criterion: validation messages, and what each field selects on a small archive."""

from __future__ import annotations

import base64
import json
from datetime import date
from pathlib import Path

import pytest

from tasks.mailstore import (
    Criterion,
    CriterionError,
    FileMailStore,
    MailSummary,
    matches,
    select_partitions,
)
from tasks.mailstore.search import search

SEED = {
    "session": "yukoh_XXX",
    "group": "",
    "user": "yukoh",
    "label": "",
    "folder": "_ARCHIVE_",
    "file": ["20171025"],
    "subject": "haha",
}


def mail(headers: str | bytes, body: bytes = b"Hello.\n") -> bytes:
    if isinstance(headers, str):
        headers = headers.encode()
    return headers.strip().replace(b"\n", b"\r\n") + b"\r\n\r\n" + body


def put(root: Path, relative: str, data: bytes | str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


ATTACHED = base64.b64encode("月度報告の本文: secret\nhandshake\n".encode()).decode()
A2_BODY = f"""--b
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: base64

{ATTACHED}
--b
Content-Type: application/pdf; name="report.pdf"
Content-Disposition: attachment; filename="report.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--b--
""".encode()


@pytest.fixture(params=["no index", "cold index", "warm index"])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> FileMailStore:
    """The archive below, read without a header cache, filling one, and from a full one."""
    root = tmp_path / "archive"
    _write_archive(root)
    if request.param == "no index":
        return FileMailStore(root)
    index = tmp_path / "index"
    if request.param == "warm index":
        filler = FileMailStore(root, index)
        everything = Criterion.from_json({"has-attachment": True})
        list(search(filler, everything, lambda done, total: None))
        assert any(index.rglob("*.idx")), "the first search left no cache behind"
    return FileMailStore(root, index)


def _write_archive(tmp_path: Path) -> None:
    put(
        tmp_path,
        "yukoh/_ARCHIVE_/20171025/A1.eml",
        mail(
            """
From: Ann Lee <ann@example.com>
To: Bob <bob@example.com>
Cc: =?utf-8?Q?Carol_M=C3=BCller?= <carol@example.com>
Date: Wed, 25 Oct 2017 10:30:00 +0800
Subject: Quarterly Report
""",
            b"The numbers are\r\nfine this quarter.\r\n",
        ),
    )
    put(
        tmp_path,
        "yukoh/_ARCHIVE_/20171025/A2.eml",
        mail(
            """
From: =?utf-8?B?5bCP5piO?= <ming@example.cn>
To: yukoh@example.com
Date: Wed, 25 Oct 2017 23:30:00 +0000
Subject: =?utf-8?B?5pyI5bqm?=
 =?utf-8?B?5aCx5ZGK?=
X-Label: finance
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b"
""",
            A2_BODY,
        ),
    )
    put(
        tmp_path,
        "yukoh/_ARCHIVE_/20171026/A3.eml",
        mail(
            b"From: y971880896@pchome.com.tw\nSubject: [SLAT-talk] "
            + "如有重複寄發敬請原諒".encode("big5")
            + b"\nContent-Type: text/html; charset=big5\n",
            "<p>重複寄發</p>".encode("big5"),
        ),
    )
    put(
        tmp_path,
        "yukoh/INBOX/20171027.mbox",
        b"From a@example.com Wed Nov  1 10:00:00 2017\n"
        b"From: a@example.com\nDate: Wed, 1 Nov 2017 10:00:00 +0000\n"
        + "Subject: ＭｉＸｅＤ Case Straße\n\nFrom the mbox.\n\n".encode()
        + b"From b@example.com Thu Nov  2 10:00:00 2017\n"
        b"From: b@example.com\nDate: Thu, 2 Nov 2017 10:00:00 +0000\nSubject: second\n\nx\n",
    )
    put(
        tmp_path,
        "hank/_ARCHIVE_/20171025/H1.eml",
        mail("From: hank@example.com\nSubject: Quarterly plan\nDate: 25 Oct 2017 09:00 GMT\n"),
    )
    put(tmp_path, "groups.json", json.dumps({"sales": ["yukoh", "hank"], "empty": []}))
    put(tmp_path, "yukoh/labels.json", json.dumps({"A1": ["Important"]}))


def found(store: FileMailStore, /, **fields: object) -> list[str]:
    """Ids found for yukoh, the owner of the task, when the criterion names no user or group."""
    return _search(store, "yukoh", fields)


def found_anywhere(store: FileMailStore, /, **fields: object) -> list[str]:
    return _search(store, None, fields)


def _search(store: FileMailStore, owner: str | None, fields: dict[str, object]) -> list[str]:
    criterion = Criterion.from_json(fields)
    return [summary.id for summary in search(store, criterion, lambda done, total: None, owner)]


YUKOH_ALL = ["20171027.1", "20171027.2", "A1", "A2", "A3"]


def test_empty_criterion_is_everything_of_the_owner(store: FileMailStore) -> None:
    assert found(store) == YUKOH_ALL
    assert found_anywhere(store) == ["H1", *YUKOH_ALL]


def test_empty_values_do_not_filter(store: FileMailStore) -> None:
    empty: dict[str, object] = {
        "user": "",
        "group": None,
        "label": "",
        "file": [],
        "subject": "  ",
        "since": "",
    }
    assert found(store, **empty) == YUKOH_ALL


def test_seed_criterion(store: FileMailStore) -> None:
    assert found(store, **SEED) == []
    assert found(store, **{**SEED, "subject": "QUARTERLY"}) == ["A1"]


def test_user_group_folder_file(store: FileMailStore) -> None:
    assert found(store, user="hank") == ["H1"]
    assert found(store, group="sales") == ["H1", *YUKOH_ALL]
    assert found(store, group="sales", user="hank") == ["H1"]
    assert found(store, group="empty") == []
    assert found(store, group="empty", user="yukoh") == []
    assert found(store, user="nobody") == []
    assert found(store, folder="INBOX") == ["20171027.1", "20171027.2"]
    assert found(store, file=["20171025", "20171027"]) == ["20171027.1", "20171027.2", "A1", "A2"]
    assert found(store, group="sales", file=["20171025"]) == ["H1", "A1", "A2"]


def test_unknown_group_is_a_criterion_error(store: FileMailStore) -> None:
    with pytest.raises(CriterionError, match=r"^criterion\.group: .*'support'"):
        found(store, group="support")


def test_select_partitions(store: FileMailStore) -> None:
    criterion = Criterion.from_json({"folder": "_ARCHIVE_"})
    days = [(p.user, p.day) for p in select_partitions(store, criterion, owner="yukoh")]
    assert days == [("yukoh", "20171025"), ("yukoh", "20171026")]


def test_subject_any_language_and_case(store: FileMailStore) -> None:
    assert found(store, subject="quarterly") == ["A1"]
    assert found(store, subject="月度報告") == ["A2"]  # two adjacent encoded words
    assert found(store, subject="重複寄發") == ["A3"]  # raw 8-bit Big5
    assert found(store, subject="mixed case strasse") == ["20171027.1"]  # NFKC and casefold
    assert found(store, subject="STRASSE") == ["20171027.1"]


def test_from_and_to(store: FileMailStore) -> None:
    assert found(store, **{"from": "ANN LEE"}) == ["A1"]
    assert found(store, **{"from": "小明"}) == ["A2"]
    assert found(store, to="carol müller") == ["A1"]  # Cc counts as to
    assert found(store, to="bob@") == ["A1"]


def test_label_from_file_and_header(store: FileMailStore) -> None:
    assert found(store, label="important") == ["A1"]
    assert found(store, label="finance") == ["A2"]
    assert found(store, label="fin") == []


def test_body_and_attachments(store: FileMailStore) -> None:
    assert found(store, body="secret handshake") == ["A2"]  # base64 part, across a line end
    assert found(store, body="NUMBERS ARE FINE") == ["A1"]
    assert found(store, body="重複寄發") == ["A3"]  # HTML part in Big5
    assert found(store, body="JVBERi0") == []  # attachments are not body text
    assert found(store, **{"has-attachment": True}) == ["A2"]
    assert found(store, **{"has-attachment": False}) == ["20171027.1", "20171027.2", "A1", "A3"]


def test_since_and_before(store: FileMailStore) -> None:
    # A2 is 23:30 UTC on the 25th; A3 has no Date and counts as its partition's day, the 26th.
    assert found(store, since="2017-10-26") == ["20171027.1", "20171027.2", "A3"]
    assert found(store, before="20171026") == ["A1", "A2"]
    assert found(store, since="20171025", before="2017-10-26") == ["A1", "A2"]
    assert found(store, since="2017-11-02") == ["20171027.2"]
    # A1 is 10:30 on the 25th at +0800: 02:30 UTC, still the 25th
    assert found(store, since="2017-10-25", before="2017-10-26", subject="report") == ["A1"]


def test_fields_are_anded(store: FileMailStore) -> None:
    assert found(store, subject="quarterly", label="important", to="carol") == ["A1"]
    assert found(store, subject="quarterly", label="finance") == []
    assert found_anywhere(store, subject="quarterly", folder="_ARCHIVE_") == ["H1", "A1"]


class _HeadersOnly:
    """A message that fails the test if anything beyond its headers is read."""

    def __init__(self, subject: str) -> None:
        self.summary = MailSummary("m", "u", "f", "20170101", subject=subject)
        self.raw_size = 10

    def read_raw(self) -> bytes:
        raise AssertionError("read the raw message")

    def body_text(self) -> str:
        raise AssertionError("read the body")

    def has_attachment(self) -> bool:
        raise AssertionError("looked for attachments")


def test_matching_reads_the_body_only_when_asked() -> None:
    criterion = Criterion.from_json({"subject": "hello", "since": "2017-01-01", "label": ""})
    assert matches(criterion, _HeadersOnly("Hello there"))
    assert not criterion.reads_body
    assert Criterion.from_json({"body": "x"}).reads_body
    assert Criterion.from_json({"has-attachment": False}).reads_body


def test_criterion_fields_and_round_trip() -> None:
    criterion = Criterion.from_json(
        {**SEED, "since": "20171001", "before": "2017-11-01", "has-attachment": True, "from": "a"}
    )
    assert criterion.file == ("20171025",)
    assert criterion.since == date(2017, 10, 1)
    assert criterion.from_ == "a"
    assert criterion.has_attachment is True
    assert criterion.session == "yukoh_XXX"
    assert criterion.to_json() == {
        "user": "yukoh",
        "folder": "_ARCHIVE_",
        "file": ["20171025"],
        "subject": "haha",
        "session": "yukoh_XXX",
        "from": "a",
        "since": "2017-10-01",
        "before": "2017-11-01",
        "has-attachment": True,
    }
    assert Criterion.from_json(criterion.to_json()) == criterion


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"file": ["20171025", "2017-10-25"]},
            'criterion.file[1]: "2017-10-25" is not a day; write YYYYMMDD like "20171025"',
        ),
        (
            {"file": ["20171399"]},
            'criterion.file[0]: "20171399" is not a day; write YYYYMMDD like "20171025"',
        ),
        (
            {"file": [20171025]},
            'criterion.file[0]: 20171025 is not a day; write YYYYMMDD like "20171025"',
        ),
        ({"file": "20171025"}, 'criterion.file: "20171025" is not a list; write days like'),
        ({"nope": 1}, "criterion.nope: unknown field; the fields are user, group, folder"),
        ({"user": "../hank"}, 'criterion.user: "../hank" is not a user name; use letters'),
        ({"folder": "a/b"}, 'criterion.folder: "a/b" is not a folder name'),
        ({"subject": 3}, 'criterion.subject: 3 is not text; write it in quotes, like "haha"'),
        (
            {"since": "2017/10/25"},
            'criterion.since: "2017/10/25" is not a date; write "2017-10-25"',
        ),
        ({"before": "20171332"}, 'criterion.before: "20171332" is not a date'),
        (
            {"since": "2017-10-25", "before": "2017-10-25"},
            "criterion.before: 2017-10-25 is not after since (2017-10-25)",
        ),
        ({"has-attachment": "yes"}, 'criterion.has-attachment: "yes" is not true or false'),
        (["user"], "criterion: ['user'] is not an object"),
    ],
)
def test_validation_names_the_field(fields: object, message: str) -> None:
    with pytest.raises(CriterionError) as raised:
        Criterion.from_json(fields)
    assert str(raised.value).startswith(message)
    assert isinstance(raised.value, ValueError)
