"""tasks.pack: names, publishing, and archives that GNU tar, gzip and sha256sum accept."""

from __future__ import annotations

import csv
import errno
import functools
import hashlib
import io
import os
import random
import subprocess
import tarfile
import threading
import tracemalloc
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks import pack as pack_module
from tasks.pack import (
    BLOCK_SIZE,
    INDEX_COLUMNS,
    MAX_NAME_BYTES,
    PROGRESS_STEP,
    Member,
    MemberSizeError,
    PackResult,
    build_targz,
    clean_arcname,
    file_member,
    publish,
    safe_name,
    tar_header,
    unique_path,
)

# GNU tar writes names in the locale's charset; a UTF-8 locale keeps them byte for byte.
UTF8_ENV = {**os.environ, "LC_ALL": "C.UTF-8"}


def data_member(arcname: str, data: bytes, mtime: float = 0) -> Member:
    return Member(arcname, len(data), lambda: io.BytesIO(data), mtime)


def run(args: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=UTF8_ENV, capture_output=True, check=False, text=True)
    assert done.returncode == 0, f"{args} failed: {done.stderr}"
    return done.stdout


def extract(archive: Path, into: Path) -> Path:
    into.mkdir()
    run(["tar", "xzf", str(archive), "-C", str(into)])
    return into


def pack(tmp_path: Path, members: Iterable[Member], top: str = "top", **kwargs: Any) -> PackResult:
    return build_targz(tmp_path / "out.tar.gz", top, members, **kwargs)


# --- archives ----------------------------------------------------------------------------------


NAMED_DATA = {
    "mails/A1.eml": b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n",
    "mails/B2.eml": b"",
    "files/報告 2017.pdf": random.Random(1).randbytes(512),
    "files/отчёт.txt": random.Random(2).randbytes(1 << 20 | 1),
    "files/party 🎉.bin": random.Random(3).randbytes(70_001),
}


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_gnu_tar_lists_and_extracts_members_byte_for_byte(tmp_path: Path, threads: int) -> None:
    members = [data_member(name, data) for name, data in NAMED_DATA.items()]
    result = pack(tmp_path, members, top="搜尋任務A計劃", index_rows=[], threads=threads)

    archive = tmp_path / "out.tar.gz"
    run(["gzip", "-t", str(archive)])
    listed = set(run(["tar", "tzf", str(archive)]).splitlines())
    files = {f"搜尋任務A計劃/{n}" for n in [*NAMED_DATA, "index.csv", "SHA256SUMS"]}
    assert listed == files | {"搜尋任務A計劃/", "搜尋任務A計劃/mails/", "搜尋任務A計劃/files/"}
    top = extract(archive, tmp_path / "x") / "搜尋任務A計劃"
    for name, data in NAMED_DATA.items():
        assert (top / name).read_bytes() == data
    assert result.members == len(NAMED_DATA)
    assert result.bytes_in == sum(map(len, NAMED_DATA.values()))
    assert result.bytes_out == archive.stat().st_size
    assert result.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert result.arcnames == tuple(NAMED_DATA)


def test_sha256sum_checks_every_member_and_the_index(tmp_path: Path) -> None:
    members = [data_member(name, data) for name, data in NAMED_DATA.items()]
    pack(tmp_path, members, index_rows=[{"id": "A1"}])
    top = extract(tmp_path / "out.tar.gz", tmp_path / "x") / "top"

    checked = run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=top).splitlines()
    assert sorted(checked) == sorted(f"{n}: OK" for n in [*NAMED_DATA, "index.csv"])


def test_index_csv_has_the_columns_and_member_hashes(tmp_path: Path) -> None:
    mail = b"Subject: =?utf-8?b?5pCc5bCL?=\r\n\r\nx\r\n"
    rows = [
        {
            "id": "A1",
            "subject": '搜尋, "quoted"\nline two',
            "from": "Олег",
            "arcname": "mails/A1.eml",
        },
        {"id": "Z9", "date": "2017-10-25", "size": 7, "sha256": "given"},
    ]
    pack(tmp_path, [data_member("mails/A1.eml", mail)], index_rows=rows)
    raw = (extract(tmp_path / "out.tar.gz", tmp_path / "x") / "top" / "index.csv").read_bytes()

    assert raw.startswith(b"id,date,")  # no BOM
    parsed = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))
    assert parsed[0] == list(INDEX_COLUMNS)
    first = dict(zip(INDEX_COLUMNS, parsed[1], strict=True))
    assert first["subject"] == '搜尋, "quoted"\nline two'
    assert first["from"] == "Олег"
    assert first["size"] == str(len(mail))
    assert first["sha256"] == hashlib.sha256(mail).hexdigest()
    assert parsed[2] == ["Z9", "2017-10-25", "", "", "", "", "", "7", "given"]


def test_a_stream_destination_is_written_and_left_open(tmp_path: Path) -> None:
    sink = io.BytesIO()
    result = build_targz(sink, "top", [data_member("a.txt", b"abc")], None, level=3)

    assert not sink.closed
    assert result.sha256 == hashlib.sha256(sink.getvalue()).hexdigest()
    (tmp_path / "s.tar.gz").write_bytes(sink.getvalue())
    assert run(["tar", "tzf", str(tmp_path / "s.tar.gz")]).splitlines() == [
        "top/",
        "top/a.txt",
        "top/SHA256SUMS",
    ]


@pytest.mark.parametrize("in_memory", [50_000, 2], ids=["names in memory", "names on disk"])
def test_clashing_names_are_numbered_deterministically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory: int
) -> None:
    monkeypatch.setattr(pack_module, "NAMES_IN_MEMORY", in_memory)
    names = ["mails/A1.eml", "mails/A1.eml", "mails/a1.eml", "index.csv", "x.tar.gz", "x.tar.gz"]
    members = [data_member(name, name.encode() + bytes([i])) for i, name in enumerate(names)]
    result = pack(tmp_path, members, index_rows=[])

    assert result.arcnames == (
        "mails/A1.eml",
        "mails/A1 (2).eml",
        "mails/a1 (3).eml",
        "index (2).csv",
        "x.tar.gz",
        "x (2).tar.gz",
    )
    top = extract(tmp_path / "out.tar.gz", tmp_path / "x") / "top"
    for i, arcname in enumerate(result.arcnames):
        assert (top / arcname).read_bytes() == names[i].encode() + bytes([i])


def test_a_file_and_a_folder_of_the_same_name_both_survive(tmp_path: Path) -> None:
    members = [data_member("d", b"file"), data_member("d/inner", b"in"), data_member("e/f", b"")]
    members.append(data_member("e", b"late file"))
    result = pack(tmp_path, members)

    assert result.arcnames == ("d", "d (2)/inner", "e/f", "e (2)")
    run(["tar", "xzf", str(tmp_path / "out.tar.gz"), "-C", str(tmp_path)])


def _names_looked_up(monkeypatch: pytest.MonkeyPatch, members: list[Member]) -> int:
    """How many candidate names packing `members` looked up: the namer's unit of work."""
    looked_up = 0
    real_key = pack_module._key

    def counting_key(path: str) -> int:
        nonlocal looked_up
        looked_up += 1
        return real_key(path)

    with monkeypatch.context() as patched:
        patched.setattr(pack_module, "_key", counting_key)
        build_targz(cast(BinaryIO, io.BytesIO()), "top", members, keep_names=False, threads=0)
    return looked_up


def _same_file(count: int) -> list[Member]:
    return [data_member("files/report.doc", b"") for _ in range(count)]


def _folder_held_by_files(count: int) -> list[Member]:
    held = [data_member("d" if n == 1 else f"d ({n})", b"") for n in range(1, count + 1)]
    return held + [data_member(f"d/{n}.eml", b"") for n in range(count)]


@pytest.mark.parametrize("members", [_same_file, _folder_held_by_files])
def test_naming_work_grows_linearly_with_clashes(
    monkeypatch: pytest.MonkeyPatch, members: Callable[[int], list[Member]]
) -> None:
    # 36,000 copies of one `files` entry once took half an hour: each copy tried (2), (3)...
    # again. Counted, not timed: four times the members may cost four times the lookups.
    small = _names_looked_up(monkeypatch, members(500))
    big = _names_looked_up(monkeypatch, members(2_000))
    assert big <= 4.4 * small, f"{small} lookups for 500 members, {big} for 2,000"


@pytest.mark.parametrize(
    ("hostile", "clean"),
    [
        ("/etc/passwd", "etc/passwd"),
        ("../../etc/passwd", "etc/passwd"),
        ("a/./b/../c", "a/b/c"),
        ("dir\\sub\\file.txt", "dir/sub/file.txt"),
        ("a\x00b\nc.eml", "a_b_c.eml"),
        ("", "unnamed"),
        ("../..", "unnamed"),
        ("  spaced name .txt ", "spaced name .txt"),
    ],
)
def test_arcnames_are_cleaned(hostile: str, clean: str) -> None:
    assert clean_arcname(hostile) == clean


def test_nothing_lands_outside_the_top_folder(tmp_path: Path) -> None:
    hostile = ["/abs", "../up", "a/../../b", "\\win\\path", "..", "x\x00y"]
    pack(tmp_path, [data_member(name, b"x") for name in hostile], top="../../evil")

    listed = run(["tar", "tzf", str(tmp_path / "out.tar.gz")]).splitlines()
    assert all(name.startswith("_._evil/") and ".." not in name.split("/") for name in listed)


@pytest.mark.parametrize(
    ("kind", "name", "size", "mtime"),
    [
        (tarfile.REGTYPE, "top/mails/A1.eml", 5, 0),
        (tarfile.DIRTYPE, "top/mails", 0, 1_764_100_000),
        (tarfile.REGTYPE, "x" * 100, 8**11 - 1, 8**11 - 1),
        (tarfile.REGTYPE, "x" * 101, 1, 1),
        (tarfile.REGTYPE, "huge", 8**11, 1),
        (tarfile.REGTYPE, "搜尋/отчёт 🎉.txt", 1, 1),
    ],
)
def test_headers_are_what_tarfile_writes(kind: bytes, name: str, size: int, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime = kind, size, mtime
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.uname = info.gname = ""
    assert tar_header(kind, name, size, mtime) == info.tobuf(
        tarfile.PAX_FORMAT, "utf-8", "surrogateescape"
    )


def test_long_component_keeps_its_extension() -> None:
    name = clean_arcname("files/" + "長" * 300 + ".pdf")
    assert name.endswith(".pdf")
    assert len(name.split("/")[1].encode()) <= MAX_NAME_BYTES


# --- sizes, progress, memory -------------------------------------------------------------------


def test_a_source_shorter_than_declared_fails_clearly(tmp_path: Path) -> None:
    member = Member("files/shrunk.bin", 10, lambda: io.BytesIO(b"12345"))
    with pytest.raises(
        MemberSizeError, match=r"files/shrunk.bin: declared 10 bytes.*ended after 5"
    ):
        pack(tmp_path, [member])


def test_a_file_that_grew_after_it_was_listed_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "growing.log"
    path.write_bytes(b"first line\n")
    member = file_member(path, "files/growing.log")
    with path.open("ab") as f:
        f.write(b"appended while packing\n")

    with pytest.raises(MemberSizeError, match=r"files/growing.log: declared 11 bytes.*grew"):
        pack(tmp_path, [member])


def test_a_failing_source_stops_the_pack_and_its_threads(tmp_path: Path) -> None:
    def broken() -> BinaryIO:
        raise OSError("disk gone")

    before = threading.active_count()
    with pytest.raises(OSError, match="disk gone"):
        pack(tmp_path, [data_member("a", b"a"), Member("b", 1, broken)], threads=2)
    assert threading.active_count() == before


class FullDisk(io.RawIOBase):
    """A destination that takes `room` bytes and then fails like a full disk."""

    def __init__(self, room: int) -> None:
        self._room = room

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._room -= memoryview(data).nbytes
        if self._room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return memoryview(data).nbytes


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_a_full_disk_fails_the_pack_and_stops_its_threads(threads: int) -> None:
    data = random.Random(5).randbytes(6 << 20)
    before = threading.active_count()
    with pytest.raises(OSError, match="No space left"):
        build_targz(
            cast(BinaryIO, FullDisk(1 << 20)), "t", [data_member("a", data)], threads=threads
        )
    assert threading.active_count() == before


def test_level_outside_isal_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="level"):
        pack(tmp_path, [], level=9)


def test_progress_is_monotonic_throttled_and_ends_at_total(tmp_path: Path) -> None:
    sizes = [3 << 20, 1, 9 << 20, 0, 5 << 20]
    members = [data_member(f"m{i}", bytes(size)) for i, size in enumerate(sizes)]
    calls: list[tuple[int, int]] = []
    pack(tmp_path, members, progress=lambda done, total: calls.append((done, total)))

    total = sum(sizes)
    assert calls[0] == (0, total)
    assert calls[-1] == (total, total)
    assert all(total_ == total for _, total_ in calls)
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:], strict=False))
    assert len(calls) <= total // PROGRESS_STEP + 2


@functools.cache
def text_pattern() -> bytes:
    """2 MiB of word-like text, built once so the memory test measures only the pack."""
    rng = random.Random(7)
    words = [bytes(rng.choices(b"abcdefghijklmnop", k=rng.randint(2, 9))) for _ in range(500)]
    return b" ".join(rng.choices(words, k=400_000))[: 2 << 20]


class PatternReader(io.RawIOBase):
    """`size` bytes of shifting text made on demand: a large file that is never in memory."""

    def __init__(self, size: int) -> None:
        self._pattern = text_pattern()
        self._left = size
        self._turn = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._left, 1 << 20)
        self._turn = (self._turn + 4099) % (1 << 20)
        buffer[:n] = self._pattern[self._turn : self._turn + n]
        self._left -= n
        return n


class NullWriter(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return memoryview(data).nbytes


def traced_peak_of_packing(size: int, threads: int) -> int:
    member = Member("files/huge.log", size, lambda: cast(BinaryIO, PatternReader(size)))
    text_pattern()
    tracemalloc.start()
    try:
        result = build_targz(cast(BinaryIO, NullWriter()), "top", [member], None, threads=threads)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.bytes_in == size
    return peak


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_memory_stays_flat_for_a_200_mb_member(threads: int) -> None:
    small = traced_peak_of_packing(8 << 20, threads)
    large = traced_peak_of_packing(200 << 20, threads)

    assert large < 20 << 20, f"peak {large / (1 << 20):.1f} MiB"
    # Flat: 25 times the input costs at most a few blocks more, as threads fill their queues.
    assert large - small < 4 * BLOCK_SIZE, f"{small / (1 << 20):.1f} -> {large / (1 << 20):.1f} MiB"


# --- names -------------------------------------------------------------------------------------


class _Discard(io.RawIOBase):
    """A destination that keeps nothing, so only the packer's own memory is measured."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return memoryview(data).nbytes


def test_memory_stays_flat_whatever_the_number_of_members(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small thresholds, so that a few thousand members show what a million would.
    monkeypatch.setattr(pack_module, "NAMES_IN_MEMORY", 1_000)
    monkeypatch.setattr(pack_module, "SPOOL_BYTES", 64 << 10)
    body = b"From: a@example.com\r\nSubject: hello\r\n\r\nHi.\r\n"

    def members(count: int) -> Iterable[Member]:
        for n in range(count):
            row = {"id": f"M{n:07d}", "subject": f"hello {n} " * 9, "from": "a@example.com"}
            yield Member(f"mails/M{n:07d}.eml", len(body), lambda: io.BytesIO(body), row=row)

    def peak(count: int) -> int:
        tracemalloc.start()
        try:
            result = build_targz(
                cast(BinaryIO, _Discard()),
                "top",
                members(count),
                total=count * len(body),
                with_index=True,
                keep_names=False,
                threads=0,
            )
            assert result.members == count
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # Past the thresholds and the 1 MiB read block that copies index.csv into the tar.
    few, many = peak(15_000), peak(45_000)
    # Before names, sums and index rows were kept aside, 30,000 more members cost ~12 MB here.
    assert many - few < 256 << 10, f"{few} -> {many} bytes from 15,000 to 45,000 members"


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("搜尋任務A計劃", "搜尋任務A計劃"),
        ("Отчёт за 2017 год 🎉", "Отчёт за 2017 год 🎉"),
        ("../../etc/passwd", "_._etc_passwd"),
        ("a/b", "a_b"),
        ("a\\b", "a_b"),
        ("nul\x00byte", "nulbyte"),
        ("....", "task-7"),
        (".", "task-7"),
        ("..", "task-7"),
        (".hidden", "hidden"),
        ("trailing...", "trailing"),
        ("  lots \t of\n\nspace  ", "lots of space"),
        ("evil\u202etxt.exe", "eviltxt.exe"),
        ("Q3: report?", "Q3_ report_"),
        ("CON", "_CON"),
        ("", "task-7"),
    ],
)
def test_safe_name_of_hostile_descriptions(description: str, expected: str) -> None:
    assert safe_name(description, "task-7") == expected


def test_safe_name_trims_to_200_bytes_between_characters() -> None:
    name = safe_name("搜" * 500, "fallback")
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name == "搜" * (MAX_NAME_BYTES // 3)
    assert safe_name("a" * 500, "f") == "a" * MAX_NAME_BYTES


def test_safe_name_falls_back_to_a_cleaned_fallback() -> None:
    assert safe_name("..", "../t1") == "_t1"
    assert safe_name("..", "..") == "archive"


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text())
def test_safe_name_is_always_a_plain_nonempty_name(description: str, fallback: str) -> None:
    name = safe_name(description, fallback)
    assert name and name not in (".", "..")
    assert not {"/", "\\", "\x00"} & set(name)
    assert ".." not in name and not name.startswith(".")
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert safe_name(name, "other") == name


# --- publishing --------------------------------------------------------------------------------


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_unique_path_numbers_clashes(tmp_path: Path) -> None:
    assert unique_path(tmp_path, "report") == tmp_path / "report.tar.gz"
    write(tmp_path / "report.tar.gz", b"1")
    assert unique_path(tmp_path, "report") == tmp_path / "report (2).tar.gz"
    write(tmp_path / "report (2).tar.gz", b"2")
    assert unique_path(tmp_path, "report") == tmp_path / "report (3).tar.gz"


def test_publish_never_overwrites_and_removes_the_temp_file(tmp_path: Path) -> None:
    out = tmp_path / "download"
    out.mkdir()
    write(out / "report.tar.gz", b"first")
    write(out / "report (2).tar.gz", b"second")
    tmp = write(tmp_path / "work.tmp", b"third")

    target = publish(tmp, out, "report")

    assert target == out / "report (3).tar.gz"
    assert target.read_bytes() == b"third"
    assert (out / "report.tar.gz").read_bytes() == b"first"
    assert (out / "report (2).tar.gz").read_bytes() == b"second"
    assert not tmp.exists()


def test_publish_racing_for_one_name_gives_each_its_own(tmp_path: Path) -> None:
    out = tmp_path / "download"
    out.mkdir()
    temps = [write(tmp_path / f"t{i}", f"pack {i}".encode()) for i in range(16)]
    start = threading.Barrier(len(temps))
    targets: dict[int, Path] = {}

    def racer(i: int) -> None:
        start.wait()
        targets[i] = publish(temps[i], out, "same")

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(len(temps))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(set(targets.values())) == len(temps)
    for i, target in targets.items():
        assert target.read_bytes() == f"pack {i}".encode()


def test_publish_when_a_name_is_taken_between_look_and_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "download"
    out.mkdir()
    real_link: Callable[..., None] = os.link

    def link_after_a_rival(src: Any, dst: Any, **kwargs: Any) -> None:
        if Path(dst).name == "r.tar.gz" and not Path(dst).exists():
            write(Path(dst), b"rival")  # another worker wins the name first
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", link_after_a_rival)
    target = publish(write(tmp_path / "t", b"mine"), out, "r")

    assert (out / "r.tar.gz").read_bytes() == b"rival"
    assert target == out / "r (2).tar.gz"
    assert target.read_bytes() == b"mine"


def test_publish_across_file_systems_still_claims_the_name_by_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "download"
    out.mkdir()
    write(out / "r.tar.gz", b"older")
    tmp = write(tmp_path / "t", b"mine")
    real_link: Callable[..., None] = os.link

    def link_within_download_only(src: Any, dst: Any, **kwargs: Any) -> None:
        if Path(src).parent != out:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", link_within_download_only)
    target = publish(tmp, out, "r")

    assert target == out / "r (2).tar.gz"
    assert target.read_bytes() == b"mine"
    assert (out / "r.tar.gz").read_bytes() == b"older"
    assert sorted(p.name for p in out.iterdir()) == ["r (2).tar.gz", "r.tar.gz"]
    assert not tmp.exists()


def test_build_then_publish_under_a_safe_name(tmp_path: Path) -> None:
    out = tmp_path / "download"
    out.mkdir()
    stem = safe_name("../季度報告 Q3", "t1")
    work = tmp_path / "work.tar.gz"
    build_targz(work, stem, [data_member("files/a.txt", b"a")], None)

    target = publish(work, out, stem)

    assert target.parent == out
    assert target.name == f"{stem}.tar.gz"
    assert run(["tar", "tzf", str(target)]).splitlines()[0] == f"{stem}/"
