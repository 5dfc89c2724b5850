"""What the header cache keeps of a mail, and how a search tests it without reading the mail."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple


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
COLUMNS = SUBJECT, FROM, TO = tuple(FOLDED_POSITION.values())
"""The folded fields a cache file also keeps as one text each, for a partition-wide find."""

ENTRY_WIDTH = len(Entry._fields)
_TEXT_FIELDS = tuple(range(5)) + COLUMNS

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


def is_entry(row: Row) -> bool:
    """Whether a stored tuple is an `Entry`'s (and not another value a store keeps): the
    right length, with text where a search compares or shows it."""
    return len(row) == ENTRY_WIDTH and all(type(row[n]) is str for n in _TEXT_FIELDS)


def as_entry(raw: tuple[Any, ...] | None) -> Entry | None:
    """A stored tuple as an `Entry`; None for nothing, or for a tuple of another shape."""
    if raw is None or len(raw) != len(Entry._fields):
        return None
    return Entry._make(raw)


def stamp_of(status: os.stat_result) -> Stamp:
    return (status.st_size, status.st_ctime_ns)
