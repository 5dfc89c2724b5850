"""Decode header values to display text: RFC 2047 words, raw 8-bit bytes, dates. Never raises.

Real mail breaks every rule here, so each step decodes as far as it can and keeps the rest as it
stands: a malformed encoded word (bad base64 padding, unknown charset, missing `?=`) still yields
its text, and raw bytes fall back to a lossless reading.
"""

from __future__ import annotations

import binascii
import email.utils
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from tasks.mailstore.charsets import decode_declared, decode_unknown

# Either a well-formed word, whose text may (wrongly) hold spaces, or one cut short at the next
# whitespace or end of value.
_ENCODED_WORD = re.compile(
    r"=\?(?P<charset>[^?\s]+)\?(?P<encoding>[BbQq])\?"
    r"(?:(?P<text>[^?]*)\?=|(?P<cut>[^?\s]*)(?=\s|$))"
)
_Q_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Lone surrogates (from broken UTF-7 or UTF-16) cannot be written as UTF-8 JSON.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SPACES = re.compile(r" {2,}")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"?', re.DOTALL)
_BACKSLASH_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_CHARSET_PARAM = re.compile(rb"""charset\s*=\s*["']?([A-Za-z0-9_.:+-]+)""", re.IGNORECASE)


def header_text(value: bytes | str | None, hints: Sequence[str] = ()) -> str:
    """A raw header value as a string, raw 8-bit bytes decoded (`hints`: the message's charsets)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return decode_unknown(value, hints)


def decode_header(value: bytes | str | None, hints: Sequence[str] = ()) -> str:
    """Display text of an unstructured header value such as Subject."""
    try:
        return _tidy(decode_words(header_text(value, hints), hints))
    except Exception:  # a decoder bug must not stop a search; show what the sender wrote
        return _tidy(_safe_text(value))


def decode_address_header(value: bytes | str | None, hints: Sequence[str] = ()) -> str:
    """Display text of an address header (From, To, Cc): encoded words decoded, quotes dropped."""
    try:
        text = header_text(value, hints)
        return _tidy("".join(_address_pieces(text, hints)))
    except Exception:  # as in decode_header
        return _tidy(_safe_text(value))


def _safe_text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value or ""


def _address_pieces(text: str, hints: Sequence[str]) -> list[str]:
    pieces: list[str] = []
    position = 0
    for match in _QUOTED.finditer(text):
        pieces.append(decode_words(text[position : match.start()], hints))
        inner = decode_words(_BACKSLASH_ESCAPE.sub(r"\1", match.group(1)), hints)
        # Keep the quotes only where they stop a comma from reading as an address separator.
        pieces.append(f'"{inner}"' if "," in inner or ";" in inner else inner)
        position = match.end()
    pieces.append(decode_words(text[position:], hints))
    return pieces


def _tidy(text: str) -> str:
    text = _CONTROL.sub(" ", _SURROGATE.sub("\ufffd", text))
    return _SPACES.sub(" ", text).strip()


def decode_words(text: str, hints: Sequence[str] = ()) -> str:
    """Replace the RFC 2047 encoded words in `text` by their text.

    Adjacent words (only whitespace between them) are joined without that whitespace, and runs
    in one charset are decoded as one byte string, since senders split multi-byte characters
    across words.
    """
    if "=?" not in text:
        return text
    out: list[str] = []
    run: list[tuple[str, bytes]] = []
    position = 0
    for match in _ENCODED_WORD.finditer(text):
        gap = text[position : match.start()]
        if not run or gap.strip():
            _flush(run, out, hints)
            out.append(gap)
        run.append((match.group("charset"), _word_bytes(match)))
        position = match.end()
    _flush(run, out, hints)
    out.append(text[position:])
    return "".join(out)


def _word_bytes(match: re.Match[str]) -> bytes:
    text = match.group("text")
    if text is None:
        text = match.group("cut") or ""
    payload = text.encode("utf-8", errors="surrogateescape")
    if match.group("encoding") in "Bb":
        return _base64(payload)
    return _Q_ESCAPE.sub(
        lambda m: bytes.fromhex(m.group(1).decode("ascii")), payload.replace(b"_", b" ")
    )


def _base64(payload: bytes) -> bytes:
    payload = _NOT_BASE64.sub(b"", payload)
    if len(payload) % 4 == 1:
        payload = payload[:-1]
    payload += b"=" * (-len(payload) % 4)
    try:
        return binascii.a2b_base64(payload)
    except (binascii.Error, ValueError):
        return b""


def _flush(run: list[tuple[str, bytes]], out: list[str], hints: Sequence[str]) -> None:
    while run:
        charset = run[0][0].lower()
        same = 0
        while same < len(run) and run[same][0].lower() == charset:
            same += 1
        data = b"".join(chunk for _, chunk in run[:same])
        out.append(decode_declared(data, charset, hints).replace("\ufeff", ""))
        del run[:same]


def content_charset(value: bytes | str | None) -> str | None:
    """The charset parameter of a Content-Type value, if any."""
    if value is None:
        return None
    raw = value.encode("utf-8", errors="replace") if isinstance(value, str) else value
    match = _CHARSET_PARAM.search(raw)
    return match.group(1).decode("ascii") if match else None


def charsets_in(data: bytes) -> list[str]:
    """Every charset parameter found in a stretch of raw message bytes, in order, no repeats."""
    found: list[str] = []
    for match in _CHARSET_PARAM.finditer(data):
        label = match.group(1).decode("ascii").lower()
        if label not in found:
            found.append(label)
    return found


def parse_date(value: bytes | str | None) -> str:
    """An RFC 5322 date as ISO 8601 UTC (`2017-10-25T08:30:00Z`), or "" if missing or unparseable.

    A date without a zone is taken as UTC.
    """
    if value is None:
        return ""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = _tidy(text)
    if not text:
        return ""
    try:
        parts = email.utils.parsedate_tz(text)
        if parts is None:
            return _iso_date(text)
        moment = datetime(*parts[:6], tzinfo=UTC) - timedelta(seconds=parts[9] or 0)
    except (ValueError, TypeError, OverflowError, IndexError):
        return ""
    return _iso_utc(moment)


def _iso_date(text: str) -> str:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return _iso_utc(moment.astimezone(UTC))
    except (ValueError, OverflowError):
        return ""


def _iso_utc(moment: datetime) -> str:
    # Formatted by hand: strftime does not zero-pad years before 1000 on every platform.
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z"
    )
