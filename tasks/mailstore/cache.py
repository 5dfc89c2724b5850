"""A cache of what searches read from each mail's headers, one small file per partition.

Decoding a mail's headers costs a hundred times more than checking that the mail is unchanged,
and archived mail does not change.  So the store keeps, for every mail it has read, the decoded
fields a summary and a header search need (and whether it has an attachment, once a search has
looked), keyed by the mail's file name or mbox position and trusted only while the file's size
and modification time are what they were.  A later search of the same partition stats each
file instead of reading it, and compares needles against text folded once.

The cache is only ever a copy: a missing, stale, corrupt or foreign file is read as empty and
rebuilt, every file is replaced whole by rename, and two processes filling the same partition at
once both write a correct file (the last rename wins).  It belongs on a local disk, one per
host; deleting it costs one slow search per partition.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

FORMAT = ("taskd-mail-index", 1)
STALE_TEMP_S = 600
"""A temp file this old beside a cache file is a killed writer's, not one being written."""
"""Written first in every file; anything else is read as an empty cache."""


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

ENTRY_WIDTH = len(Entry._fields)

RawFilter = Callable[[tuple[Any, ...]], bool]
"""A test on an entry's stored tuple (see `FOLDED_POSITION`)."""

Stamp = tuple[int, int]
"""(size, mtime_ns) of the file an entry was read from."""


_warned: set[bool] = set()
"""Non-empty once a process has warned that it cannot write the cache."""


class _Loader(pickle.Unpickler):
    """Plain data only: a cache file can never name a class to build."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a cache file")


def _check(data: object) -> dict[str, tuple[Stamp, tuple[Any, ...]]]:
    if not (isinstance(data, tuple) and len(data) == 2 and data[0] == FORMAT):
        raise ValueError("not a cache file of this version")
    entries = data[1]
    if not isinstance(entries, dict):
        raise ValueError("entries are not a mapping")
    return entries


class PartitionCache:
    """The entries of one partition's `.eml` files or of its mbox file, loaded and saved whole."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._entries: dict[str, tuple[Stamp, tuple[Any, ...]]] = {}
        self._seen: set[str] = set()
        self._dirty = False
        if path is not None:
            self._load(path)

    def _load(self, path: str) -> None:
        try:
            self._entries = _check(_Loader(io.BytesIO(_read(path))).load())
        except FileNotFoundError:
            pass
        except Exception as error:  # noqa: BLE001 - any unreadable cache is simply rebuilt
            log.info("rebuilding the mail index file %s: %s", path, error)
            self._dirty = True

    def get_raw(self, key: str, stamp: Stamp) -> tuple[Any, ...] | None:
        """What was stored under `key` for a file with this stamp."""
        self._seen.add(key)
        found = self._entries.get(key)
        if found is None or found[0] != stamp:
            return None
        return found[1]

    def fields_table(self, keys: Iterable[str]) -> Mapping[str, tuple[Stamp, tuple[Any, ...]]]:
        """Every entry as (stamp, stored tuple), for a caller that checks stamps itself (and
        whose fields are `ENTRY_WIDTH` long); `keys` are all the partition's mails, seen."""
        self._seen.update(keys)
        return self._entries

    def get_fields(self, key: str, stamp: Stamp) -> tuple[Any, ...] | None:
        """`get_raw`, for a tuple shaped like an `Entry` only."""
        found = self.get_raw(key, stamp)
        return found if found is not None and len(found) == len(Entry._fields) else None

    def put(self, key: str, stamp: Stamp, value: tuple[Any, ...]) -> None:
        self._seen.add(key)
        self._entries[key] = (stamp, tuple(value))
        self._dirty = True

    def save(self, complete: bool) -> None:
        """Write what changed; `complete`: every key of the partition was looked at, so the
        entries of mails no longer there can go."""
        if complete and self._entries.keys() - self._seen:
            self._entries = {key: self._entries[key] for key in self._seen if key in self._entries}
            self._dirty = True
        if not self._dirty or self.path is None:
            return
        try:
            _write(self.path, pickle.dumps((FORMAT, self._entries), protocol=5))
            self._dirty = False
        except OSError as error:
            # A cache that cannot be written only makes the next search slower: say so once.
            level = logging.DEBUG if _warned else logging.WARNING
            log.log(level, "cannot write the mail index file %s: %s", self.path, error)
            _warned.add(True)


def _read(path: str) -> bytes:
    # os-level calls: a search opens one of these per partition, and `open()` costs more.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        # Asking for the size (and one byte more, to see the end) allocates no more than that.
        while chunk := os.read(fd, os.fstat(fd).st_size + 1):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


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
    """Where the partition caches of one archive live: `<directory>/<archive hash>/…`."""

    def __init__(self, directory: Path | str, archive_root: Path | str) -> None:
        root = os.path.realpath(archive_root).encode("utf-8", "surrogateescape")
        digest = hashlib.sha1(root, usedforsecurity=False).hexdigest()[:16]
        self.directory = os.path.join(directory, digest)

    def partition(self, user: str, folder: str, day: str, kind: str) -> PartitionCache:
        """The cache of a partition's `kind` ("eml" or "mbox"); names are checked by the store."""
        return PartitionCache(f"{self.directory}/{user}/{folder}/{day}.{kind}")


def as_entry(raw: tuple[Any, ...] | None) -> Entry | None:
    """A stored tuple as an `Entry`; None for nothing, or for a tuple of another shape."""
    if raw is None or len(raw) != len(Entry._fields):
        return None
    return Entry._make(raw)


def no_cache() -> PartitionCache:
    """A cache that keeps nothing, for a store without an index directory."""
    return PartitionCache(None)


def stamp_of(status: os.stat_result) -> Stamp:
    return (status.st_size, status.st_mtime_ns)
