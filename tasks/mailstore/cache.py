"""A cache of what searches read from each mail's headers, one file a month of each folder.

Decoding a mail's headers costs a hundred times more than checking that the mail is unchanged,
and archived mail does not change.  So the store keeps, for every mail it has read, the decoded
fields a summary and a header search need (and whether it has an attachment, once a search has
looked), keyed by the mail's file name or mbox position and trusted only while the file's size
and modification time are what they were.  A later search of the same partition stats each
file instead of reading it, and looks for its needle in the partition's folded texts at once.

Files: `<directory>/<archive hash>-<version>/<user>/<folder>/<YYYYMM>.idx`, each holding a
section per partition and kind (`<YYYYMMDD>.eml`, `<YYYYMMDD>.mbox`): one open for a month of
days, which is what a search of a sparse archive spends most on otherwise.

The cache is only ever a copy: a missing, stale, corrupt or foreign file or section is read as
empty and rebuilt, every file is replaced whole by rename, and two processes filling the same
month at once both write correct files (the last rename wins, the other's work is done again
later).  It belongs on a local disk, one per host; deleting it costs one slow search per
partition.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import logging
import os
import pickle
import struct
import tempfile
import time
import weakref
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

VERSION = 3
FORMAT = b"taskd-mail-index 3\n"
"""Written first in every file; a file starting otherwise is read as an empty cache."""
READ_SIZE = 1 << 18
"""What is read of a month file when it is opened (all of most of them): 256 KiB."""
STALE_TEMP_S = 600
"""A temp file this old beside a cache file is a killed writer's, not one being written."""


class Entry(NamedTuple):
    """One mail's header fields as a search needs them (`*_f`: folded for comparison)."""

    date: str
    from_: str
    to: str
    subject: str
    message_id: str
    labels: tuple[str, ...]
    """From the mail's own X-Label / X-Keywords headers (labels.json is read per search)."""
    subject_f: str
    from_f: str
    to_f: str
    has_attachment: bool | None
    """None until a search has parsed the mail's body."""


FOLDED_POSITION = {
    "subject": Entry._fields.index("subject_f"),
    "from": Entry._fields.index("from_f"),
    "to": Entry._fields.index("to_f"),
}
"""Where a header's folded text sits in an entry's stored tuple, for filters on raw tuples."""
_COLUMNS = _SUBJECT, _FROM, _TO = tuple(FOLDED_POSITION.values())
"""The folded fields a cache file also keeps as one text each, for a partition-wide find."""

ENTRY_WIDTH = len(Entry._fields)

Stamp = tuple[int, int]
"""(size, ctime_ns) of the file an entry was read from: its inode change time moves with
every write, rename, restore or `touch`, and no tool can set it back."""

Row = tuple[Any, ...]
"""What a cache keeps for one key: an `Entry` as a tuple, or another value of the store's."""


class RawFilter(NamedTuple):
    """A search's test on cached header fields: every (position, folded needle) must hold."""

    tests: tuple[tuple[int, str], ...]
    test: Callable[[Row], bool]
    """The same test as one call on an entry's stored tuple, for a loop over mails."""


def raw_filter(tests: tuple[tuple[int, str], ...]) -> RawFilter | None:
    """The filter for these (position, folded needle) tests; None when there are none."""
    if not tests:
        return None
    if len(tests) == 1:
        ((position, needle),) = tests
        return RawFilter(tests, lambda raw: needle in raw[position])
    return RawFilter(tests, lambda raw: all(needle in raw[p] for p, needle in tests))


def listing_digest(names: Sequence[str]) -> int:
    """A digest of a partition's file names, in order, to compare two listings of one process
    (Python's own hash: the cheapest there is; two different listings share it with odds of
    one in 2**64)."""
    return hash(_join(names))


_warned: set[bool] = set()
"""Non-empty once a process has warned that it cannot write the cache."""


class _Loader(pickle.Unpickler):
    """Plain data only: a cache file can never name a class to build."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a cache file")


def _unpickle(data: bytes) -> Any:
    return _Loader(io.BytesIO(data)).load()


_UTF8, _ANY = "utf-8", "surrogatepass"
"""How text is stored: UTF-8, lone surrogates (from undecodable names) included."""

_HEADER = struct.Struct("<7Q")
"""A section starts with the number of keys, then the byte lengths of its parts: the keys,
the three folded texts, the pickled rows and the store's extra bytes.  The stamps, 16 bytes a
key, sit between the keys and the texts."""


_SPAN = struct.Struct("<2q")


def _join(names: Sequence[str]) -> bytes:
    return "\0".join(names).encode(_UTF8, _ANY)


class Columns:
    """A partition's section as written: the keys in order, each one's stamp, the folded
    fields of `_COLUMNS` as one UTF-8 text each (a line a key), the rows, unpickled only when
    asked for, and bytes the store keeps with them (`extra`).

    A search that finds every key of a partition here with its stamp unchanged looks for its
    needle in the one text, as bytes, and reads the rows of the lines it is found on only:
    nothing is decoded for a partition without a match."""

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        """The section in `data[start:end]` (read in place); ValueError or struct.error if it
        is not one."""
        end = len(data) if end is None else end
        count, keys, subject, from_, to, rows, extra = _HEADER.unpack_from(data, start)
        self.data = data
        self.count = count
        self._keys_at = start + _HEADER.size
        self._stamps_at = self._keys_at + keys
        subject_at = self._stamps_at + 16 * count
        from_at = subject_at + subject
        to_at = from_at + from_
        self._texts = {
            _SUBJECT: (subject_at, from_at),
            _FROM: (from_at, to_at),
            _TO: (to_at, to_at + to),
        }
        self._rows_at = to_at + to
        self._extra_at = self._rows_at + rows
        self._end = end
        if self._extra_at + extra != end or end > len(data):
            raise ValueError("the parts do not add up to the section")
        self._keys: tuple[str, ...] | None = None
        self._rows: dict[int, Row] = {}
        """The rows unpickled so far, by position."""

    @classmethod
    def build(cls, entries: Mapping[str, tuple[Stamp, Row]], extra: bytes = b"") -> Columns:
        keys = sorted(entries)
        stamps = array("q")
        rows = []
        for key in keys:
            stamp, row = entries[key]
            stamps.extend(stamp)
            rows.append(row)
        texts = [
            "\n".join(_line(row, position) for row in rows).encode(_UTF8, _ANY)
            for position in _COLUMNS
        ]
        keys_data = _join(keys)
        pickled = [pickle.dumps(row, protocol=5) for row in rows]
        starts = array("q", itertools.accumulate(map(len, pickled), initial=0))
        parts = [*texts, starts.tobytes() + b"".join(pickled), extra]
        head = _HEADER.pack(len(keys), len(keys_data), *map(len, parts))
        columns = cls(b"".join([head, keys_data, stamps.tobytes(), *parts]))
        columns._keys, columns._rows = tuple(keys), dict(enumerate(rows))
        return columns

    @property
    def keys(self) -> tuple[str, ...]:
        if self._keys is None:
            names = self.data[self._keys_at : self._stamps_at]
            keys = names.decode(_UTF8, _ANY).split("\0") if self.count else []
            if len(keys) != self.count:
                raise ValueError("the keys do not agree with their count")
            self._keys = tuple(keys)
        return self._keys

    @property
    def stamps(self) -> bytes:
        """(size, ctime_ns) of each key, flat, as the bytes of an `array("q")`."""
        return self.data[self._stamps_at : self._stamps_at + 16 * self.count]

    @property
    def extra(self) -> bytes:
        return self.data[self._extra_at : self._end]

    @property
    def digest(self) -> int:
        """The `listing_digest` of the keys."""
        return hash(self.data[self._keys_at : self._stamps_at])

    def row(self, position: int) -> Row:
        """The row of the key at `position`; ValueError or pickle's errors if it is unreadable.

        The rows part is where each row's pickle starts (and where the last ends), 8 bytes
        each, then the pickles: a search unpickles the rows of its matches only."""
        row = self._rows.get(position)
        if row is None:
            if not 0 <= position < self.count:
                raise ValueError(f"no row {position} in a section of {self.count}")
            start, end = _SPAN.unpack_from(self.data, self._rows_at + 8 * position)
            base = self._rows_at + 8 * (self.count + 1)
            if not base + start <= base + end <= self._extra_at:
                raise ValueError("a row is outside its part")
            row = _unpickle(self.data[base + start : base + end])
            if not isinstance(row, tuple):
                raise ValueError("a row is not a tuple")
            self._rows[position] = row
        return row

    def rows(self) -> list[Row]:
        return [self.row(position) for position in range(self.count)]

    def as_dict(self) -> dict[str, tuple[Stamp, Row]]:
        stamps = array("q", self.stamps)
        return {
            key: ((stamps[2 * n], stamps[2 * n + 1]), row)
            for n, (key, row) in enumerate(zip(self.keys, self.rows(), strict=True))
        }

    def matching(self, keep: RawFilter | None) -> list[tuple[int, Row]]:
        """(position, row) of every key whose row `keep` lets through (all when None);
        ValueError or pickle's errors if the rows cannot be read.

        With a filter, its first needle is looked for in that field's text first (as UTF-8,
        whose characters never start inside another's): only the lines it is found on are
        tested, so a rare needle costs one `bytes.find` a partition."""
        if keep is None:
            return [(line, row) for line, row in enumerate(self.rows()) if is_entry(row)]
        position, needle = keep.tests[0]
        start, end = self._texts[position]
        test = keep.test
        found = []
        for line in _lines_with(self.data, start, end, needle.encode(_UTF8, _ANY)):
            row = self.row(line)
            if is_entry(row) and test(row):
                found.append((line, row))
        return found


def is_entry(row: Row) -> bool:
    """Whether a stored tuple is an `Entry`'s (and not another value a store keeps)."""
    return len(row) == ENTRY_WIDTH and type(row[0]) is str


def _line(row: Row, position: int) -> str:
    value = row[position] if is_entry(row) else ""
    return value.replace("\n", " ") if isinstance(value, str) else ""


def _lines_with(data: bytes, start: int, end: int, needle: bytes) -> Iterator[int]:
    """The numbers of the lines of `data[start:end]` that hold `needle` (which holds no line
    break), found without copying the text out."""
    line = 0
    counted = start  # `line` is the number of the line `counted` is on
    at = data.find(needle, start, end)
    while at >= 0:
        line += data.count(b"\n", counted, at)
        yield line
        stop = data.find(b"\n", at, end)
        if stop < 0:
            return
        line += 1
        counted = stop + 1
        at = data.find(needle, counted, end)


_TOC_SIZE = struct.Struct("<I")
_TOC_ENTRY = struct.Struct("<HQQ")
"""A month file is `FORMAT`, the byte length of its table of contents, the table (for each
section the byte length of its name, its offset in the file and its length, then the name),
then the sections."""


class MonthFile:
    """The cache file of one month of a folder: a section of bytes per partition and kind.

    Its first `READ_SIZE` bytes are read when it is opened, which is all of it for most months;
    a section beyond them is read when asked for.  Changed sections are kept until they pass
    `READ_SIZE` or `flush()` is called, then written with the others as a new file (by rename),
    which is opened again.  So memory stays within twice that and one section however big a
    month is, and a search that changes every day of a month writes its file once or a few
    times, not once a day."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._head = b""
        self._toc: dict[str, tuple[int, int]] = {}
        self._fd = -1
        self._closer: weakref.finalize[Any, Any] | None = None
        self._pending: dict[str, bytes] = {}
        self._pending_size = 0
        self._open()

    def _open(self) -> None:
        self._close()
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as error:
            log.info("cannot read the mail index file %s: %s", self.path, error)
            return
        self._closer = weakref.finalize(self, os.close, self._fd)
        try:
            self._head = os.read(self._fd, READ_SIZE)
            self._toc = _table_of_contents(self._fd, self._head)
        except Exception as error:  # noqa: BLE001 - any unreadable cache is simply rebuilt
            log.info("rebuilding the mail index file %s: %s", self.path, error)
            self._toc = {}

    def _close(self) -> None:
        if self._closer is not None:
            self._closer()
        self._fd, self._head, self._toc = -1, b"", {}

    def section(self, name: str) -> tuple[bytes, int, int] | None:
        """(data, start, end) of the named section, which is `data[start:end]`; None if there
        is none or it cannot be read."""
        pending = self._pending.get(name)
        if pending is not None:
            return pending, 0, len(pending)
        where = self._toc.get(name)
        if where is None:
            return None
        offset, length = where
        if offset + length <= len(self._head):
            return self._head, offset, offset + length
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as error:
            log.info("cannot read the mail index file %s: %s", self.path, error)
            return None
        return (data, 0, length) if len(data) == length else None

    def names(self) -> list[str]:
        return list(dict.fromkeys([*self._toc, *self._pending]))

    def replace(self, name: str, data: bytes) -> None:
        """Set one section, written with the other changes (see the class); OSError if they
        had to be written and could not be."""
        self._pending[name] = data
        self._pending_size += len(data)
        if self._pending_size > READ_SIZE:
            self.flush()

    def flush(self) -> None:
        """Write the file anew if a section changed; OSError if it cannot be (the changes are
        then dropped: the next search makes them again)."""
        if not self._pending:
            return
        pending, self._pending, self._pending_size = self._pending, {}, 0
        sections = {}
        for other in self._toc:
            found = None if other in pending else self.section(other)
            if found is not None:
                sections[other] = found[0][found[1] : found[2]]
        sections.update(pending)
        _write(self.path, _month_bytes(sections))
        self._open()


def _table_of_contents(fd: int, head: bytes) -> dict[str, tuple[int, int]]:
    if not head.startswith(FORMAT):
        raise ValueError("not a cache file of this version")
    (size,) = _TOC_SIZE.unpack_from(head, len(FORMAT))
    at = len(FORMAT) + _TOC_SIZE.size
    table = head[at : at + size]
    if len(table) < size:  # a table bigger than the first read
        table = os.pread(fd, size, at)
        if len(table) < size:
            raise ValueError("the table of contents is cut short")
    toc = {}
    at = 0
    while at < size:
        name_length, offset, length = _TOC_ENTRY.unpack_from(table, at)
        at += _TOC_ENTRY.size
        toc[table[at : at + name_length].decode(_UTF8, _ANY)] = (offset, length)
        at += name_length
    return toc


def _month_bytes(sections: Mapping[str, bytes]) -> bytes:
    names = [name.encode(_UTF8, _ANY) for name in sections]
    size = sum(_TOC_ENTRY.size + len(name) for name in names)
    offset = len(FORMAT) + _TOC_SIZE.size + size
    table = []
    for name, data in zip(names, sections.values(), strict=True):
        table += [_TOC_ENTRY.pack(len(name), offset, len(data)), name]
        offset += len(data)
    return b"".join([FORMAT, _TOC_SIZE.pack(size), *table, *sections.values()])


class PartitionCache:
    """The entries of one partition's `.eml` files or of its mbox file: a section of a month
    file, loaded and saved whole.

    Entries are kept as loaded (`Columns`) until something asks for them by key or changes
    them; then as a mapping of key to (stamp, row), written back as a section."""

    def __init__(self, month: MonthFile | None, name: str) -> None:
        self._month = month
        self._name = name
        self._columns: Columns | None = None
        self._mapping: dict[str, tuple[Stamp, Row]] | None = None
        self._extra = b""
        self._seen: set[str] = set()
        self._dirty = False
        section = None if month is None else month.section(name)
        if section is not None:
            try:
                self._columns = Columns(*section)
                self._extra = self._columns.extra
            except Exception as error:  # noqa: BLE001 - any unreadable cache is simply rebuilt
                self._broken(error)

    @property
    def keeps(self) -> bool:
        """Whether what is put here is kept (False for `no_cache()`)."""
        return self._month is not None

    def _broken(self, error: Exception) -> None:
        where = "" if self._month is None else self._month.path
        log.info("rebuilding %s of the mail index file %s: %s", self._name, where, error)
        self._columns, self._mapping, self._extra, self._dirty = None, {}, b"", True

    @property
    def _entries(self) -> dict[str, tuple[Stamp, Row]]:
        if self._mapping is None:
            try:
                self._mapping = {} if self._columns is None else self._columns.as_dict()
            except Exception as error:  # noqa: BLE001 - rows that cannot be read: rebuilt
                self._broken(error)
            self._columns = None
        assert self._mapping is not None
        return self._mapping

    def listing_matches(
        self, digest: int, stamps: bytes, keep: RawFilter | None
    ) -> tuple[tuple[str, ...], list[tuple[int, Row]]] | None:
        """When the entries are exactly those of the files whose names have this
        `listing_digest` and these stamps (flat, as the bytes of an `array("q")`): their keys
        and `Columns.matching(keep)`.  None otherwise, or if the section cannot be read (then
        it is rebuilt)."""
        columns = self._columns
        if columns is None or columns.stamps != stamps or columns.digest != digest:
            return None
        return self._matches(columns, keep)

    def file_matches(
        self, stamp: Stamp, count: int, keep: RawFilter | None
    ) -> tuple[tuple[str, ...], list[tuple[int, Row]]] | None:
        """For the cache of one file (an mbox), when it holds `count` entries all read from
        the file with this stamp: their keys and `Columns.matching(keep)`."""
        columns = self._columns
        if columns is None or columns.count != count:
            return None
        if columns.stamps != array("q", stamp * count).tobytes():
            return None
        return self._matches(columns, keep)

    def _matches(
        self, columns: Columns, keep: RawFilter | None
    ) -> tuple[tuple[str, ...], list[tuple[int, Row]]] | None:
        try:
            keys, found = columns.keys, columns.matching(keep)
        except Exception as error:  # noqa: BLE001 - any unreadable cache is simply rebuilt
            self._broken(error)
            return None
        self._seen.update(keys)
        return keys, found

    @property
    def extra(self) -> bytes:
        """What the store keeps with the partition (b"" until it sets some)."""
        return self._extra

    def set_extra(self, data: bytes) -> None:
        if data != self._extra:
            self._entries  # noqa: B018 - from now on the entries are saved as a mapping
            self._extra = data
            self._dirty = True

    def keys_if(self, extra: bytes) -> tuple[tuple[str, ...], int] | None:
        """The keys as loaded and their `listing_digest`, if they were saved with `extra`."""
        if self._columns is None or not extra or self._extra != extra:
            return None
        try:
            return self._columns.keys, self._columns.digest
        except Exception as error:  # noqa: BLE001 - any unreadable cache is simply rebuilt
            self._broken(error)
            return None

    def holds_all(self, keys: Iterable[str]) -> bool:
        """Whether there is an entry for every one of these keys."""
        return self._entries.keys() >= set(keys)

    def get_raw(self, key: str, stamp: Stamp) -> Row | None:
        """What was stored under `key` for a file with this stamp."""
        self._seen.add(key)
        found = self._entries.get(key)
        if found is None or found[0] != stamp:
            return None
        return found[1]

    def fields_table(self, keys: Iterable[str]) -> Mapping[str, tuple[Stamp, Row]]:
        """Every entry as (stamp, stored tuple), for a caller that checks stamps itself (and
        whose fields are `ENTRY_WIDTH` long); `keys` are all the partition's mails, seen."""
        self._seen.update(keys)
        return self._entries

    def get_fields(self, key: str, stamp: Stamp) -> Row | None:
        """`get_raw`, for a tuple shaped like an `Entry` only."""
        found = self.get_raw(key, stamp)
        return found if found is not None and is_entry(found) else None

    def put(self, key: str, stamp: Stamp, value: Row) -> None:
        self._seen.add(key)
        self._entries[key] = (stamp, tuple(value))
        self._dirty = True

    def save(self, complete: bool) -> None:
        """Write what changed; `complete`: every key of the partition was looked at, so the
        entries of mails no longer there can go."""
        if self._mapping is None:
            return  # nothing was changed or even asked for by key
        if complete and self._mapping.keys() - self._seen:
            self._mapping = {k: self._mapping[k] for k in self._seen if k in self._mapping}
            self._dirty = True
        if not self._dirty or self._month is None:
            return
        try:
            self._month.replace(self._name, Columns.build(self._mapping, self._extra).data)
            self._dirty = False
        except OSError as error:
            _cannot_write(self._month.path, error)


def _cannot_write(path: str, error: OSError) -> None:
    # A cache that cannot be written only makes the next search slower: say so once.
    level = logging.DEBUG if _warned else logging.WARNING
    log.log(level, "cannot write the mail index file %s: %s", path, error)
    _warned.add(True)


def _write(path: str, data: bytes) -> None:
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _sweep(folder, f".{name}.", time.time() - STALE_TEMP_S)


def _sweep(folder: str, prefix: str, before: float) -> None:
    """Remove temp files of this cache file that a killed writer left behind."""
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.stat().st_mtime < before:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


class MailIndex:
    """Where the caches of one archive live: `<directory>/<archive hash>-<version>/…`.

    It keeps the month file it opened last (a search reads days in order), and writes its
    changes when it opens another or is flushed."""

    def __init__(self, directory: Path | str, archive_root: Path | str) -> None:
        root = os.path.realpath(archive_root).encode("utf-8", "surrogateescape")
        digest = hashlib.sha1(root, usedforsecurity=False).hexdigest()[:16]
        self.directory = os.path.join(directory, f"{digest}-{VERSION}")
        self._month: MonthFile | None = None

    def partition(self, user: str, folder: str, day: str, kind: str) -> PartitionCache:
        """The cache of a partition's `kind` ("eml" or "mbox"); names are checked by the store."""
        path = f"{self.directory}/{user}/{folder}/{day[:6]}.idx"
        month = self._month
        if month is None or month.path != path:
            self.flush()
            self._month = None  # let the last one go before reading the next
            month = self._month = MonthFile(path)
        return PartitionCache(month, f"{day}.{kind}")

    def flush(self) -> None:
        """Write what changed in the month file opened last."""
        if self._month is not None:
            try:
                self._month.flush()
            except OSError as error:
                _cannot_write(self._month.path, error)


def as_entry(raw: tuple[Any, ...] | None) -> Entry | None:
    """A stored tuple as an `Entry`; None for nothing, or for a tuple of another shape."""
    if raw is None or len(raw) != len(Entry._fields):
        return None
    return Entry._make(raw)


def no_cache() -> PartitionCache:
    """A cache that keeps nothing, for a store without an index directory."""
    return PartitionCache(None, "")


def stamp_of(status: os.stat_result) -> Stamp:
    return (status.st_size, status.st_ctime_ns)
