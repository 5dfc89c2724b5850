"""Packing chosen mails and files into one `.tar.gz`, and publishing it without overwriting.

Pure packing: no Celery and no mail store. Callers hand in `Member`s (a name, a size and a way
to open the bytes) plus optional index rows; `build_targz` streams a PAX tar through ISA-L gzip,
hashing each member on the way, and `publish` links the finished file into the download folder.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import logging
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO

from isal import igzip_threaded

from taskd import atomic
from taskd.settings import DEFAULT_OUTPUT_MODE, Settings
from tasks.spillset import SpillSet, digest

log = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20
"""Read, hash and compress in blocks this big: ISA-L runs at full speed, memory stays flat."""
PROGRESS_STEP = 4 << 20
"""Report progress after at least this many more input bytes (and once at the start and end)."""
MAX_NAME_BYTES = 200
"""Longest stem or path component in UTF-8 bytes; leaves room for ` (n)` and a suffix in 255."""
TAR_SUFFIX = ".tar.gz"
INDEX_NAME = "index.csv"
SUMS_NAME = "SHA256SUMS"
INDEX_COLUMNS = ("id", "date", "from", "to", "subject", "folder", "day", "size", "sha256")
INDEX_LINK_KEY = "arcname"
"""Index-row key (not written) naming the member whose sha256 and size fill that row."""
SPOOL_BYTES = 1 << 20
"""index.csv and SHA256SUMS stay in memory up to this size, then spill to a temp file."""
NAMES_IN_MEMORY = 50_000
"""Member names are checked for clashes in memory up to this many, then in a temp file."""
FALLBACK_STEM = "archive"
"""Name used when both the description and the fallback clean up to nothing."""
UNNAMED_MEMBER = "unnamed"
MAX_CLASH_NUMBER = 10_000
"""`publish` gives up after ` (n)` reaches this; a folder that full is an operator problem."""
DEFAULT_LEVEL = 1
"""ISA-L level, 0-3. On mail (bench/bench_pack.py) 3 is ~1.5% smaller and ~10% slower; on plain
text it is ~9% smaller at the same speed, since many small files then bound the pace."""
DEFAULT_THREADS = 1
"""ISA-L compressor threads beside the caller's, which reads, hashes and frames the tar. One
overlaps the two; a second gained ~20% on two cores but takes a core from other workers."""
FILE_MODE = 0o644
DIR_MODE = 0o755
"""Modes of the members inside the archive (what `tar x` creates, less the user's umask)."""
BUILD_MODE = 0o600
"""An archive being built is its owner's alone; `publish` gives it the download's mode."""

_BUILD_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_TAR_END = b"\0" * (2 * tarfile.BLOCKSIZE)
# ustar header fields: name mode uid gid size mtime chksum type linkname magic+version uname gname
# devmajor devminor prefix, padded to one 512-byte block; unset fields are NUL.
_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12s")
_OCTAL_11 = 8**11
_ZERO_ID = b"0000000\0"
_EMPTY_TAIL = (b"",) * 6
# Characters that are legal on Linux but break the name for Windows users downloading it.
_STEM_REPLACED = frozenset('/\\<>:"|?*')
_PATH_SEPARATORS = re.compile(r"[/\\]")
_DOT_RUNS = re.compile(r"\.{2,}")
# Invisible characters that can make a name display as something else (e.g. U+202E reverses it).
_INVISIBLE = frozenset(
    "\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
)
# Lone surrogates (from undecodable bytes) cannot be written as UTF-8; line and paragraph
# separators would split a SHA256SUMS line when displayed.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}
)


class PackError(Exception):
    """The pack cannot be built or published as asked; the message says which item and why."""


class MemberSizeError(PackError):
    """A source delivered more or fewer bytes than its declared size (it changed while packing).

    A tar header carries the size before the data, so the size is taken as declared and the
    source must deliver exactly that many bytes; anything else fails the pack rather than
    writing a member that differs from the file on disk.
    """

    def __init__(self, arcname: str, declared: int, message: str) -> None:
        super().__init__(f"{arcname}: declared {declared} bytes, but {message}")
        self.arcname = arcname
        self.declared = declared


@dataclass(frozen=True)
class Member:
    """One file to pack: its path below the top folder, its size, and how to open its bytes."""

    arcname: str
    size: int
    open: Callable[[], BinaryIO]
    mtime: float = 0
    row: Mapping[str, Any] | None = None
    """Its line of index.csv (`INDEX_COLUMNS`; sha256 and size are filled in as it is packed),
    for `build_targz(..., with_index=True)`."""


@dataclass(frozen=True)
class PackResult:
    """What `build_targz` wrote: input and output bytes, member count and the archive's SHA-256."""

    bytes_in: int
    bytes_out: int
    members: int
    sha256: str
    arcnames: tuple[str, ...] = ()
    """Final member paths below the top folder, in order, after cleaning and clash numbers."""


def file_member(path: Path, arcname: str) -> Member:
    """A `Member` for a regular file, sized and dated by one stat now."""
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise PackError(f"{path}: not a regular file")
    # Unbuffered: reads are whole blocks anyway, so a buffer would only add a copy.
    return Member(arcname, st.st_size, lambda: open(path, "rb", buffering=0), st.st_mtime)


# --- names -------------------------------------------------------------------------------------


def safe_name(description: str, fallback: str) -> str:
    """A file-name stem from free text: letters of any script kept, never empty or a path.

    No `/`, `\\`, NUL or other control characters, no `..`, no leading or trailing dots or
    spaces, whitespace collapsed, Windows-reserved characters as `_`, at most `MAX_NAME_BYTES`
    UTF-8 bytes. An empty result falls back to the cleaned `fallback`, then to `FALLBACK_STEM`.
    Cleaning a cleaned name changes nothing.
    """
    return _stem(description) or _stem(fallback) or FALLBACK_STEM


def _stem(text: str) -> str:
    # Collapse before scrubbing so tabs and newlines become spaces, and after so removed
    # characters leave no double spaces.
    text = " ".join(_scrub(" ".join(text.split()), _STEM_REPLACED, control="").split())
    text = _DOT_RUNS.sub(".", text).strip(" .")
    # "CON.tar.gz" cannot be saved on Windows; a prefix keeps the name readable.
    prefix = "_" if text.split(".")[0].rstrip().upper() in _WINDOWS_DEVICES else ""
    return prefix + _trim_utf8(text, MAX_NAME_BYTES - len(prefix)).rstrip(" .")


def _scrub(text: str, replaced: frozenset[str], control: str) -> str:
    """NFC text with `replaced` characters as `_` and control characters as `control`."""
    if text.isascii() and text.isprintable() and replaced.isdisjoint(text):
        return text  # the common case (mail ids, plain file names), without a per-character pass
    out = []
    for ch in unicodedata.normalize("NFC", text):
        if ch in replaced:
            out.append("_")
        elif ch in _INVISIBLE or unicodedata.category(ch) in _CONTROL_CATEGORIES:
            out.append(control)
        else:
            out.append(ch)
    return "".join(out)


def _trim_utf8(text: str, limit: int) -> str:
    """At most `limit` UTF-8 bytes, cut between characters."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def clean_arcname(name: str) -> str:
    """A relative POSIX path with no empty, `.` or `..` parts, no control characters or NUL.

    Both `/` and `\\` separate parts; control characters become `_` so names stay distinct;
    parts longer than `MAX_NAME_BYTES` are cut, keeping their extension.
    """
    parts = []
    for raw in _PATH_SEPARATORS.split(name):
        part = _scrub(raw, frozenset(), control="_").strip()
        if part.strip("."):
            parts.append(_fit(part, MAX_NAME_BYTES))
    return "/".join(parts) or UNNAMED_MEMBER


def _split_ext(name: str) -> tuple[str, str]:
    suffixes = PurePosixPath(name).suffixes
    keep = 2 if len(suffixes) >= 2 and suffixes[-2].lower() == ".tar" else 1
    ext = "".join(suffixes[-keep:])
    return name[: len(name) - len(ext)], ext


def _fit(name: str, limit: int) -> str:
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, ext = _split_ext(name)
    if len(ext.encode("utf-8")) > limit // 4:
        stem, ext = name, ""
    return _trim_utf8(stem, limit - len(ext.encode("utf-8"))) + ext


def _numbered(stem: str, n: int, suffix: str) -> str:
    return f"{stem}{suffix}" if n == 1 else f"{stem} ({n}){suffix}"


def _numbered_name(name: str, n: int) -> str:
    stem, ext = _split_ext(name)
    return _numbered(stem, n, ext)


def _key(path: str) -> int:
    # Paths are NFC already (clean_arcname); folding case as well keeps names distinct where
    # they are extracted onto a case-insensitive file system (macOS, Windows). A 64-bit digest
    # stands for the name, kept on disk past NAMES_IN_MEMORY members.
    return digest(path.casefold())


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class _Namer:
    """Gives every member a distinct cleaned path, deterministically, in the order given.

    Linear in the number of members: a name that clashes remembers the next number to try, so
    the thousandth copy of one name is not checked against `(2)` ... `(999)` again, and a
    folder is placed once, not once per member inside it.
    """

    def __init__(self, reserved: Iterable[str], stack: contextlib.ExitStack) -> None:
        self._files = SpillSet(NAMES_IN_MEMORY)
        stack.callback(self._files.close)
        for name in reserved:
            self._files.add(_key(name))
        self._dirs: dict[int, str] = {}
        self._placed_dirs: dict[int, str] = {}
        """Key of a folder as asked (below its placed parent) -> the path it was placed at."""
        self._next_file: dict[int, int] = {}
        self._next_dir: dict[int, int] = {}
        """Key of a clashing path as asked -> the first clash number not tried yet (files and
        folders apart: `x.d` numbers to `x (2).d` as a file but `x.d (2)` as a folder)."""

    def place(self, arcname: str) -> tuple[list[str], str]:
        """The directories first seen here (to write as entries) and the member's final path."""
        parts = clean_arcname(arcname).split("/")
        new_dirs: list[str] = []
        parent = ""
        for part in parts[:-1]:
            parent = self._enter(parent, part, new_dirs)
        path = _join(parent, parts[-1])
        key = _key(path)
        if key in self._files or key in self._dirs:
            path, key = self._free_number(
                self._next_file, key, lambda n: _join(parent, _numbered_name(parts[-1], n))
            )
        self._files.add(key)
        return new_dirs, path

    def _free_number(
        self, counters: dict[int, int], asked: int, name: Callable[[int], str]
    ) -> tuple[str, int]:
        """The first `name(n)`, n >= 2, that no file or folder holds, from where the last
        search for the same `asked` name stopped (names are never given back, so every number
        below that one is still taken)."""
        n = counters.get(asked, 2)
        while True:
            path = name(n)
            key = _key(path)
            n += 1
            if key not in self._files and key not in self._dirs:
                counters[asked] = n
                return path, key

    def _enter(self, parent: str, part: str, new_dirs: list[str]) -> str:
        path = _join(parent, part)
        asked = _key(path)
        placed = self._placed_dirs.get(asked)
        if placed is not None:
            return placed
        key = asked
        if key in self._files:  # a file holds the name: number the directory instead
            path, key = self._free_number(
                self._next_dir, asked, lambda n: _join(parent, f"{part} ({n})")
            )
        if key not in self._dirs:
            self._dirs[key] = path
            new_dirs.append(path)
        self._placed_dirs[asked] = self._dirs[key]
        return self._dirs[key]


# --- publishing --------------------------------------------------------------------------------


def unique_path(directory: Path, stem: str, suffix: str = TAR_SUFFIX) -> Path:
    """`stem.tar.gz`, or `stem (2).tar.gz`, `stem (3).tar.gz`… : the first name not taken now.

    Only a look; `publish` is what claims a name safely against concurrent writers.
    """
    stem = safe_name(stem, FALLBACK_STEM)
    for n in range(1, MAX_CLASH_NUMBER + 1):
        candidate = directory / _numbered(stem, n, suffix)
        if not os.path.lexists(candidate):
            return candidate
    raise PackError(f"no free name for {stem!r} in {directory} up to ({MAX_CLASH_NUMBER})")


def publish_download(
    settings: Settings, user_id: str, tmp_file: Path, stem: str, suffix: str
) -> Path:
    """`publish` a task's output file into `download/<user-id>/`, made if missing, with the
    modes TASKD_OUTPUT_MODE gives."""
    folder = settings.download / user_id
    atomic.make_dirs(folder, settings.output_folder_mode)
    return publish(tmp_file, folder, stem, suffix=suffix, mode=settings.output_mode)


def publish(
    tmp_file: Path,
    directory: Path,
    stem: str,
    suffix: str = TAR_SUFFIX,
    mode: int = DEFAULT_OUTPUT_MODE,
) -> Path:
    """Move a complete file into `directory` as `unique_path` would name it; never overwrite.

    A hard link claims the name atomically and fails if it exists, so two packs racing for one
    name both succeed under different numbers and a reader never sees a partial file. The file
    gets `mode` (whatever the umask) before it has its name; file and directory are fsynced.
    Across file systems the file is first copied beside the target.
    """
    stem = safe_name(stem, FALLBACK_STEM)
    _seal(tmp_file, mode)
    try:
        target = _link_unique(tmp_file, directory, stem, suffix)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        target = _publish_across(tmp_file, directory, stem, suffix, mode)
    tmp_file.unlink()
    _fsync_path(directory)
    return target


def _link_unique(source: Path, directory: Path, stem: str, suffix: str) -> Path:
    for n in range(1, MAX_CLASH_NUMBER + 1):
        target = directory / _numbered(stem, n, suffix)
        try:
            os.link(source, target)
        except FileExistsError:
            continue  # the name is taken: the next number is the way forward, nothing failed
        return target
    raise PackError(f"no free name for {stem!r} in {directory} up to ({MAX_CLASH_NUMBER})")


def _publish_across(tmp_file: Path, directory: Path, stem: str, suffix: str, mode: int) -> Path:
    # A hidden name in the target folder keeps the final step a same-file-system link; it is
    # created its owner's alone, so no one reads the copy before it has its mode.
    staging = directory / f".{uuid.uuid4().hex}.part"
    try:
        with open(tmp_file, "rb") as src, open(_create_private(staging), "wb") as dst:
            shutil.copyfileobj(src, dst, BLOCK_SIZE)
        _seal(staging, mode)
        return _link_unique(staging, directory, stem, suffix)
    finally:
        staging.unlink(missing_ok=True)


def _create_private(path: Path) -> int:
    """A new file only its owner may read, whatever the umask, open for writing."""
    return os.open(path, atomic.TEMP_FLAGS, BUILD_MODE)


def _seal(path: Path, mode: int) -> None:
    """Give a finished file its published mode and put it on disk, through one no-follow fd."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


_fsync_path = atomic.fsync_path


# --- the tar.gz stream -------------------------------------------------------------------------


class _HashingSink:
    """Passes compressed bytes to the destination, counting and hashing them."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._raw.write(data)
        self.sha.update(data)
        self.size += memoryview(data).nbytes
        return memoryview(data).nbytes

    def flush(self) -> None:
        self._raw.flush()


class _Progress:
    """Calls back with (done, total) at the start, every `PROGRESS_STEP` bytes and at the end."""

    def __init__(self, callback: Callable[[int, int], None] | None, total: int) -> None:
        self._callback = callback
        self.total = total
        self.done = 0
        self._next = PROGRESS_STEP
        self._reported = -1
        self._report()

    def add(self, n: int) -> None:
        self.done += n
        if self.done >= self._next:
            self._next = self.done + PROGRESS_STEP
            self._report()

    def finish(self) -> None:
        self._report()

    def _report(self) -> None:
        if self._callback is not None and self.done != self._reported:
            self._reported = self.done
            self._callback(self.done, self.total)


class _Packer:
    """Writes tar records for one top folder into an (uncompressed-side) binary stream.

    What the trailer files need is written aside as each member goes by (SHA256SUMS lines,
    index.csv rows), so memory does not grow with the number of members beyond their names.
    """

    def __init__(
        self,
        out: IO[bytes],
        top: str,
        mtime: int,
        progress: _Progress,
        stack: contextlib.ExitStack,
        keep: bool,
    ) -> None:
        self._out = out
        self._top = top
        self._mtime = mtime
        self._progress = progress
        self._namer = _Namer([INDEX_NAME, SUMS_NAME], stack)
        self.sums = _Lines(stack)
        self.index = _Lines(stack)
        self.index.add_row(INDEX_COLUMNS)
        self.written: dict[str, tuple[str, int]] | None = {} if keep else None
        self.arcnames: list[str] | None = [] if keep else None
        self.members = 0
        self.bytes_in = 0
        self._header(tarfile.DIRTYPE, top, 0, mtime)

    def add_member(self, member: Member) -> None:
        if member.size < 0:
            raise PackError(f"{member.arcname}: negative size {member.size}")
        new_dirs, path = self._namer.place(member.arcname)
        for directory in new_dirs:
            self._header(tarfile.DIRTYPE, f"{self._top}/{directory}", 0, self._mtime)
        self._header(tarfile.REGTYPE, f"{self._top}/{path}", member.size, _tar_mtime(member.mtime))
        with member.open() as src:
            digest = self._copy(src, member.size, member.arcname, count=True)
        # Two spaces: sha256sum's text-mode separator. Paths hold no newline or backslash
        # (clean_arcname), so no line needs sha256sum's escaping.
        self.sums.add(f"{digest}  {path}\n")
        if member.row is not None:
            values = {**member.row, "sha256": digest, "size": member.size}
            self.index.add_row([_cell(values.get(column)) for column in INDEX_COLUMNS])
        if self.written is not None:
            self.written.setdefault(member.arcname, (digest, member.size))
        if self.arcnames is not None:
            self.arcnames.append(path)
        self.members += 1
        self.bytes_in += member.size

    def add_generated(self, name: str, src: IO[bytes], size: int) -> str:
        self._header(tarfile.REGTYPE, f"{self._top}/{name}", size, self._mtime)
        return self._copy(src, size, name, count=False)

    def finish(self) -> None:
        self._out.write(_TAR_END)

    def _header(self, kind: bytes, name: str, size: int, mtime: int) -> None:
        self._out.write(tar_header(kind, name, size, mtime))

    def _copy(self, src: IO[bytes], size: int, name: str, count: bool) -> str:
        """Copy exactly `size` bytes, hashing once as they pass; pad to the tar block."""
        sha = hashlib.sha256()
        remaining = size
        while remaining:
            block = src.read(min(BLOCK_SIZE, remaining))
            if not block:
                raise MemberSizeError(name, size, f"its source ended after {size - remaining}")
            sha.update(block)
            self._out.write(block)
            remaining -= len(block)
            if count:
                self._progress.add(len(block))
        if src.read(1):
            raise MemberSizeError(name, size, "its source has more (it grew while packing)")
        pad = -size % tarfile.BLOCKSIZE
        if pad:
            self._out.write(b"\0" * pad)
        return sha.hexdigest()


def tar_header(kind: bytes, name: str, size: int, mtime: int) -> bytes:
    """The header of one file or directory entry, as `tarfile` writes it in PAX format.

    An ASCII name of up to 100 bytes with an ordinary size and date needs no PAX record: that
    header is packed here directly, byte for byte what `tarfile` makes, because tarfile's generic
    path costs more than reading and hashing a small mail. Anything else goes through tarfile.
    """
    mode = DIR_MODE if kind == tarfile.DIRTYPE else FILE_MODE
    if kind == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    if name.isascii() and len(name) <= tarfile.LENGTH_NAME and max(size, mtime) < _OCTAL_11:
        header = _USTAR.pack(
            name.encode("ascii"),
            b"%07o\0" % mode,
            _ZERO_ID,
            _ZERO_ID,
            b"%011o\0" % size,
            b"%011o\0" % mtime,
            b" " * 8,  # the checksum is summed with its own field as spaces
            kind,
            b"",
            tarfile.POSIX_MAGIC,
            *_EMPTY_TAIL,
        )
        return b"%s%06o\0 %s" % (header[:148], sum(header), header[156:])
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime, info.mode = kind, size, mtime, mode
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _tar_mtime(mtime: float) -> int:
    # Whole seconds keep the ustar header enough; a float would add a PAX record per member.
    return max(0, int(mtime))


def _cell(value: object) -> str:
    return "" if value is None else str(value).replace("\0", "")


def _index_rows(
    rows: Iterable[Mapping[str, Any]], written: Mapping[str, tuple[str, int]]
) -> Iterator[list[str]]:
    for row in rows:
        values = dict(row)
        link = values.get(INDEX_LINK_KEY)
        if isinstance(link, str) and link in written:
            values["sha256"], values["size"] = written[link]
        yield [_cell(values.get(column)) for column in INDEX_COLUMNS]


class _Lines:
    """UTF-8 text gathered in a temp file that is memory-backed while small."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - stack closes it
        self._spool = stack.enter_context(spool)
        self._csv = io.StringIO()
        self._writer = csv.writer(self._csv)

    def add(self, line: str) -> None:
        self._spool.write(line.encode("utf-8", "replace"))

    def add_row(self, row: Iterable[str]) -> None:
        self._writer.writerow(row)
        self.add(self._csv.getvalue())
        self._csv.seek(0)
        self._csv.truncate()

    def rewound(self) -> tuple[IO[bytes], int]:
        """The text so far, from its start, and its size in bytes."""
        size = self._spool.tell()
        self._spool.seek(0)
        return self._spool, size


@contextlib.contextmanager
def _destination(dest: BinaryIO | Path) -> Iterator[IO[bytes]]:
    if not isinstance(dest, os.PathLike):
        yield dest
        dest.flush()
        return
    try:
        # Its owner's alone while it is built, whatever the umask; `publish` sets its mode.
        fd = os.open(dest, _BUILD_FLAGS, BUILD_MODE)
        with open(fd, "wb") as raw:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.fchmod(fd, BUILD_MODE)
            yield raw
    except BaseException:
        # A half-written archive is no use to anyone; do not leave it for a retry to trip over.
        dest.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _gzip_writer(sink: _HashingSink, level: int, threads: int) -> Iterator[IO[bytes]]:
    # threads=0 compresses in the calling thread; n>0 runs n ISA-L compressors beside it.
    gz = igzip_threaded.open(
        sink, "wb", compresslevel=level, threads=threads, block_size=BLOCK_SIZE
    )
    try:
        yield gz
    except BaseException:
        # The error that stopped the pack is the one to report, not a failing close after it.
        try:
            gz.close()
        except Exception as close_error:  # noqa: BLE001 - logged; the first error is raised
            log.debug("closing the gzip stream after a failed pack: %s", close_error)
        raise
    gz.close()


def build_targz(
    dest: BinaryIO | Path,
    top: str,
    members: Iterable[Member],
    index_rows: Iterable[Mapping[str, Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    total: int | None = None,
    level: int = DEFAULT_LEVEL,
    *,
    threads: int = DEFAULT_THREADS,
    mtime: float | None = None,
    with_index: bool = False,
    keep_names: bool = True,
) -> PackResult:
    """Stream `members` as `<top>/<arcname>` into a gzip'd PAX tar at `dest`.

    After the members come `<top>/index.csv` and `<top>/SHA256SUMS` covering every member and
    index.csv, so `sha256sum -c` checks the unpacked folder. index.csv (`INDEX_COLUMNS`) is
    written when `with_index` (a row from each member's `row`, as it is packed) or when
    `index_rows` is given (a row's `sha256` and `size` filled from the member its `arcname`
    key names). Arcnames are cleaned (`clean_arcname`) and clashes numbered `name (2).ext`.
    Each source is read once, in `BLOCK_SIZE` blocks, hashed as it is copied; a source whose
    length differs from `Member.size` raises `MemberSizeError`. `progress(done, total)` counts
    member bytes; `total` defaults to the sum of declared sizes (give it, and `members` is read
    once, as it comes: a generator of any length packs in flat memory, with `keep_names=False`
    leaving `PackResult.arcnames` empty). `mtime` dates the folders and generated files
    (default now). A `Path` dest is created or truncated, and removed again if the pack fails;
    a stream is left open.
    """
    if not 0 <= level <= 3:
        raise ValueError(f"level must be 0-3 (ISA-L), not {level}")
    if total is None:
        members = list(members)
        total = sum(max(0, m.size) for m in members)
    meter = _Progress(progress, total)
    stamp = _tar_mtime(time.time() if mtime is None else mtime)
    keep = keep_names or index_rows is not None
    with contextlib.ExitStack() as stack, _destination(dest) as raw:
        sink = _HashingSink(raw)
        with _gzip_writer(sink, level, threads) as gz:
            packer = _Packer(gz, safe_name(top, FALLBACK_STEM), stamp, meter, stack, keep)
            for item in members:
                packer.add_member(item)
            _add_trailer_files(packer, index_rows, with_index)
            packer.finish()
    meter.finish()
    arcnames = tuple(packer.arcnames) if keep_names and packer.arcnames is not None else ()
    return PackResult(packer.bytes_in, sink.size, packer.members, sink.sha.hexdigest(), arcnames)


def _add_trailer_files(
    packer: _Packer, index_rows: Iterable[Mapping[str, Any]] | None, with_index: bool
) -> None:
    if index_rows is not None:
        for row in _index_rows(index_rows, packer.written or {}):
            packer.index.add_row(row)
    if index_rows is not None or with_index:
        src, size = packer.index.rewound()
        digest = packer.add_generated(INDEX_NAME, src, size)
        packer.sums.add(f"{digest}  {INDEX_NAME}\n")
    src, size = packer.sums.rewound()
    packer.add_generated(SUMS_NAME, src, size)
