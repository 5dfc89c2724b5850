"""The text parts of a big mail, read as a stream: memory follows its largest text part.

`email` builds the whole tree of a message in memory, attachments included, at several times
their size.  For a mail past `STREAM_FROM` bytes this walks the MIME structure line by line
instead: boundaries are found as `email`'s feed parser finds them (`--boundary`, optional
`--`, trailing blanks), each part's own headers go through `email` (so Content-Type,
Content-Disposition and their parameters mean what they mean for a small mail), the body of a
text part to read is kept and decoded exactly as `mime` decodes it, and every other body is read
past without being kept.  `message/rfc822` parts are walked into, as `email` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message as EmailMessage
from email.parser import BytesParser
from email.policy import compat32
from typing import BinaryIO

from tasks.mailstore.headers import BOM, MAX_HEADER_BYTES
from tasks.mailstore.mime import is_attachment, part_text

STREAM_FROM = 1 << 20
"""Mails up to this size are parsed whole (the plain `email` path); bigger ones are streamed."""

LINE_LIMIT = 64 * 1024
"""Longest piece read at once; a longer line comes in pieces (never a boundary)."""

_HEADERS, _BODY, _SKIP, _STATUS = range(4)

_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")
"""What `email`'s feed parser takes for a header line (`email.feedparser.headerRE`)."""


@dataclass
class _Walk:
    """Where the walk is: the open boundaries, what is being read, what was found."""

    want_text: bool
    boundaries: list[bytes] = field(default_factory=list)
    digests: list[bool] = field(default_factory=list)
    """Per open boundary: whether it is a multipart/digest, whose parts are messages."""
    mode: int = _HEADERS
    header: bytearray = field(default_factory=bytearray)
    part: EmailMessage | None = None
    body: bytearray | None = None
    attachment: bool = False
    texts: list[str] = field(default_factory=list)

    def line(self, line: bytes, at_start: bool) -> None:
        if self.mode == _HEADERS:
            self._header_line(line, at_start)
        elif at_start and self.boundaries and line.startswith(b"--") and self._boundary(line):
            return
        elif self.mode == _STATUS:
            self._status_line(line, at_start)
        elif self.body is not None:
            self.body += line

    def _status_line(self, line: bytes, at_start: bool) -> None:
        """message/delivery-status: blocks of fields, each ended by a blank line; as in
        `email`, a block's lines from the first that is not a field on are a text part."""
        if at_start and line in (b"\n", b"\r\n"):
            self.end(at_boundary=False)
        elif self.body is not None:
            self.body += line
        elif self.want_text and at_start and not _HEADER_LINE.match(line):
            self.part, self.body = EmailMessage(), bytearray(line)

    def _header_line(self, line: bytes, at_start: bool) -> None:
        if at_start and line not in (b"\n", b"\r\n") and not _HEADER_LINE.match(line):
            # Not a header line: the headers ended without a blank line, and this is body,
            # as `email` reads it.
            self._start(bytes(self.header))
            self.header = bytearray()
            if self.mode == _HEADERS:  # an enclosed message without headers of its own
                self.part, self.mode = None, _SKIP
                self._start(b"")
            if self.mode != _HEADERS:
                self.line(line, at_start)
            return
        self.header += line
        blank = at_start and line in (b"\n", b"\r\n")
        if blank or len(self.header) >= MAX_HEADER_BYTES:
            self._start(bytes(self.header))
            self.header = bytearray()

    def _start(self, header: bytes) -> None:
        """A part's headers are complete: decide what to do with its body."""
        part = BytesParser(policy=compat32).parsebytes(header)
        if self.digests and self.digests[-1] and self.mode == _HEADERS and header:
            part.set_default_type("message/rfc822")
        self.part, self.body, self.mode = part, None, _BODY
        maintype = part.get_content_maintype()
        if maintype == "multipart":
            boundary = part.get_boundary()
            if boundary is not None:
                self.boundaries.append(b"--" + boundary.encode("ascii", "surrogateescape"))
                self.digests.append(part.get_content_subtype() == "digest")
                self.mode = _SKIP  # the preamble
            return
        if part.get_content_type() == "message/delivery-status":
            self.part, self.mode = None, _STATUS
            return
        if maintype == "message":
            self.mode = _HEADERS  # `email` reads what follows as an enclosed message
            return
        attachment = is_attachment(part)
        self.attachment = self.attachment or attachment
        if self.want_text and maintype == "text" and not attachment:
            self.body = bytearray()

    def _boundary(self, line: bytes) -> bool:
        """Whether the line is a delimiter of an open multipart (and act on it)."""
        marker = line.rstrip(b"\r\n").rstrip(b" \t")
        for level in range(len(self.boundaries) - 1, -1, -1):
            boundary = self.boundaries[level]
            if marker == boundary:
                self.end()
                del self.boundaries[level + 1 :], self.digests[level + 1 :]
                self.mode = _HEADERS
                return True
            if marker == boundary + b"--":
                self.end()
                del self.boundaries[level:], self.digests[level:]
                self.mode = _SKIP  # the epilogue
                return True
        return False

    def end(self, at_boundary: bool = True) -> None:
        """The current part's body is complete (at a delimiter, or at the end of the mail)."""
        if self.body is not None and self.part is not None:
            body = bytes(self.body)
            # The line break before a delimiter belongs to the delimiter, as in `email`.
            if at_boundary and body.endswith(b"\r\n"):
                body = body[:-2]
            elif at_boundary and body.endswith((b"\n", b"\r")):
                body = body[:-1]
            self.part.set_payload(body.decode("ascii", "surrogateescape"))
            text = part_text(self.part)
            if text:
                self.texts.append(text)
        self.body = None
        self.part = None


def _lines(stream: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    """(piece, whether it starts a line): lines, long ones in pieces of `LINE_LIMIT`."""
    at_start = True
    first = True
    while line := stream.readline(LINE_LIMIT):
        if first and line.startswith(BOM):
            line = line[len(BOM) :]
        first = False
        yield line, at_start
        at_start = line.endswith(b"\n")


def walk(stream: BinaryIO, want_text: bool = True) -> tuple[list[str], bool] | None:
    """(texts of the readable text parts, whether any part is an attachment) of the message
    read from `stream`; None for a mail whose lines end in CR alone, which only the whole
    parse reads right."""
    state = _Walk(want_text)
    for line, at_start in _lines(stream):
        if state.mode == _HEADERS and b"\r" in line.rstrip(b"\r\n"):
            return None
        state.line(line, at_start)
    if state.mode == _HEADERS and state.header:
        state._start(bytes(state.header))
    state.end(at_boundary=bool(state.boundaries))
    return state.texts, state.attachment
