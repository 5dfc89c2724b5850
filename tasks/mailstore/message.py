"""A mail stored in a file (a whole `.eml`, or a slice of an mbox) and its summary.

The summary needs only the header block, so that is all it reads; the body is read and parsed
only when a criterion asks about it.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Sequence
from email.message import Message as EmailMessage
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, NamedTuple

from tasks.mailstore import mime, stream
from tasks.mailstore.base import MailSummary
from tasks.mailstore.criteria import fold
from tasks.mailstore.decode import (
    charsets_in,
    content_charset,
    decode_address_header,
    decode_header,
    parse_date,
)
from tasks.mailstore.entry import Entry
from tasks.mailstore.headers import MAX_HEADER_BYTES, Headers, parse_headers, read_header_block

log = logging.getLogger(__name__)

READ_BUFFER = 1 << 20
"""Buffer for reading message bytes: mail is read in large sequential reads."""

HEADER_BUFFER = 16 * 1024
"""Buffer for reading just the header block: most mails' headers fit, and a megabyte buffer
per file would cost more to allocate than the read itself."""

CHARSET_HINT_BYTES = 64 * 1024
"""How far past the headers to look for a part's charset when raw 8-bit headers need one."""

LABEL_HEADERS = ("x-label", "x-keywords")
_LABEL_SEPARATORS = re.compile(r"[,\s]+")


class _Slice(io.RawIOBase):
    """A read-only window on part of a file, so an mbox message reads like a file of its own."""

    def __init__(self, path: str | Path, offset: int, length: int) -> None:
        super().__init__()
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self._offset = offset
        self._length = length
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        wanted = min(len(buffer), self._length - self._position)
        if wanted <= 0:
            return 0
        self._file.seek(self._offset + self._position)
        count = self._file.readinto(memoryview(buffer)[:wanted]) or 0
        self._position += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}
        if whence not in bases:
            raise ValueError(f"invalid whence ({whence})")
        self._position = max(0, bases[whence] + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        self._file.close()
        super().close()


def open_slice(path: str | Path, offset: int, length: int, buffer: int = READ_BUFFER) -> BinaryIO:
    """Buffered reader over `length` bytes of `path` from `offset`."""
    return io.BufferedReader(_Slice(path, offset, length), buffer_size=buffer)


def open_whole(path: str | Path, buffer: int = READ_BUFFER) -> BinaryIO:
    return open(path, "rb", buffering=buffer)  # noqa: SIM115 - the caller closes it


def split_labels(value: str) -> list[str]:
    """Labels of an X-Label / X-Keywords value: separated by commas or spaces."""
    return [label for label in _LABEL_SEPARATORS.split(value) if label]


def merge_labels(*groups: Sequence[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for group in groups:
        for label in group:
            seen.setdefault(label, None)
    return tuple(seen)


def _joined(headers: Headers, names: Sequence[str], hints: Sequence[str]) -> str:
    values = [
        decode_address_header(value, hints) for name in names for value in headers.get_all(name)
    ]
    return ", ".join(value for value in values if value)


def read_entry(headers: Headers, hints: Sequence[str] = ()) -> Entry:
    """Every header field a summary or a header search needs, decoded once."""
    header_labels = tuple(
        label
        for name in LABEL_HEADERS
        for value in headers.get_all(name)
        for label in split_labels(decode_header(value, hints))
    )
    from_ = decode_address_header(headers.get("from"), hints)
    to = _joined(headers, ("to", "cc"), hints)
    subject = decode_header(headers.get("subject"), hints)
    return Entry(
        date=parse_date(headers.get("date")),
        from_=from_,
        to=to,
        subject=subject,
        message_id=decode_header(headers.get("message-id")),
        labels=header_labels,
        subject_f=fold(subject),
        from_f=fold(from_),
        to_f=fold(to),
        has_attachment=None,
    )


class Place(NamedTuple):
    """What the store knows of a mail without reading it; cheaper to make than a summary."""

    id: str
    user: str
    folder: str
    day: str
    size: int
    labels: tuple[str, ...]


def summary_of(base: MailSummary | Place, entry: Entry) -> MailSummary:
    """`base` (id, place, size, stored labels) completed from the mail's header fields."""
    return MailSummary(
        id=base.id,
        user=base.user,
        folder=base.folder,
        day=base.day,
        date=entry.date,
        from_=entry.from_,
        to=entry.to,
        subject=entry.subject,
        size=base.size,
        labels=merge_labels(base.labels, entry.labels),
        message_id=entry.message_id,
    )


_FOLDED = {"subject": "subject_f", "from": "from_f", "to": "to_f"}
_PLAIN = {"subject": "subject", "from": "from_", "to": "to", "date": "date"}


def _needs_hints(headers: Headers) -> bool:
    for _, value in headers.fields:
        if not value.isascii():
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return True
    return False


class StoredMessage:
    """A `Message` of the reference store: the whole file, or `base.size` bytes from `offset`.

    `entry` is its header fields when a cache knew them; `keep` is called with them (and again
    when `has_attachment` learns more) when they are read, so the cache can store them.
    """

    def __init__(
        self,
        base: MailSummary | Place,
        path: str | Path,
        offset: int | None = None,
        *,
        entry: Entry | None = None,
        keep: Callable[[Entry], None] | None = None,
    ) -> None:
        self._base = base
        self._path = path
        self.offset = offset
        self._entry = entry
        self._keep = keep
        self._tree: EmailMessage | None = None
        self._parsed = False

    @property
    def raw_size(self) -> int:
        return self._base.size

    @property
    def path(self) -> Path:
        """The file the mail is in (the whole file, or the mbox holding it)."""
        return Path(self._path)

    def open(self, buffer: int = READ_BUFFER) -> BinaryIO:
        if self.offset is None:
            return open_whole(self._path, buffer)
        return open_slice(self._path, self.offset, self._base.size, buffer)

    def read_raw(self) -> bytes:
        with self.open() as stream:
            return stream.read()

    @cached_property
    def _header_view(self) -> tuple[Headers, list[str]]:
        with self.open(HEADER_BUFFER) as stream:
            block = read_header_block(stream, min(self._base.size, MAX_HEADER_BYTES))
            headers = parse_headers(block)
            hints = self._charset_hints(headers, stream, len(block))
        return headers, hints

    @property
    def entry(self) -> Entry:
        """The header fields, read (and handed to `keep`) on first use."""
        if self._entry is None:
            self._entry = read_entry(*self._header_view)
            if self._keep is not None:
                self._keep(self._entry)
        return self._entry

    @cached_property
    def summary(self) -> MailSummary:
        return summary_of(self._base, self.entry)

    def header_text(self, field: str) -> str:
        """One decoded field (`subject`, `from`, `to`, `date`).  Without a cache to fill, only
        that header is decoded: a search on one header decodes nothing else of the mails it
        does not return."""
        if self._entry is not None or self._keep is not None or field == "date":
            return str(getattr(self.entry, _PLAIN[field]))
        headers, hints = self._header_view
        if field == "subject":
            return decode_header(headers.get("subject"), hints)
        if field == "from":
            return decode_address_header(headers.get("from"), hints)
        return _joined(headers, ("to", "cc"), hints)

    def folded_header(self, field: str) -> str:
        """`header_text(field)` as criteria compare it (see `criteria.fold`)."""
        if self._entry is not None or self._keep is not None:
            return str(getattr(self.entry, _FOLDED[field]))
        return fold(self.header_text(field))

    @staticmethod
    def _charset_hints(headers: Headers, stream: BinaryIO, body_start: int) -> list[str]:
        declared = content_charset(headers.get("content-type"))
        hints = [declared] if declared else []
        if not declared and _needs_hints(headers):
            # Raw 8-bit headers and no charset on the message itself: a part may name one.
            # The header read may have gone past the block, so look again from the body's start.
            stream.seek(body_start)
            hints += charsets_in(stream.read(CHARSET_HINT_BYTES))
        return hints

    def _mime(self) -> EmailMessage | None:
        if not self._parsed:
            self._tree = mime.parse(self.read_raw())
            self._parsed = True
        return self._tree

    def _streamed(self, want_text: bool) -> tuple[list[str], bool] | None:
        """A big mail's texts and attachment flag without holding it whole (see `stream`)."""
        if self.raw_size <= stream.STREAM_FROM:
            return None
        try:
            with self.open() as source:
                return stream.walk(source, want_text)
        except OSError:
            raise
        except Exception:  # a structure the walk cannot follow: parse it whole, as a small one
            log.debug("cannot stream %s; parsing it whole", self._path, exc_info=True)
            return None

    def body_text(self) -> str:
        streamed = self._streamed(want_text=True)
        if streamed is not None:
            return "\n".join(streamed[0])
        return mime.body_text(self._mime())

    def has_attachment(self) -> bool:
        known = self._entry.has_attachment if self._entry is not None else None
        if known is not None:
            return known
        streamed = self._streamed(want_text=False)
        found = streamed[1] if streamed is not None else mime.has_attachment(self._mime())
        if self._keep is not None:
            self._entry = self.entry._replace(has_attachment=found)
            self._keep(self._entry)
        return found
