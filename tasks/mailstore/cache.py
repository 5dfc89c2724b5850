"""The header cache: what searches read from each mail's headers, kept per partition.

Decoding a mail's headers costs a hundred times more than checking that the mail is unchanged,
and archived mail does not change.  So the store keeps, for every mail it has read, the decoded
fields a summary and a header search need (and whether it has an attachment, once a search has
looked), keyed by the mail's file name or mbox position and trusted only while the file's size
and inode change time are what they were.  A later search of the same partition stats each
file instead of reading it, and looks for its needle in the partition's folded texts at once.

Files: `<directory>/<archive hash>-<version>/<user>/<folder>/<YYYYMM>.idx`, each holding a
section per partition and kind (`<YYYYMMDD>.eml`, `<YYYYMMDD>.mbox`): one open for a month of
days, which is what a search of a sparse archive spends most on otherwise.  What a section
holds is `entry.py`'s and `section.py`'s; the files are `monthfile.py`'s.

The cache is only ever a copy: a missing, stale, corrupt or foreign file or section is read as
empty and rebuilt, every file is replaced whole by rename, and two processes filling the same
month at once both write correct files (the last rename wins, the other's work is done again
later).  It belongs on a local disk, one per host; deleting it costs one slow search per
partition.
"""

from __future__ import annotations

import hashlib
import logging
import os
from array import array
from collections.abc import Iterable, Mapping
from pathlib import Path

from tasks.mailstore.entry import RawFilter, Row, Stamp, is_entry
from tasks.mailstore.monthfile import VERSION, MonthFile
from tasks.mailstore.section import Columns

log = logging.getLogger(__name__)


_warned: set[bool] = set()
"""Non-empty once a process has warned that it cannot write the cache."""


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
            self._extra = data
            self._dirty = True

    def names_if(self, extra: bytes) -> tuple[tuple[str, ...], int] | None:
        """The keys as loaded and their `listing_digest`, if they were saved with `extra` and
        each could name a file in a folder (a foreign cache must not lead a search out of it)."""
        if self._columns is None or not extra or self._extra != extra:
            return None
        if not self._columns.keys_are_file_names():
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
            if self._dirty and self._columns is not None and self._month is not None:
                # Only the extra bytes changed: the section as loaded, with the new ones.
                self._write(self._columns.with_extra(self._extra))
            return
        if complete and self._mapping.keys() - self._seen:
            self._mapping = {k: self._mapping[k] for k in self._seen if k in self._mapping}
            self._dirty = True
        if self._dirty and self._month is not None:
            self._write(Columns.build(self._mapping, self._extra).data)

    def _write(self, section: bytes) -> None:
        assert self._month is not None
        try:
            self._month.replace(self._name, section)
            self._dirty = False
        except OSError as error:
            _cannot_write(self._month.path, error)


def _cannot_write(path: str, error: OSError) -> None:
    # A cache that cannot be written only makes the next search slower: say so once.
    level = logging.DEBUG if _warned else logging.WARNING
    log.log(level, "cannot write the mail index file %s: %s", path, error)
    _warned.add(True)


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


def no_cache() -> PartitionCache:
    """A cache that keeps nothing, for a store without an index directory."""
    return PartitionCache(None, "")
