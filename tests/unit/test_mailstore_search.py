"""Searching a store: streaming results and progress reports."""

from __future__ import annotations

import importlib
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import pytest

from tasks.mailstore import (
    Criterion,
    CriterionError,
    FileMailStore,
    MailSummary,
    Partition,
    search,
)
from tasks.mailstore.message import StoredMessage

# The package re-exports the function under the module's name; this is the module.
search_module = importlib.import_module("tasks.mailstore.search")


def put(root: Path, relative: str, data: bytes) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def mail(subject: str, body: bytes = b"x\n") -> bytes:
    return f"From: a@example.com\nSubject: {subject}\n\n".encode() + body


def mbox(count: int, body: bytes) -> bytes:
    return b"".join(
        b"From a@example.com Mon Jan  1 10:00:00 2001\n" + mail(f"m{n}", body) + b"\n"
        for n in range(count)
    )


@pytest.fixture
def store(tmp_path: Path) -> FileMailStore:
    put(tmp_path, "u/f/20170101/a.eml", mail("alpha"))
    put(tmp_path, "u/f/20170102/b.eml", mail("beta"))
    put(tmp_path, "u/f/20170103.mbox", mbox(20, b"y" * 1000 + b"\n"))
    return FileMailStore(tmp_path)


def test_progress_after_each_partition(store: FileMailStore) -> None:
    calls: list[tuple[int, int]] = []
    results = search(store, Criterion.from_json({}), lambda *call: calls.append(call), "u")
    assert calls == []  # nothing happens until results are asked for
    summaries = list(results)
    assert [s.subject for s in summaries] == ["alpha", "beta"] + [f"m{n}" for n in range(20)]
    total = sum(p.size for p in store.partitions(["u"]))
    assert calls == [
        (len(mail("alpha")), total),
        (len(mail("alpha")) + len(mail("beta")), total),
        (total, total),
    ]


def test_progress_within_a_big_partition(
    store: FileMailStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search_module, "PROGRESS_EVERY", 5000)
    calls: list[tuple[int, int]] = []
    criterion = Criterion.from_json({"file": ["20170103"]})
    found = list(search(store, criterion, lambda *call: calls.append(call), "u"))
    assert len(found) == 20
    total = calls[-1][1]
    assert calls[-1] == (total, total)
    assert len(calls) > 3
    assert all(done <= total for done, _ in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_nothing_to_search_reports_once(store: FileMailStore) -> None:
    calls: list[tuple[int, int]] = []
    criterion = Criterion.from_json({"folder": "nothing-here"})
    assert list(search(store, criterion, lambda *call: calls.append(call), "u")) == []
    assert calls == [(0, 0)]


def test_mail_removed_during_a_search_is_skipped(store: FileMailStore, tmp_path: Path) -> None:
    criterion = Criterion.from_json({"subject": "a"})
    results = search(store, criterion, lambda done, total: None, "u")
    first = next(results)
    assert first.subject == "alpha"
    (tmp_path / "u/f/20170102/b.eml").unlink()
    assert [s.subject for s in results] == []


class _Vanishing:
    """A store whose mails disappear between being listed and being read."""

    def __init__(self, inner: FileMailStore) -> None:
        self.inner = inner

    def users_of_group(self, group: str) -> list[str]:
        return self.inner.users_of_group(group)

    def partitions(
        self,
        users: Sequence[str] | None = None,
        folder: str | None = None,
        days: Sequence[str] | None = None,
    ) -> Iterator[Partition]:
        return self.inner.partitions(users, folder, days)

    def messages(self, partition: Partition) -> Iterator[StoredMessage]:
        for message in self.inner.messages(partition):
            message.path.unlink()
            yield message

    def open(self, user: str, mail_id: str) -> BinaryIO:
        return self.inner.open(user, mail_id)

    def summary(self, user: str, mail_id: str) -> MailSummary:
        return self.inner.summary(user, mail_id)


def test_mail_gone_before_it_is_read_is_skipped(store: FileMailStore) -> None:
    criterion = Criterion.from_json({"file": ["20170101", "20170102"]})
    assert list(search(_Vanishing(store), criterion, lambda done, total: None, "u")) == []


def test_unknown_group_fails_before_any_result_is_asked_for(store: FileMailStore) -> None:
    with pytest.raises(CriterionError, match="criterion.group"):
        search(store, Criterion.from_json({"group": "nobody"}), lambda done, total: None)


@pytest.mark.parametrize("cached", [False, True], ids=["no header cache", "header cache"])
def test_search_memory_does_not_grow_with_the_number_of_mails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cached: bool
) -> None:
    # Small limits, so that a few thousand mails show what a million would: the ids kept in
    # memory, and how much of a month's header cache file is read at once.
    monkeypatch.setattr(importlib.import_module("tasks.mailstore.store"), "IDS_IN_MEMORY", 500)
    monkeypatch.setattr(importlib.import_module("tasks.mailstore.monthfile"), "READ_SIZE", 16_384)

    def peak(days: int) -> int:
        root = tmp_path / f"archive{days}"
        for n in range(days):
            for i in range(100):
                put(
                    root,
                    f"u/_ARCHIVE_/2017{1 + n // 28:02d}{1 + n % 28:02d}/M{n}_{i}.eml",
                    b"From: a@example.com\nSubject: s%d\n\nbody\n" % i,
                )
        index = tmp_path / f"index{days}" if cached else None
        criterion = Criterion.from_json({"subject": "s1"})
        list(search(FileMailStore(root, index), criterion, lambda done, total: None))
        tracemalloc.start()
        try:
            found = sum(1 for _ in search(FileMailStore(root, index), criterion, lambda d, t: None))
            assert found == 11 * days
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    few, many = peak(10), peak(40)
    # What stays per mail is its size and ctime until its day is read: 16 bytes. Holding the
    # user's ids and file names, as a whole-archive index would, costs some 300 bytes a mail,
    # and so would holding a whole month of the header cache (the 40-day archive's months
    # hold 2,800 mails, the 10-day one's 1,000).
    assert many - few < 3_000 * 40, f"{few} -> {many} bytes from 1,000 to 4,000 mails"
