"""The header cache's files: one a month of a folder, a section per day and kind, replaced whole.

A file is `FORMAT`, the byte length of its table of contents, the table (for each section the
byte length of its name, its offset in the file and its length, then the name), then the
sections.  Every file is written to a temp file beside it and renamed into place, so a reader
sees the old file or the new one, never a mix; temp files of killed writers are swept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VERSION = 3
FORMAT = b"taskd-mail-index 3\n"
"""Written first in every file; a file starting otherwise is read as an empty cache."""
READ_SIZE = 1 << 18
"""What is read of a month file when it is opened (all of most of them): 256 KiB."""
STALE_TEMP_S = 600
"""A temp file this old beside a cache file is a killed writer's, not one being written."""

_UTF8, _ANY = "utf-8", "surrogatepass"


_TOC_SIZE = struct.Struct("<I")
_TOC_ENTRY = struct.Struct("<HQQ")


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
        write_whole(self.path, _month_bytes(sections))
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


def write_whole(path: str, data: bytes) -> None:
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
