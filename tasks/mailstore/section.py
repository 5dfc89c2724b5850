"""One partition's entries as the header cache writes them: a section of bytes, searched in place.

A section holds the keys (file names, or mbox numbers) in order, each one's stamp, the folded
fields of `COLUMNS` as one UTF-8 text each (a line a key), each row pickled on its own, and bytes
the store keeps with them.  A search compares stamps as bytes, finds its needle with one
`bytes.find` over a day's subjects, and unpickles the rows of its matches only.
"""

from __future__ import annotations

import io
import itertools
import pickle
import struct
from array import array
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tasks.mailstore.entry import COLUMNS, FROM, SUBJECT, TO, RawFilter, Row, Stamp, is_entry


def listing_digest(names: Sequence[str]) -> int:
    """A digest of a partition's file names, in order, to compare two listings of one process
    (Python's own hash: the cheapest there is; two different listings share it with odds of
    one in 2**64)."""
    return hash(_join(names))


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
    fields of `COLUMNS` as one UTF-8 text each (a line a key), the rows, unpickled only when
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
            SUBJECT: (subject_at, from_at),
            FROM: (from_at, to_at),
            TO: (to_at, to_at + to),
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
            for position in COLUMNS
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

    def keys_are_file_names(self) -> bool:
        """Whether every key could name a file in a folder: none holds a "/" or starts with a
        "." (so none is "." or ".." either); checked on the stored bytes, without decoding."""
        keys = self.data[self._keys_at : self._stamps_at]
        return b"/" not in keys and not keys.startswith(b".") and b"\0." not in keys

    @property
    def stamps(self) -> bytes:
        """(size, ctime_ns) of each key, flat, as the bytes of an `array("q")`."""
        return self.data[self._stamps_at : self._stamps_at + 16 * self.count]

    @property
    def extra(self) -> bytes:
        return self.data[self._extra_at : self._end]

    def with_extra(self, extra: bytes) -> bytes:
        """The section's bytes, with `extra` as its extra bytes."""
        *head, _ = _HEADER.unpack_from(self.data, self._keys_at - _HEADER.size)
        return _HEADER.pack(*head, len(extra)) + self.data[self._keys_at : self._extra_at] + extra

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
