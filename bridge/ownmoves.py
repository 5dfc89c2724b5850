"""The bridge's own renames in task_queue/, announced before they are made, so the watcher drops
their events with one dictionary lookup instead of handing them on to be recognised later.

`bridge/files.py` announces each rename (`expect`) just before making it and takes the
announcement back if the rename fails; the watcher's thread consumes one announcement per
matching event (`consume`). An announcement whose event never comes (an inotify overflow, a
rename outside a watched folder) is dropped at the next overflow, and the whole table is
dropped should it ever reach `LIMIT`: the events are then handled the slow way (the file's
signature compared with what the bridge wrote), never lost.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

FROM = b"<"
TO = b">"
LIMIT = 65536


class OwnMoves:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expected: dict[bytes, int] = {}

    def expect(self, src: Path | None, dst: Path) -> list[bytes]:
        """The keys of a rename about to be made (`src` None: only its landing matters)."""
        keys = [TO + os.fsencode(dst)]
        if src is not None:
            keys.append(FROM + os.fsencode(src))
        return self.expect_keys(*keys)

    def expect_keys(self, *keys: bytes) -> list[bytes]:
        """`expect`, given the keys (`TO` or `FROM` and the encoded path) already made."""
        with self._lock:
            if len(self._expected) >= LIMIT:
                self._expected.clear()
            expected = self._expected
            for key in keys:
                expected[key] = expected.get(key, 0) + 1
        return list(keys)

    def cancel(self, keys: list[bytes]) -> None:
        """The rename was not made: its events will not come."""
        with self._lock:
            for key in keys:
                self._take(key)

    def consume(self, key: bytes) -> bool:
        """Whether an event is the bridge's own (and then it is counted off)."""
        if key not in self._expected:  # the common case of a foreign event, without the lock
            return False
        with self._lock:
            return self._take(key)

    def clear(self) -> None:
        with self._lock:
            self._expected.clear()

    def __len__(self) -> int:
        return len(self._expected)

    def _take(self, key: bytes) -> bool:
        left = self._expected.get(key, 0)
        if left <= 0:
            return False
        if left == 1:
            del self._expected[key]
        else:
            self._expected[key] = left - 1
        return True


OWN = OwnMoves()
