"""Split an mbox file into messages by offset, streaming, so each can later be read by seek.

A message runs from its `From ` separator line up to the next separator: the slices tile the
file (all but a leading UTF-8 BOM), so nothing stored is lost or changed; `>From` lines stay as
they are.  Telling a separator from a body line that happens to start with `From `:

- the file's first line, if it starts with `From `, always is one;
- after a blank line, a `From ` line is one if it looks like an envelope: Netscape's `From -`,
  or a sender followed by nothing but a date with a time (so `From Russia with love` is not);
- elsewhere only Netscape's `From -` is, and only if a header field follows it;
- a `Content-Length:` in a message's headers is honoured when it is honest: when the byte it
  points at is the end of the file or starts a (blank line and a) `From ` line.  Everything up to
  there is body, whatever it looks like.

Text before the first separator, if not blank, is kept as a message of its own.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from tasks.mailstore.headers import BOM

LINE_LIMIT = 64 * 1024
"""Longer lines are read in pieces; only a piece that starts a line can be a separator."""

_SENDER_AND_DATE = re.compile(rb"From \S+[ \t]+(?P<date>.*)")
_TIME = re.compile(rb"\b\d{1,2}:\d{2}\b")
_HEADER_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")
_CONTENT_LENGTH = re.compile(rb"content-length[ \t]*:[ \t]*(\d+)[ \t\r\n]*$", re.IGNORECASE)
_PEEK = 8


def _is_netscape(line: bytes) -> bool:
    rest = line[5:].rstrip(b"\r\n")
    return rest == b"-" or rest.startswith((b"- ", b"-\t"))


def _is_envelope(line: bytes) -> bool:
    if _is_netscape(line):
        return True
    match = _SENDER_AND_DATE.match(line.rstrip(b"\r\n"))
    if match is None:
        sender = line[5:].strip()
        return (
            bool(sender) and b" " not in sender and (b"@" in sender or sender == b"MAILER-DAEMON")
        )
    date = match.group("date").strip()
    return not date or _TIME.search(date) is not None


def _is_blank(line: bytes) -> bool:
    return not line.rstrip(b"\r\n")


@dataclass
class _Scan:
    """Where the splitter stands: the current message and what the previous line was."""

    start: int | None = None
    in_headers: bool = True
    content_length: int | None = None
    previous_blank: bool = True
    seen_text: bool = False
    pending: int | None = None
    forced: int | None = None


class _Splitter:
    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.scan = _Scan()
        self.position = 0
        self.size = 0

    def run(self) -> Iterator[tuple[int, int]]:
        self.size = self.stream.seek(0, io.SEEK_END)
        self.stream.seek(0)
        first = self.stream.read(len(BOM))
        self.position = len(BOM) if first == BOM else 0
        self.stream.seek(self.position)
        lead = self.position
        at_line_start = True
        while True:
            line = self.stream.readline(LINE_LIMIT)
            if not line:
                break
            offset = self.position
            self.position += len(line)
            if at_line_start:
                yield from self._line(offset, line, lead)
            at_line_start = line.endswith(b"\n")
        yield from self._finish(lead)

    def _line(self, offset: int, line: bytes, lead: int) -> Iterator[tuple[int, int]]:
        scan = self.scan
        if scan.pending is not None:
            pending, scan.pending = scan.pending, None
            if _HEADER_LINE.match(line):
                yield from self._separator(pending, lead)
        if line.startswith(b"From ") and self._is_separator(offset, line):
            yield from self._separator(offset, lead)
        elif line.startswith(b"From ") and _is_netscape(line):
            scan.pending = offset
        else:
            self._content(offset, line)
        scan.previous_blank = _is_blank(line)

    def _is_separator(self, offset: int, line: bytes) -> bool:
        scan = self.scan
        if offset == scan.forced or (scan.start is None and not scan.seen_text):
            return True
        return scan.previous_blank and _is_envelope(line)

    def _separator(self, offset: int, lead: int) -> Iterator[tuple[int, int]]:
        scan = self.scan
        if scan.start is not None:
            yield scan.start, offset - scan.start
        elif scan.seen_text:
            yield lead, offset - lead
        self.scan = _Scan(start=offset, previous_blank=False)

    def _content(self, offset: int, line: bytes) -> None:
        scan = self.scan
        if not scan.seen_text and line.strip():
            scan.seen_text = True
        if not scan.in_headers:
            return
        if _is_blank(line):
            scan.in_headers = False
            if scan.start is not None and scan.content_length is not None:
                self._jump(offset + len(line) + scan.content_length)
            return
        match = _CONTENT_LENGTH.match(line)
        if match and scan.content_length is None:
            scan.content_length = int(match.group(1))

    def _jump(self, target: int) -> None:
        """Skip to where an honest Content-Length says the message ends; stay put otherwise."""
        if target > self.size:
            return
        self.stream.seek(target)
        peek = self.stream.read(_PEEK)
        for newline in (b"", b"\n", b"\r\n"):
            if peek == newline or peek.startswith(newline + b"From "):
                self.scan.forced = target + len(newline)
                self.position = (
                    target if peek.startswith(newline + b"From ") else target + len(peek)
                )
                self.stream.seek(self.position)
                self.scan.previous_blank = True
                return
        self.stream.seek(self.position)

    def _finish(self, lead: int) -> Iterator[tuple[int, int]]:
        scan = self.scan
        if scan.start is not None:
            yield scan.start, self.position - scan.start
        elif scan.seen_text:
            yield lead, self.position - lead


def split_mbox(stream: BinaryIO) -> Iterator[tuple[int, int]]:
    """Yield `(offset, length)` of each message of a seekable binary mbox stream, in order.

    Memory stays flat: the stream is read a line (at most `LINE_LIMIT` bytes) at a time.
    """
    stream.seek(0)
    return _Splitter(stream).run()
