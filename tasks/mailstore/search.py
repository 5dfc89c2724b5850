"""Run a criterion over a store: stream the matching mails' summaries and report progress."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from functools import partial

from tasks.mailstore.base import MailStore, MailStoreUnavailable, MailSummary, Message, Partition
from tasks.mailstore.criteria import Criterion, matches, select_partitions
from tasks.mailstore.entry import RawFilter

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (bytes scanned, bytes to scan)."""

PROGRESS_EVERY = 4 << 20
"""Within a big partition, progress is also reported after about this many bytes."""


def search(
    store: MailStore, criterion: Criterion, progress: Progress, owner: str | None = None
) -> Iterator[MailSummary]:
    """Summaries of the mails matching `criterion`, partition by partition in store order.

    The partitions are chosen at once, so a criterion naming an unknown group fails here; the
    mails are read as the results are consumed.  `progress(done, total)` is called after each
    partition and every `PROGRESS_EVERY` bytes within one, and once with `(0, 0)` when there is
    nothing to scan.  `owner` is whose archive to search when the criterion names neither user
    nor group.
    """
    partitions = select_partitions(store, criterion, owner)
    return _results(store, criterion, partitions, progress)


def _results(
    store: MailStore, criterion: Criterion, partitions: Sequence[Partition], progress: Progress
) -> Iterator[MailSummary]:
    total = sum(partition.size for partition in partitions)
    if not partitions:
        progress(0, 0)
    done = 0
    keep = criterion.raw_filter()
    try:
        for partition in partitions:
            report = partial(_report, progress, done, total)
            yield from _scan(store, criterion, keep, partition, report)
            done += partition.size
            progress(min(done, total), total)
    finally:
        flush = getattr(store, "flush", None)  # a store that keeps a cache writes it now
        if flush is not None:
            flush()


def _report(progress: Progress, before: int, total: int, scanned: int) -> None:
    progress(min(before + scanned, total), total)


def _scan(
    store: MailStore,
    criterion: Criterion,
    keep: RawFilter | None,
    partition: Partition,
    report: Callable[[int], None],
) -> Iterator[MailSummary]:
    scanned = reported = 0
    where = getattr(store, "messages_where", None)
    messages = where(partition, keep) if where is not None else store.messages(partition)
    for message in messages:
        if _matches(criterion, message, partition):
            yield message.summary
        # A partition can change while it is read; never report beyond its listed size.
        scanned = min(scanned + message.raw_size, partition.size)
        if scanned - reported >= PROGRESS_EVERY:
            report(scanned)
            reported = scanned


def _matches(criterion: Criterion, message: Message, partition: Partition) -> bool:
    try:
        # The summary is built here, for the matches only, inside the same guard.
        return matches(criterion, message) and message.summary is not None
    except FileNotFoundError:
        # Removed since the partition was listed (expired, moved): no longer in the archive.
        log.info(
            "skipping a mail of %s/%s/%s: gone", partition.user, partition.folder, partition.day
        )
        return False
    except OSError as error:
        raise MailStoreUnavailable(f"cannot read the archive: {error}") from error
