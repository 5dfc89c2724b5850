"""The header cache's files: one a month of a folder, a section per day and kind, replaced whole.

A file is `FORMAT`, the byte length of its table of contents, the table (for each section the
byte length of its name, its offset in the file, its length and its CRC-32, then the name),
then the sections.  A section whose bytes do not match its CRC, or that lies outside the file,
is read as missing and rebuilt.  Every file is written to a temp file beside it and renamed
into place, so a reader sees the old file or the new one, never a mix; temp files of killed
writers are swept.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import struct
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from isal.isal_zlib import crc32  # ISA-L's: several times zlib's speed

log = logging.getLogger(__name__)

VERSION = 4
FORMAT = b"taskd-mail-index 4\n"
"""Written first in every file; a file starting otherwise is read as an empty cache."""
READ_SIZE = 1 << 18
"""What is read of a month file when it is opened (all of most of them): 256 KiB."""
STALE_TEMP_S = 600
"""A temp file this old beside a cache file is a killed writer's, not one being written."""

_UTF8, _ANY = "utf-8", "surrogatepass"
COPY_CHUNK = 1 << 20
"""A section kept as it was is copied into a new file in reads of at most this many bytes."""

_TOC_SIZE = struct.Struct("<I")
_TOC_ENTRY = struct.Struct("<HQQI")


_Where = tuple[int, int, int]
"""Where a section is: its offset and length in the file, and the CRC-32 of its bytes (so
damage that keeps its shape is caught too); a plain tuple, made for every section opened."""


class MonthFile:
    """The cache file of one month of a folder: a section of bytes per partition and kind.

    Its first `READ_SIZE` bytes are read when it is opened, which is all of it for most months;
    a section beyond them is read when asked for.  Changed sections are kept until they pass
    `READ_SIZE` or `flush()` is called, then written with the others as a new file (by rename),
    which is opened again; the others are copied from the old file a chunk at a time.  So
    memory stays within twice that and one section however big a month is, and a search that
    changes every day of a month writes its file once or a few times, not once a day."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._head = b""
        self._toc: dict[str, _Where] = {}
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
        is none, or it cannot be read or is damaged (it is then rebuilt)."""
        pending = self._pending.get(name)
        if pending is not None:
            return pending, 0, len(pending)
        where = self._toc.get(name)
        if where is None:
            return None
        offset, length, crc = where
        if offset + length <= len(self._head):
            data, start = self._head, offset
        else:
            try:
                data, start = os.pread(self._fd, length, offset), 0
            except OSError as error:
                log.info("cannot read the mail index file %s: %s", self.path, error)
                return None
        if len(data) < start + length or crc32(memoryview(data)[start : start + length]) != crc:
            log.info("rebuilding %s of the mail index file %s: damaged", name, self.path)
            return None
        return data, start, start + length

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
        kept = {name: where for name, where in self._toc.items() if name not in pending}
        sizes = {name: length for name, (_, length, _) in kept.items()}
        crcs = {name: crc for name, (_, _, crc) in kept.items()}
        for name, data in pending.items():
            sizes[name], crcs[name] = len(data), crc32(data)
        head = _month_head(sizes, crcs)
        write_whole(self.path, itertools.chain([head], self._bodies(kept, pending)))
        self._open()

    def _bodies(self, kept: Mapping[str, _Where], pending: Mapping[str, bytes]) -> Iterator[bytes]:
        """The sections' bytes in the order `_month_head` lists them (kept first)."""
        for offset, length, _ in kept.values():
            done = 0
            while done < length:
                chunk = os.pread(self._fd, min(COPY_CHUNK, length - done), offset + done)
                if not chunk:
                    raise OSError(f"{self.path} is shorter than its table of contents says")
                done += len(chunk)
                yield chunk
        yield from pending.values()


def _table_of_contents(fd: int, head: bytes) -> dict[str, _Where]:
    if not head.startswith(FORMAT):
        raise ValueError("not a cache file of this version")
    (size,) = _TOC_SIZE.unpack_from(head, len(FORMAT))
    at = len(FORMAT) + _TOC_SIZE.size
    table = head[at : at + size]
    if len(table) < size:  # a table bigger than the first read
        table = os.pread(fd, size, at)
        if len(table) < size:
            raise ValueError("the table of contents is cut short")
    file_size = os.fstat(fd).st_size
    toc = {}
    first = at + size
    at = 0
    while at < size:
        name_length, offset, length, crc = _TOC_ENTRY.unpack_from(table, at)
        at += _TOC_ENTRY.size
        if not first <= offset <= offset + length <= file_size:
            raise ValueError("a section lies outside the file")
        toc[table[at : at + name_length].decode(_UTF8, _ANY)] = (offset, length, crc)
        at += name_length
    return toc


def _month_head(sizes: Mapping[str, int], crcs: Mapping[str, int]) -> bytes:
    """`FORMAT` and the table of contents of sections of these sizes, in this order."""
    names = [name.encode(_UTF8, _ANY) for name in sizes]
    size = sum(_TOC_ENTRY.size + len(name) for name in names)
    offset = len(FORMAT) + _TOC_SIZE.size + size
    table = [FORMAT, _TOC_SIZE.pack(size)]
    for encoded, (name, length) in zip(names, sizes.items(), strict=True):
        table += [_TOC_ENTRY.pack(len(encoded), offset, length, crcs[name]), encoded]
        offset += length
    return b"".join(table)


def write_whole(path: str, chunks: Iterable[bytes]) -> None:
    """Write a file whole: to a temp file beside it, then renamed into place."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as stream:
            for chunk in chunks:
                stream.write(chunk)
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
