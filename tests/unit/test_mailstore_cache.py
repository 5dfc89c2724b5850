"""The header cache: a second search reads no mail it has read, and never trusts a changed one."""

from __future__ import annotations

import logging
import os
import pickle
import time
import tracemalloc
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from tasks.mailstore import Criterion, FileMailStore, search
from tasks.mailstore import cache as cache_module
from tasks.mailstore import message as message_module
from tasks.mailstore import mime as mime_module
from tasks.mailstore import monthfile as monthfile_module
from tasks.mailstore import section as section_module
from tasks.mailstore import store as store_module


def mail(subject: str, body: bytes = b"Hello.\n", headers: str = "") -> bytes:
    return (
        f"From: Ann <ann@example.com>\nTo: bob@example.com\n"
        f"Date: Wed, 25 Oct 2017 10:30:00 +0000\n{headers}Subject: {subject}\n\n"
    ).encode() + body


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


ATTACHED = (
    b"--b\nContent-Type: text/plain\n\nsee attached\n"
    b"--b\nContent-Type: application/pdf\nContent-Disposition: attachment; filename=a.pdf\n\n"
    b"JVBERi0xLjQK\n--b--\n"
)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    day = root / "yukoh" / "_ARCHIVE_" / "20171025"
    put(day / "A1.eml", mail("haha first"))
    put(day / "A2.eml", mail("=?utf-8?B?6KiI5YqD?= plan"))
    put(
        day / "A3.eml",
        mail(
            "with a file",
            ATTACHED,
            'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n',
        ),
    )
    put(
        root / "yukoh" / "_ARCHIVE_" / "20171026.mbox",
        b"From a@b Wed Oct 25 10:30:00 2017\n" + mail("mbox haha") + b"\n"
        b"From a@b Wed Oct 25 10:30:00 2017\n" + mail("mbox other") + b"\n",
    )
    return root


def cached_keys(index: Path, day: str = "20171025", kind: str = "eml") -> tuple[str, ...]:
    """The keys the cache holds for that partition of yukoh's _ARCHIVE_ (one month file)."""
    (month,) = index.rglob(f"yukoh/_ARCHIVE_/{day[:6]}.idx")
    section = monthfile_module.MonthFile(str(month)).section(f"{day}.{kind}")
    assert section is not None
    return section_module.Columns(*section).keys


def found(store: FileMailStore, **fields: object) -> list[tuple[str, str]]:
    criterion = Criterion.from_json(fields)
    return [(s.id, s.subject) for s in search(store, criterion, lambda done, total: None, "yukoh")]


def no_header_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("a mail's headers were read although the cache knew them")

    monkeypatch.setattr(message_module, "read_header_block", refuse)


def test_second_search_reads_no_headers_and_finds_the_same(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = tmp_path / "index"
    first = {needle: found(FileMailStore(archive, index), subject=needle) for needle in NEEDLES}
    assert first["haha"] == [("A1", "haha first"), ("20171026.1", "mbox haha")]
    assert first["計劃"] == [("A2", "計劃 plan")]
    no_header_reads(monkeypatch)
    for needle in NEEDLES:
        assert found(FileMailStore(archive, index), subject=needle) == first[needle]
    everything = found(FileMailStore(archive, index))
    assert [mail_id for mail_id, _ in everything] == ["A1", "A2", "A3", "20171026.1", "20171026.2"]


NEEDLES = ("haha", "計劃", "PLAN")


def test_results_with_and_without_the_cache_agree(archive: Path, tmp_path: Path) -> None:
    plain = FileMailStore(archive)
    for fields in ({"subject": "haha"}, {"from": "ann", "subject": "plan"}, {"to": "nobody"}, {}):
        expected = found(plain, **fields)
        assert found(FileMailStore(archive, tmp_path / "index"), **fields) == expected  # cold
        assert found(FileMailStore(archive, tmp_path / "index"), **fields) == expected  # warm


def test_a_mail_rewritten_in_place_is_read_again(archive: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    assert found(FileMailStore(archive, index), subject="haha")[0] == ("A1", "haha first")
    target = archive / "yukoh" / "_ARCHIVE_" / "20171025" / "A1.eml"
    stat = target.stat()
    # Same size, new content, and the mtime set back as `cp -p` or `touch -r` would: only the
    # ctime, which nothing can set back, tells them apart.
    target.write_bytes(mail("hoho first"))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size
    assert found(FileMailStore(archive, index), subject="haha") == [("20171026.1", "mbox haha")]
    assert found(FileMailStore(archive, index), subject="hoho") == [("A1", "hoho first")]


def test_an_appended_mbox_is_split_again(archive: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    assert len(found(FileMailStore(archive, index), file=["20171026"])) == 2
    with (archive / "yukoh" / "_ARCHIVE_" / "20171026.mbox").open("ab") as stream:
        stream.write(b"From a@b Thu Oct 26 10:30:00 2017\n" + mail("third haha") + b"\n")
    assert found(FileMailStore(archive, index), subject="third") == [("20171026.3", "third haha")]


def test_entries_of_removed_mails_go_with_the_next_full_scan(archive: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    found(FileMailStore(archive, index))
    (archive / "yukoh" / "_ARCHIVE_" / "20171025" / "A2.eml").unlink()
    assert [i for i, _ in found(FileMailStore(archive, index))] == [
        "A1",
        "A3",
        "20171026.1",
        "20171026.2",
    ]
    assert cached_keys(index) == ("A1.eml", "A3.eml")


def test_a_search_stopped_early_keeps_what_it_did_not_reach(archive: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    found(FileMailStore(archive, index))
    store = FileMailStore(archive, index)
    results = search(store, Criterion.from_json({}), lambda done, total: None, "yukoh")
    next(results)
    results.close()  # the consumer went away after one result
    assert len(cached_keys(index)) == 3


@pytest.mark.parametrize(
    "garbage",
    [
        b"not a cache at all",
        pickle.dumps(("taskd-mail-index", 0, {})),  # an older version
        monthfile_module.FORMAT + b"\x0c\x00\x05\x00",  # a table of contents cut short
        monthfile_module.FORMAT[:-3],
    ],
)
def test_a_corrupt_cache_file_is_rebuilt(archive: Path, tmp_path: Path, garbage: bytes) -> None:
    index = tmp_path / "index"
    expected = found(FileMailStore(archive, index), subject="haha")
    for cache_file in index.rglob("*.idx"):
        cache_file.write_bytes(garbage)
    assert found(FileMailStore(archive, index), subject="haha") == expected
    assert cached_keys(index) == ("A1.eml", "A2.eml", "A3.eml")


def _rewrite_sections(index: Path, change: Callable[[bytes], bytes]) -> None:
    for path in index.rglob("*.idx"):
        month = monthfile_module.MonthFile(str(path))
        for name in month.names():
            section = month.section(name)
            assert section is not None
            data, start, end = section
            month.replace(name, change(data[start:end]))


@pytest.mark.parametrize(
    "change",
    [
        lambda data: data[: len(data) // 2],  # cut short
        lambda data: data + b"more",  # parts that do not add up
        # A row that names a callable: pickles are read with a loader that refuses any.
        lambda data: data.replace(b"haha first", b"cos\nsyste"),
    ],
)
def test_a_corrupt_section_is_rebuilt_and_never_runs_code(
    archive: Path, tmp_path: Path, change: Callable[[bytes], bytes]
) -> None:
    index = tmp_path / "index"
    expected = found(FileMailStore(archive, index), subject="haha")
    _rewrite_sections(index, change)
    assert found(FileMailStore(archive, index), subject="haha") == expected
    assert found(FileMailStore(archive, index), subject="first") == [("A1", "haha first")]


def test_an_unwritable_cache_only_costs_speed(
    archive: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=cache_module.__name__)
    blocked = tmp_path / "index"
    blocked.write_text("a file where the cache directory should be")
    assert found(FileMailStore(archive, blocked), subject="haha") == found(
        FileMailStore(archive), subject="haha"
    )
    assert "cannot write the mail index" in caplog.text


def test_attachment_answers_are_kept(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = tmp_path / "index"
    assert [i for i, _ in found(FileMailStore(archive, index), **{"has-attachment": True})] == [
        "A3"
    ]

    def refuse(raw: bytes) -> None:
        raise AssertionError("a body was parsed although the cache knew the answer")

    monkeypatch.setattr(mime_module, "parse", refuse)
    no_header_reads(monkeypatch)
    with_file = found(FileMailStore(archive, index), **{"has-attachment": True})
    without = found(FileMailStore(archive, index), **{"has-attachment": False})
    assert [i for i, _ in with_file] == ["A3"]
    assert [i for i, _ in without] == ["A1", "A2", "20171026.1", "20171026.2"]


def test_two_archives_do_not_share_entries(archive: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    mine = archive / "yukoh" / "_ARCHIVE_" / "20171025" / "A1.eml"
    # The same name, size and mtime in another archive: the archive tells them apart.
    theirs = put(tmp_path / "other" / "yukoh" / "_ARCHIVE_" / "20171025" / "A1.eml", b"")
    theirs.write_bytes(mail("hoho first"))
    os.utime(theirs, ns=(mine.stat().st_atime_ns, mine.stat().st_mtime_ns))
    found(FileMailStore(archive, index))
    assert found(FileMailStore(tmp_path / "other", index), subject="hoho") == [("A1", "hoho first")]
    assert len(list(index.iterdir())) == 2


def test_temp_files_of_killed_writers_are_swept(archive: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    found(FileMailStore(archive, index))
    (cache_file,) = index.rglob("yukoh/_ARCHIVE_/201710.idx")
    stale = cache_file.with_name(f".{cache_file.name}.dead1")
    fresh = cache_file.with_name(f".{cache_file.name}.busy2")
    for leftover in (stale, fresh):
        leftover.write_bytes(b"half a cache file")
    os.utime(stale, (0, 0))
    (archive / "yukoh" / "_ARCHIVE_" / "20171025" / "A9.eml").write_bytes(mail("new"))
    found(FileMailStore(archive, index))  # a new mail: the day's cache file is written again
    assert not stale.exists()
    assert fresh.exists()  # it may be another worker's, being written now


SETTLED_S = 0.05


@pytest.fixture
def quick_settling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Day folders settle in 50 ms rather than 5 s (a ctime cannot be set back by a test)."""
    monkeypatch.setattr(store_module, "SETTLED_NS", int(SETTLED_S * 1e9))


def settle() -> None:
    """Let the day folders changed so far settle."""
    time.sleep(2 * SETTLED_S)


def listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The day folders the store lists from now on."""
    listed: list[str] = []
    real = store_module._listed_names

    def spy(fd: int) -> list[str]:
        listed.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(store_module, "_listed_names", spy)
    return listed


@pytest.mark.usefixtures("quick_settling")
def test_a_settled_day_folder_is_not_listed_again(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = tmp_path / "index"
    day = archive / "yukoh" / "_ARCHIVE_" / "20171025"
    settle()
    first = found(FileMailStore(archive, index))
    listed = listings(monkeypatch)
    assert found(FileMailStore(archive, index)) == first
    assert found(FileMailStore(archive, index), subject="haha") == [
        ("A1", "haha first"),
        ("20171026.1", "mbox haha"),
    ]
    assert listed == []
    # Added, removed or renamed: the folder's ctime moves, and it is listed again.
    put(day / "A4.eml", mail("haha fourth"))
    (day / "A2.eml").unlink()
    assert [i for i, _ in found(FileMailStore(archive, index), subject="haha")] == [
        "A1",
        "A4",
        "20171026.1",
    ]
    assert listed == [str(day)]


def test_a_day_folder_changed_lately_is_listed_every_time(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Changed within the last few seconds (here: made by the fixture), a file added in the
    # same tick of the clock could leave its ctime as it was: such a folder is listed until it
    # has settled.
    index = tmp_path / "index"
    day = archive / "yukoh" / "_ARCHIVE_" / "20171025"
    found(FileMailStore(archive, index))
    listed = listings(monkeypatch)
    found(FileMailStore(archive, index))
    assert listed == [str(day)]


@pytest.mark.usefixtures("quick_settling")
def test_a_settled_folder_still_sees_a_mail_rewritten_in_place(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = tmp_path / "index"
    day = archive / "yukoh" / "_ARCHIVE_" / "20171025"
    settle()
    found(FileMailStore(archive, index))
    listed = listings(monkeypatch)
    found(FileMailStore(archive, index))  # from the cache, the folder not listed
    (day / "A1.eml").write_bytes(mail("hoho first, edited"))  # the folder itself unchanged
    settle()
    assert found(FileMailStore(archive, index), subject="hoho") == [("A1", "hoho first, edited")]
    assert listed == []


def test_an_unchanged_mbox_is_not_split_again(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = tmp_path / "index"
    expected = found(FileMailStore(archive, index), subject="mbox")
    store_module.mbox_splits.__globals__["_cached_splits"].cache_clear()

    def refuse(stream: object) -> None:
        raise AssertionError("an mbox was split although the cache knew its splits")

    monkeypatch.setattr(store_module, "split_mbox", refuse)
    no_header_reads(monkeypatch)
    assert found(FileMailStore(archive, index), subject="mbox") == expected


def test_a_first_search_writes_each_month_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "archive"
    for day in range(1, 21):
        put(root / "yukoh" / "_ARCHIVE_" / f"201710{day:02d}" / f"M{day}.eml", mail(f"day {day}"))
        put(root / "yukoh" / "_ARCHIVE_" / f"201711{day:02d}" / f"N{day}.eml", mail(f"day {day}"))
    written: list[str] = []
    real = monthfile_module.write_whole

    def counting(path: str, chunks: Iterable[bytes]) -> None:
        written.append(Path(path).name)
        real(path, chunks)

    monkeypatch.setattr(monthfile_module, "write_whole", counting)
    index = tmp_path / "index"
    assert len(found(FileMailStore(root, index), subject="day")) == 40
    assert written == ["201710.idx", "201711.idx"]
    assert len(found(FileMailStore(root, index), subject="day")) == 40
    assert written == ["201710.idx", "201711.idx"]  # nothing changed, nothing written


def test_a_folder_settling_costs_no_entry_reads(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "SETTLED_NS", 300_000_000)
    index = tmp_path / "index"
    found(FileMailStore(archive, index), subject="haha")  # the folders changed just now
    time.sleep(0.4)
    unpickled: list[bytes] = []
    real = section_module._unpickle

    def spy(data: bytes) -> object:
        unpickled.append(data)
        return real(data)

    monkeypatch.setattr(section_module, "_unpickle", spy)
    assert found(FileMailStore(archive, index), subject="nowhere") == []  # records them settled
    assert unpickled == []
    listed = listings(monkeypatch)
    assert found(FileMailStore(archive, index), subject="nowhere") == []
    assert listed == []


@pytest.mark.usefixtures("quick_settling")
def test_a_dangling_symlink_that_comes_to_life_is_found(archive: Path, tmp_path: Path) -> None:
    # Its target can appear without its folder changing, so such a folder is never trusted to
    # list as before.
    index = tmp_path / "index"
    day = archive / "yukoh" / "_ARCHIVE_" / "20171025"
    target = tmp_path / "elsewhere" / "late.eml"
    (day / "A0.eml").symlink_to(target)
    settle()
    assert [i for i, _ in found(FileMailStore(archive, index), subject="late")] == []
    found(FileMailStore(archive, index), subject="late")
    put(target, mail("late, but here"))
    settle()
    assert found(FileMailStore(archive, index), subject="late") == [("A0", "late, but here")]


def test_damage_to_a_month_file_is_caught(archive: Path, tmp_path: Path) -> None:
    # Bit flips that keep a section's shape (its text, a row) are caught by its CRC; a table of
    # contents pointing outside the file is refused. Either way the day is read again.
    index = tmp_path / "index"
    expected = found(FileMailStore(archive, index), subject="haha")
    (month,) = index.rglob("yukoh/_ARCHIVE_/201710.idx")
    good = month.read_bytes()
    places = [good.index(b"haha first"), good.rindex(b"haha first"), len(good) - 3]
    for at in places:
        month.write_bytes(good[:at] + bytes([good[at] ^ 0x20]) + good[at + 1 :])
        assert found(FileMailStore(archive, index), subject="haha") == expected
        month.write_bytes(good)
    toc = len(monthfile_module.FORMAT) + 4
    huge = good[: toc + 2 + 8] + (2**63 - 1).to_bytes(8, "little") + good[toc + 18 :]
    month.write_bytes(huge)
    assert found(FileMailStore(archive, index), subject="haha") == expected


def test_writing_a_big_month_file_holds_a_chunk_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monthfile_module, "READ_SIZE", 16_384)
    monkeypatch.setattr(monthfile_module, "COPY_CHUNK", 16_384)
    root = tmp_path / "archive"
    for day in range(1, 29):
        for n in range(40):
            put(root / "yukoh" / "_ARCHIVE_" / f"201710{day:02d}" / f"M{day}_{n}.eml", mail("x"))
    index = tmp_path / "index"
    found(FileMailStore(root, index), subject="new")
    (month,) = index.rglob("*.idx")
    put(root / "yukoh" / "_ARCHIVE_" / "20171015" / "N.eml", mail("new"))

    def peak(search: Callable[[], object]) -> int:
        tracemalloc.start()
        try:
            search()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    rewriting = peak(lambda: found(FileMailStore(root, index), subject="new"))
    unchanged = peak(lambda: found(FileMailStore(root, index), subject="new"))
    assert month.stat().st_size > 10 * 16_384
    assert rewriting - unchanged < month.stat().st_size / 4, (rewriting, unchanged)
