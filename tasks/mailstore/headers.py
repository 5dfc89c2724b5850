"""Find and unfold a message's header block from its raw bytes, without trusting it to be valid.

Values stay bytes: which charset raw 8-bit bytes are in is decided later, by `decode`, once the
whole block (and its Content-Type) is known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO

MAX_HEADER_BYTES = 1 << 20
"""Header blocks are read up to this size; a longer one is cut there (and still summarised)."""

HEADER_READ_CHUNK = 64 * 1024

BOM = b"\xef\xbb\xbf"

# Atomic groups keep a CRLF from being read as two line breaks (CR, then LF) and so as a blank
# line; CR, LF and CRLF are all accepted as line ends, also mixed in one message.
_BLANK_LINE = re.compile(rb"(?>\r\n|\n|\r)(?>\r\n|\n|\r)")
_LINE_BREAK = re.compile(rb"\r\n|\n|\r")
_FIELD_NAME = re.compile(rb"[!-9;-~]+")
_FOLD_WHITESPACE = b" \t"


def body_offset(data: bytes) -> int | None:
    """Offset just past the blank line ending the headers, or None if `data` holds no blank line."""
    start = len(BOM) if data.startswith(BOM) else 0
    first = data[start : start + 2]
    if first[:1] == b"\n":
        return start + 1
    if first[:1] == b"\r":
        return start + (2 if first == b"\r\n" else 1)
    match = _BLANK_LINE.search(data, start)
    return match.end() if match else None


def read_header_block(stream: BinaryIO, limit: int = MAX_HEADER_BYTES) -> bytes:
    """Read from the stream's position up to the end of the header block, at most `limit` bytes."""
    data = b""
    while len(data) < limit:
        chunk = stream.read(min(HEADER_READ_CHUNK, limit - len(data)))
        if not chunk:
            break
        # A blank line split over two chunks must still be found: look back a few bytes.
        look_from = max(0, len(data) - 3)
        data += chunk
        end = body_offset(data) if look_from == 0 else _search_from(data, look_from)
        if end is not None:
            return data[:end]
    return data


def _search_from(data: bytes, start: int) -> int | None:
    match = _BLANK_LINE.search(data, start)
    return match.end() if match else None


@dataclass(frozen=True)
class Headers:
    """Unfolded header fields in order: (lower-case name, raw value bytes)."""

    fields: tuple[tuple[str, bytes], ...]

    def get(self, name: str) -> bytes | None:
        """The first field of that name (senders do repeat Date or Subject; the first wins)."""
        name = name.lower()
        for field_name, value in self.fields:
            if field_name == name:
                return value
        return None

    def get_all(self, name: str) -> list[bytes]:
        name = name.lower()
        return [value for field_name, value in self.fields if field_name == name]


def parse_headers(block: bytes) -> Headers:
    """Split a header block into unfolded fields.

    Lines that are not fields (an mbox `From ` envelope line, an SMTP transcript's `HELO`) are
    skipped with their continuation lines rather than ending the block, so the real fields after
    them are still found.
    """
    if block.startswith(BOM):
        block = block[len(BOM) :]
    fields: list[tuple[str, list[bytes]]] = []
    attach = False
    for line in _LINE_BREAK.split(block):
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if attach:
                fields[-1][1].append(line.strip(_FOLD_WHITESPACE))
            continue
        name, colon, value = line.partition(b":")
        name = name.rstrip(_FOLD_WHITESPACE)
        attach = bool(colon) and _FIELD_NAME.fullmatch(name) is not None
        if attach:
            fields.append((name.decode("ascii").lower(), [value.strip(_FOLD_WHITESPACE)]))
    return Headers(
        tuple((name, b" ".join(part for part in parts if part)) for name, parts in fields)
    )
