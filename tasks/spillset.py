"""A set of 64-bit keys that moves to a temporary SQLite file once it grows past a limit.

For what must be remembered about every item of an input of any size (the names already in a
pack, the mail ids already given): a Python set while small, then a table on disk, so memory
stays flat.  Keys are digests (`digest`), so two different texts share a key with odds of one
in 2**64; callers use it only where such a clash costs nothing but a renamed item.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import weakref
from collections.abc import Callable, Collection, Iterable

digest: Callable[[str], int] = hash
"""A 64-bit key for a text, for this process's sets: Python's own string hash, the cheapest
there is (and a built-in, so `map(digest, texts)` runs in C); randomised per process, which no
caller depends on."""


class SpillSet:
    """A set of ints: in memory up to `in_memory` of them, then in a temporary SQLite file."""

    def __init__(self, in_memory: int) -> None:
        self._limit = in_memory
        self._memory: set[int] | None = set()
        self._db: sqlite3.Connection | None = None

    def __contains__(self, key: int) -> bool:
        if self._memory is not None:
            return key in self._memory
        assert self._db is not None
        return self._db.execute("SELECT 1 FROM keys WHERE key = ?", (key,)).fetchone() is not None

    def isdisjoint(self, keys: Iterable[int]) -> bool:
        """Whether none of `keys` is in the set."""
        if self._memory is not None:
            return self._memory.isdisjoint(keys)
        return not any(key in self for key in keys)

    def update(self, keys: Collection[int]) -> None:
        if self._memory is not None and len(self._memory) + len(keys) < self._limit:
            self._memory.update(keys)
            return
        for key in keys:
            self.add(key)

    def add(self, key: int) -> None:
        if self._memory is None:
            assert self._db is not None
            self._db.execute("INSERT OR IGNORE INTO keys VALUES (?)", (key,))
            return
        self._memory.add(key)
        if len(self._memory) >= self._limit:
            self._db = _scratch_table(self._memory)
            self._memory = None
            weakref.finalize(self, self._db.close)

    def close(self) -> None:
        """Let go of the file now rather than when the set is collected."""
        if self._db is not None:
            self._db.close()
        self._memory = set()
        self._db = None


def _scratch_table(keys: set[int]) -> sqlite3.Connection:
    fd, path = tempfile.mkstemp(prefix="taskd-keys-", suffix=".db")
    os.close(fd)
    try:
        db = sqlite3.connect(path, isolation_level=None)
    finally:
        os.unlink(path)  # SQLite keeps the open file; nothing is left behind whatever happens
    # Scratch data: nothing to recover after a crash, so no journal and no syncs.
    db.execute("PRAGMA journal_mode = OFF")
    db.execute("PRAGMA synchronous = OFF")
    db.execute("CREATE TABLE keys (key INTEGER PRIMARY KEY)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO keys VALUES (?)", ((key,) for key in keys))
    return db
