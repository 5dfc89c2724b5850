"""A mail stored in a file (a whole `.eml`, or a slice of an mbox) and its summary.

The summary needs only the header block, so that is all it reads; the body is read and parsed
only when a criterion asks about it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from email.message import Message as EmailMessage
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from tasks.mailstore import mime
from tasks.mailstore.base import MailSummary
from tasks.mailstore.decode import (
    charsets_in,
    content_charset,
    decode_address_header,
    decode_header,
    parse_date,
)
from tasks.mailstore.headers import MAX_HEADER_BYTES, Headers, parse_headers, read_header_block

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

    def __init__(self, path: Path, offset: int, length: int) -> None:
        super().__init__()
        self._file = path.open("rb", buffering=0)
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


def open_slice(path: Path, offset: int, length: int, buffer: int = READ_BUFFER) -> BinaryIO:
    """Buffered reader over `length` bytes of `path` from `offset`."""
    return io.BufferedReader(_Slice(path, offset, length), buffer_size=buffer)


def open_whole(path: Path, buffer: int = READ_BUFFER) -> BinaryIO:
    return path.open("rb", buffering=buffer)


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


def build_summary(base: MailSummary, headers: Headers, hints: Sequence[str] = ()) -> MailSummary:
    """`base` (id, place, size, stored labels) completed from the mail's headers."""
    header_labels = [
        label
        for name in LABEL_HEADERS
        for value in headers.get_all(name)
        for label in split_labels(decode_header(value, hints))
    ]
    return MailSummary(
        id=base.id,
        user=base.user,
        folder=base.folder,
        day=base.day,
        date=parse_date(headers.get("date")),
        from_=decode_address_header(headers.get("from"), hints),
        to=_joined(headers, ("to", "cc"), hints),
        subject=decode_header(headers.get("subject"), hints),
        size=base.size,
        labels=merge_labels(base.labels, header_labels),
        message_id=decode_header(headers.get("message-id")),
    )


def _needs_hints(headers: Headers) -> bool:
    for _, value in headers.fields:
        if not value.isascii():
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return True
    return False


class StoredMessage:
    """A `Message` of the reference store: the whole file, or `base.size` bytes from `offset`."""

    def __init__(self, base: MailSummary, path: Path, offset: int | None = None) -> None:
        self._base = base
        self.path = path
        self.offset = offset
        self._tree: EmailMessage | None = None
        self._parsed = False

    @property
    def raw_size(self) -> int:
        return self._base.size

    def open(self, buffer: int = READ_BUFFER) -> BinaryIO:
        if self.offset is None:
            return open_whole(self.path, buffer)
        return open_slice(self.path, self.offset, self._base.size, buffer)

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

    @cached_property
    def summary(self) -> MailSummary:
        headers, hints = self._header_view
        return build_summary(self._base, headers, hints)

    def header_text(self, field: str) -> str:
        """One decoded field of the summary (`subject`, `from`, `to`), without the rest: a
        search on one header decodes only that header of the mails it does not return."""
        if "summary" in self.__dict__:
            return str(self.summary.to_json()[field])
        headers, hints = self._header_view
        if field == "subject":
            return decode_header(headers.get("subject"), hints)
        if field == "from":
            return decode_address_header(headers.get("from"), hints)
        return _joined(headers, ("to", "cc"), hints)

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

    def body_text(self) -> str:
        return mime.body_text(self._mime())

    def has_attachment(self) -> bool:
        return mime.has_attachment(self._mime())
