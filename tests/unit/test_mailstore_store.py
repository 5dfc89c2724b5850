"""The reference store: layout, ids, reading byte for byte, labels, groups, refusing bad names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.mailstore import (
    FileMailStore,
    InvalidName,
    MailStoreError,
    MailStoreUnavailable,
    Partition,
    UnknownGroup,
    UnknownMail,
)
from tasks.mailstore import message as message_module
from tasks.mailstore import store as store_module


def mail(subject: bytes | str = "hello", *, headers: bytes = b"", body: bytes = b"Hi.\n") -> bytes:
    if isinstance(subject, str):
        subject = subject.encode()
    return (
        b"From: Ann <ann@example.com>\nTo: bob@example.com\n"
        b"Date: Wed, 25 Oct 2017 10:30:00 +0000\n"
        + headers
        + b"Subject: "
        + subject
        + b"\n\n"
        + body
    )


def put(root: Path, relative: str, data: bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def mbox(*messages: bytes) -> bytes:
    envelope = b"From ann@example.com Wed Oct 25 10:30:00 2017\n"
    return b"\n".join(envelope + message for message in messages)


def ids(store: FileMailStore, user: str = "yukoh") -> dict[str, str]:
    """Mail id -> file name (with the message's number for an mbox)."""
    found = {}
    for partition in store.partitions([user]):
        for message in store.messages(partition):
            path = message.path.relative_to(store.root / user)
            found[message.summary.id] = f"{path}@{message.offset}" if message.offset else str(path)
    return found


@pytest.fixture
def root(tmp_path: Path) -> Path:
    put(tmp_path, "yukoh/_ARCHIVE_/20171025/A11111.eml", mail("first"))
    put(tmp_path, "yukoh/_ARCHIVE_/20171025/A11112.eml", mail("second"))
    put(tmp_path, "yukoh/_ARCHIVE_/20171026.mbox", mbox(mail("m1"), mail("m2")))
    put(tmp_path, "yukoh/INBOX/20171026/B1.eml", mail("inbox"))
    put(tmp_path, "hank/_ARCHIVE_/20171025/A11111.eml", mail("hank's"))
    return tmp_path


def test_partitions_sorted_and_narrowed(root: Path) -> None:
    store = FileMailStore(root)
    listed = [(p.user, p.folder, p.day) for p in store.partitions()]
    assert listed == [
        ("hank", "_ARCHIVE_", "20171025"),
        ("yukoh", "INBOX", "20171026"),
        ("yukoh", "_ARCHIVE_", "20171025"),
        ("yukoh", "_ARCHIVE_", "20171026"),
    ]
    narrowed = list(store.partitions(["yukoh"], "_ARCHIVE_", ["20171026"]))
    assert narrowed == [
        Partition(
            "yukoh",
            "_ARCHIVE_",
            "20171026",
            (root / "yukoh/_ARCHIVE_/20171026.mbox").stat().st_size,
        )
    ]
    assert list(store.partitions(["nobody"])) == []
    assert store.users() == ["hank", "yukoh"]


def test_partition_size_counts_every_file(root: Path) -> None:
    store = FileMailStore(root)
    (partition,) = store.partitions(["yukoh"], "_ARCHIVE_", ["20171025"])
    assert partition.size == len(mail("first")) + len(mail("second"))


def test_eml_and_mbox_of_one_day_are_one_partition(root: Path) -> None:
    put(root, "yukoh/_ARCHIVE_/20171026/C1.eml", mail("eml of an mbox day"))
    store = FileMailStore(root)
    (partition,) = store.partitions(["yukoh"], "_ARCHIVE_", ["20171026"])
    subjects = [m.summary.subject for m in store.messages(partition)]
    assert subjects == ["eml of an mbox day", "m1", "m2"]


def test_ids_are_stems_and_mbox_numbers(root: Path) -> None:
    assert ids(FileMailStore(root)) == {
        "A11111": "_ARCHIVE_/20171025/A11111.eml",
        "A11112": "_ARCHIVE_/20171025/A11112.eml",
        "20171026.1": "_ARCHIVE_/20171026.mbox",
        "20171026.2": f"_ARCHIVE_/20171026.mbox@{len(mbox(mail('m1'))) + 1}",
        "B1": "INBOX/20171026/B1.eml",
    }


def test_clashing_stems_are_qualified(tmp_path: Path) -> None:
    put(tmp_path, "u/a/20170101/x.eml", mail("first x"))
    put(tmp_path, "u/a/20170102/x.eml", mail("x on a later day"))
    put(tmp_path, "u/b/20170102/x.eml", mail("x in another folder"))
    put(tmp_path, "u/b/20170102/20170102.x.eml", mail("stem equal to a qualified id"))
    put(tmp_path, "u/b/20170103/odd name é.eml", mail("stem with other characters"))
    put(tmp_path, "u/b/20170103/..eml", mail("hidden: not listed"))
    put(tmp_path, "u/b/20170103/notes.txt", b"not mail")
    found = ids(FileMailStore(tmp_path), "u")
    qualified = {i for i in found if i.startswith("20170103.odd_name")}
    assert len(qualified) == 1
    (odd,) = qualified
    assert len(odd.rsplit(".", 1)[1]) == 8
    assert found == {
        "x": "a/20170101/x.eml",
        "20170102.x": "a/20170102/x.eml",
        "b.20170102.x": "b/20170102/x.eml",
        odd: "b/20170103/odd name é.eml",
        # its own stem was taken already
        "20170102.20170102.x": "b/20170102/20170102.x.eml",
    }


def test_mbox_days_in_two_folders_and_mbox_shaped_stems(tmp_path: Path) -> None:
    put(tmp_path, "u/INBOX/20170101.mbox", mbox(mail("inbox 1")))
    put(tmp_path, "u/_ARCHIVE_/20170101.mbox", mbox(mail("archive 1"), mail("archive 2")))
    put(tmp_path, "u/_ARCHIVE_/20170101/20170101.1.eml", mail("eml named like an mbox id"))
    put(tmp_path, "u/_ARCHIVE_/20170101/20170202.1.eml", mail("no mbox that day: plain"))
    store = FileMailStore(tmp_path)
    subjects = {i: store.summary("u", i).subject for i in ids(store, "u")}
    assert subjects == {
        "20170101.1": "inbox 1",
        "_ARCHIVE_.20170101.1": "archive 1",
        "_ARCHIVE_.20170101.2": "archive 2",
        "20170101.20170101.1": "eml named like an mbox id",
        "20170202.1": "no mbox that day: plain",
    }
    with pytest.raises(UnknownMail):
        store.open("u", "INBOX.20170101.1")
    with pytest.raises(UnknownMail):
        store.open("u", "_ARCHIVE_.20170101.3")


def test_ids_are_stable_when_the_archive_grows(root: Path) -> None:
    before = ids(FileMailStore(root))
    put(root, "yukoh/_ARCHIVE_/20171101/A11111.eml", mail("a later A11111"))
    put(root, "yukoh/_ARCHIVE_/20171101.mbox", mbox(mail("later mbox")))
    after = ids(FileMailStore(root))
    assert after.items() >= before.items()
    assert after["20171101.A11111"] == "_ARCHIVE_/20171101/A11111.eml"


def test_open_reads_byte_for_byte(root: Path) -> None:
    store = FileMailStore(root)
    with store.open("yukoh", "A11111") as stream:
        assert stream.read() == mail("first")
    whole = (root / "yukoh/_ARCHIVE_/20171026.mbox").read_bytes()
    first = b"From ann@example.com Wed Oct 25 10:30:00 2017\n" + mail("m1") + b"\n"
    with store.open("yukoh", "20171026.1") as stream:
        assert stream.read() == first
    with store.open("yukoh", "20171026.2") as stream:
        assert stream.read(10) == whole[len(first) : len(first) + 10]
        stream.seek(0)
        assert stream.read() == whole[len(first) :]
        assert stream.read() == b""


@pytest.mark.parametrize(
    "mail_id", ["../x", "..", "../hank/_ARCHIVE_/20171025/A11111", "A11111.eml", "", "A1/../A11111"]
)
def test_path_shaped_and_unknown_ids_are_refused(root: Path, mail_id: str) -> None:
    store = FileMailStore(root)
    with pytest.raises(UnknownMail, match="id"):
        store.open("yukoh", mail_id)
    with pytest.raises(UnknownMail):
        store.summary("yukoh", mail_id)


@pytest.mark.parametrize("user", ["../yukoh", "..", ".hidden", "a/b", "", "yukoh/../hank"])
def test_path_shaped_users_are_refused(root: Path, user: str) -> None:
    store = FileMailStore(root)
    with pytest.raises(InvalidName, match="user"):
        store.open(user, "A11111")
    with pytest.raises(InvalidName):
        list(store.partitions([user]))


def test_unknown_mail_names_the_id(root: Path) -> None:
    with pytest.raises(UnknownMail) as raised:
        FileMailStore(root).open("yukoh", "Z99")
    assert "'Z99'" in str(raised.value)
    assert raised.value.mail_id == "Z99"


def test_bad_folder_and_day_filters_are_refused(root: Path) -> None:
    store = FileMailStore(root)
    with pytest.raises(InvalidName, match="folder"):
        list(store.partitions(None, "../x"))
    with pytest.raises(InvalidName, match="day"):
        list(store.partitions(None, None, ["2017-10-25"]))


def test_summary_fields(root: Path) -> None:
    summary = FileMailStore(root).summary("yukoh", "A11111")
    assert summary.to_json() == {
        "id": "A11111",
        "user": "yukoh",
        "folder": "_ARCHIVE_",
        "day": "20171025",
        "date": "2017-10-25T10:30:00Z",
        "from": "Ann <ann@example.com>",
        "to": "bob@example.com",
        "subject": "first",
        "size": len(mail("first")),
    }


def test_to_joins_to_and_cc(tmp_path: Path) -> None:
    put(tmp_path, "u/f/20170101/m.eml", mail(headers=b"Cc: =?utf-8?B?5bCP5piO?= <x@example.jp>\n"))
    assert FileMailStore(tmp_path).summary("u", "m").to == "bob@example.com, 小明 <x@example.jp>"


def test_labels_from_file_and_headers(root: Path) -> None:
    (root / "yukoh/labels.json").write_text(
        json.dumps({"A11111": ["work", "urgent"], "20171026.2": ["from-json"]})
    )
    put(
        root,
        "yukoh/_ARCHIVE_/20171025/A11111.eml",
        mail("first", headers=b"X-Label: urgent, travel\nX-Keywords: $Junk NonJunk\n"),
    )
    store = FileMailStore(root)
    assert store.summary("yukoh", "A11111").labels == (
        "work",
        "urgent",
        "travel",
        "$Junk",
        "NonJunk",
    )
    assert store.summary("yukoh", "20171026.2").labels == ("from-json",)
    assert store.summary("yukoh", "A11112").labels == ()


def test_broken_labels_file_is_ignored(root: Path) -> None:
    (root / "yukoh/labels.json").write_text("{not json")
    assert FileMailStore(root).summary("yukoh", "A11111").labels == ()


def test_groups(root: Path) -> None:
    (root / "groups.json").write_text(json.dumps({"sales": ["yukoh", "hank", "yukoh", "../x"]}))
    store = FileMailStore(root)
    assert store.users_of_group("sales") == ["yukoh", "hank"]
    with pytest.raises(UnknownGroup, match="'support'"):
        store.users_of_group("support")


def test_missing_and_broken_groups_file(root: Path) -> None:
    with pytest.raises(UnknownGroup):
        FileMailStore(root).users_of_group("sales")
    (root / "groups.json").write_text("[1, 2]")
    with pytest.raises(MailStoreError, match="groups.json"):
        FileMailStore(root).users_of_group("sales")


def test_files_that_are_not_messages_are_listed_and_readable(tmp_path: Path) -> None:
    transcript = b"HELO example.com\nMAIL FROM:<a@example.com>\nDATA\n" + mail("inside") + b".\n"
    put(tmp_path, "u/f/20170101/null.eml", b"\n")
    put(tmp_path, "u/f/20170101/empty.eml", b"")
    put(tmp_path, "u/f/20170101/bsmtp.eml", transcript)
    put(tmp_path, "u/f/20170101/binary.eml", bytes(range(256)) * 4)
    store = FileMailStore(tmp_path)
    assert sorted(ids(store, "u")) == ["binary", "bsmtp", "empty", "null"]
    null = store.summary("u", "null")
    assert (null.subject, null.from_, null.to, null.date, null.size) == ("", "", "", "", 1)
    assert store.summary("u", "empty").size == 0
    assert store.summary("u", "bsmtp").subject == "inside"
    for mail_id, data in [
        ("null", b"\n"),
        ("bsmtp", transcript),
        ("binary", bytes(range(256)) * 4),
    ]:
        with store.open("u", mail_id) as stream:
            assert stream.read() == data


def test_raw_8bit_subject_uses_a_parts_charset(tmp_path: Path) -> None:
    raw = (
        b"From: a@example.com\nSubject: " + "Привет мир, как дела".encode("koi8-r") + b"\n"
        b"MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=b\n\n"
        b"--b\nContent-Type: text/plain; charset=koi8-r\n\nbody\n--b--\n"
    )
    put(tmp_path, "u/f/20170101/k.eml", raw)
    assert FileMailStore(tmp_path).summary("u", "k").subject == "Привет мир, как дела"


class _CountingReader:
    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.consumed += len(data)
        return data

    def __enter__(self) -> _CountingReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.stream.close()


def test_summary_reads_only_the_header_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(tmp_path, "u/f/20170101/big.eml", mail("big", body=b"x" * 5_000_000))
    readers: list[_CountingReader] = []
    real_open = message_module.open_whole

    def counting_open(path: Path, buffer: int = message_module.READ_BUFFER) -> _CountingReader:
        readers.append(_CountingReader(real_open(path, buffer)))
        return readers[-1]

    monkeypatch.setattr(message_module, "open_whole", counting_open)
    assert FileMailStore(tmp_path).summary("u", "big").subject == "big"
    assert readers, "the summary was read without opening the file through open_whole"
    assert sum(reader.consumed for reader in readers) <= 64 * 1024


def test_missing_archive_root_is_retryable(tmp_path: Path) -> None:
    store = FileMailStore(tmp_path / "not-mounted")
    with pytest.raises(MailStoreUnavailable) as raised:
        list(store.partitions())
    assert raised.value.retryable
    with pytest.raises(MailStoreUnavailable):
        store.open("yukoh", "A11111")


def test_message_body_and_attachment_are_lazy(root: Path) -> None:
    store = FileMailStore(root)
    (partition,) = store.partitions(["yukoh"], "_ARCHIVE_", ["20171025"])
    first = next(store.messages(partition))
    assert first._parsed is False
    assert first.summary.subject == "first"
    assert first._parsed is False
    assert first.body_text() == "Hi.\n"
    assert first.has_attachment() is False


def _clashing_archive(root: Path) -> None:
    for day in ("20170101", "20170102", "20170103"):
        for folder in ("a", "b"):
            for stem in ("x", "y", f"{day}.x", "odd name"):
                put(root, f"u/{folder}/{day}/{stem}.eml", mail(f"{folder} {day} {stem}"))
    put(root, "u/a/20170102.mbox", mbox(mail("mbox 1"), mail("mbox 2")))


@pytest.mark.parametrize("in_memory", [200_000, 3], ids=["ids in memory", "ids on disk"])
def test_every_id_finds_its_mail_in_any_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory: int
) -> None:
    monkeypatch.setattr(store_module, "IDS_IN_MEMORY", in_memory)
    _clashing_archive(tmp_path)
    lister = FileMailStore(tmp_path)
    listed = {
        message.summary.id: (message.summary.folder, message.summary.day, message.summary.subject)
        for partition in lister.partitions(["u"])
        for message in lister.messages(partition)
    }
    assert len(listed) == 26
    assert listed["x"] == ("a", "20170101", "a 20170101 x")
    assert listed["b.20170102.x"] == ("b", "20170102", "b 20170102 x")
    backwards = sorted(listed, reverse=True)
    store = FileMailStore(tmp_path)  # one store, asked out of order: its walk starts again
    for mail_id in backwards:
        assert store.summary("u", mail_id).subject == listed[mail_id][2]
        folder, day, subject = listed[mail_id]
        assert store.message("u", mail_id, folder, day).summary.subject == subject
    # A wrong hint only costs a longer look: ids are never taken from it.
    assert store.message("u", "x", "b", "20170103").summary.subject == "a 20170101 x"
    with pytest.raises(UnknownMail):
        store.message("u", "b.20170104.x", "b", "20170104")


_STEM_PIECES = ["x", "A1", "20170101", "20170102", "1", "2", "b", "..", ".", "é", "-", "_", " "]


@given(
    days=st.lists(
        st.lists(
            st.lists(st.sampled_from(_STEM_PIECES), min_size=1, max_size=4).map("".join),
            max_size=6,
        ),
        min_size=1,
        max_size=5,
    ),
    suffixes=st.lists(st.sampled_from([".eml", ".EML", ".Eml"]), min_size=30, max_size=30),
)
@settings(max_examples=60, deadline=None)
def test_ids_given_a_day_at_a_time_equal_those_given_a_mail_at_a_time(
    tmp_path_factory: pytest.TempPathFactory, days: list[list[str]], suffixes: list[str]
) -> None:
    # The walk gives a whole day its stems as ids at once when it can; the ids must be those
    # the rule gives mail by mail (clashes, odd names, mbox-shaped stems, one stem in two cases).
    root = tmp_path_factory.mktemp("archive")
    put(root, "u/a/20170101.mbox", mbox(mail("an mbox day")))
    suffix = iter(suffixes)
    for number, stems in enumerate(days, start=1):
        folder = "a" if number % 2 else "b"
        for stem in stems:
            if not stem.startswith("."):
                put(root, f"u/{folder}/2017010{number}/{stem}{next(suffix)}", mail(stem))
    at_once = ids(FileMailStore(root), "u")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "_plain", lambda stems: False)  # never a day at once
        one_by_one = ids(FileMailStore(root), "u")
    assert at_once == one_by_one
