"""Turn mail bytes into text whatever charset label (or none) the sender put on them.

Everything here returns a string and never raises: a mail archive must stay searchable even when
a message lies about its charset, names one Python has never heard of, or names none at all.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

import charset_normalizer

# Labels seen in real mail that Python lacks, or where a superset decodes what senders really
# wrote (Microsoft and WHATWG decode these labels with the superset too).  Several codecs are
# tried in order, strictly; the first one that fits wins.
CHARSET_ALIASES: dict[str, tuple[str, ...]] = {
    "windows-874": ("cp874",),
    "x-windows-874": ("cp874",),
    "tis-620": ("cp874",),
    "tis620": ("cp874",),
    "ks_c_5601-1987": ("cp949",),
    "ks_c_5601-1989": ("cp949",),
    "ks_c_5601": ("cp949",),
    "ksc5601": ("cp949",),
    "ksc_5601": ("cp949",),
    "euc-kr": ("cp949",),
    "windows-949": ("cp949",),
    "gb2312": ("gb18030",),
    "gb_2312-80": ("gb18030",),
    "csgb2312": ("gb18030",),
    "gbk": ("gb18030",),
    "cp936": ("gb18030",),
    "windows-936": ("gb18030",),
    "euc-cn": ("gb18030",),
    "hz-gb-2312": ("hz",),
    "big5": ("cp950", "big5hkscs"),
    "big-5": ("cp950", "big5hkscs"),
    "cn-big5": ("cp950", "big5hkscs"),
    "csbig5": ("cp950", "big5hkscs"),
    "shift_jis": ("cp932", "shift_jis_2004"),
    "shift-jis": ("cp932", "shift_jis_2004"),
    "sjis": ("cp932", "shift_jis_2004"),
    "x-sjis": ("cp932", "shift_jis_2004"),
    "ms_kanji": ("cp932",),
    "windows-31j": ("cp932",),
    "csshiftjis": ("cp932",),
    "euc-jp": ("euc_jp", "euc_jis_2004"),
    "iso-2022-jp": ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2", "iso2022_jp_3"),
    "csiso2022jp": ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2"),
    "unicode": ("utf-16",),
    "ucs-2": ("utf-16",),
    "unicodefffe": ("utf-16-be",),
    "unicode-1-1-utf-7": ("utf-7",),
    "unicode-1-1-utf-8": ("utf-8",),
    "x-unicode20utf8": ("utf-8",),
    "iso-8859-1": ("cp1252", "latin-1"),
    "iso_8859-1": ("cp1252", "latin-1"),
    "iso8859-1": ("cp1252", "latin-1"),
    "latin1": ("cp1252", "latin-1"),
    "latin-1": ("cp1252", "latin-1"),
    "l1": ("cp1252", "latin-1"),
    "iso-8859-8-i": ("iso8859_8",),
    "iso-8859-8-e": ("iso8859_8",),
    "iso-8859-6-i": ("iso8859_6",),
    "iso-8859-6-e": ("iso8859_6",),
    "macintosh": ("mac_roman",),
    "x-mac-roman": ("mac_roman",),
}

# Labels that say nothing about the bytes: decode as if no charset had been given.
# fmt: off
UNKNOWN_CHARSETS = frozenset({
    "", "none", "unknown", "x-unknown", "unknown-8bit", "x-user-defined", "default", "charset",
    "us-ascii", "ascii", "ansi_x3.4-1968", "iso646-us", "8bit", "binary",
})
# fmt: on

# Codecs Python knows that are not charsets a mail could be written in.
_NOT_MAIL_CODECS = frozenset(
    {"idna", "punycode", "raw_unicode_escape", "unicode_escape", "undefined", "mbcs", "oem"}
)

# Short texts fit many single-byte charsets equally well; among equally plausible guesses prefer
# the ones common in mail.
# fmt: off
_DETECT_PREFERENCE = (
    "utf_8", "cp1252", "cp1251", "gb18030", "big5", "cp950", "cp949", "euc_kr", "cp932",
    "shift_jis", "euc_jp", "iso2022_jp", "koi8_r", "cp1250", "cp1253", "cp1255", "cp1256",
    "cp1254", "cp1257", "cp874", "iso8859_2", "iso8859_5", "iso8859_7", "iso8859_15",
)
# fmt: on
_DETECT_SAMPLE = 64 * 1024
_DETECT_TIE = 0.02

# Multi-byte charsets whose bytes are often found "double encoded": read as Latin-1 and saved as
# UTF-8 by a tool on the way.
_DOUBLE_ENCODED_VICTIMS = frozenset(
    {"cp950", "big5hkscs", "gb18030", "cp949", "cp932", "euc_jp", "shift_jis_2004"}
)

_LANGUAGE_SUFFIX = re.compile(r"\*.*$")
_LINE = re.compile(r"[^\r\n]+")
_HEBREW = re.compile("[\u0590-\u05ff]")
_LEFT_TO_RIGHT = re.compile(r"[A-Za-z0-9]")
_MIRRORED = str.maketrans("()[]{}<>", ")(][}{><")
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _normalise_label(label: str) -> str:
    label = label.strip().strip("\"'").strip().lower()
    # RFC 2231 lets an encoded word carry a language: "iso-8859-1*sv".
    return _LANGUAGE_SUFFIX.sub("", label)


@lru_cache(maxsize=512)
def _python_codec(label: str) -> str | None:
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError, TypeError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_MAIL_CODECS:
        return None
    return info.name


@lru_cache(maxsize=512)
def codecs_for(label: str | None) -> tuple[str, ...]:
    """Python codecs to try, in order, for a charset label; () when the label says nothing."""
    if label is None:
        return ()
    name = _normalise_label(label)
    if name in UNKNOWN_CHARSETS:
        return ()
    if name in CHARSET_ALIASES:
        return CHARSET_ALIASES[name]
    for candidate in (name, name.removeprefix("x-"), name.replace("_", "-"), name.replace("-", "")):
        if candidate in CHARSET_ALIASES:
            return CHARSET_ALIASES[candidate]
        codec = _python_codec(candidate)
        if codec is not None:
            return (codec,)
    return ()


def is_ascii_compatible(codec: str) -> bool:
    """Whether header lines (ASCII names and punctuation) survive this codec unchanged."""
    try:
        return codecs.encode("Subject: a-z 0-9", codec) == b"Subject: a-z 0-9"
    except (LookupError, ValueError, UnicodeError):
        return False


# Scripts text is commonly written in; a UTF-16 read in the wrong byte order lands elsewhere.
_COMMON_TEXT = re.compile(
    "[\u0009\u000a\u000d\u0020-\u024f\u0370-\u04ff\u0590-\u06ff\u0e00-\u0e7f"
    "\u2000-\u206f\u3000-\u30ff\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef]"
)


def _decode_utf16(data: bytes) -> str:
    if data.startswith(_UTF16_BOMS):
        return data.decode("utf-16", errors="replace")
    # Without a BOM Python would pick the machine's byte order; pick the order that reads as
    # text instead (Windows' "unicode" is little-endian, hence the tie-break).
    little = data.decode("utf-16-le", errors="replace")
    big = data.decode("utf-16-be", errors="replace")
    return big if len(_COMMON_TEXT.findall(big)) > len(_COMMON_TEXT.findall(little)) else little


def _strict(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec)
    except (UnicodeError, LookupError, ValueError):
        return None


def _lenient(data: bytes, codec: str) -> str:
    if codec == "utf-16":
        return _decode_utf16(data)
    try:
        return data.decode(codec, errors="replace")
    except (LookupError, ValueError, UnicodeError):
        return _last_resort(data)


def _logical_line(match: re.Match[str]) -> str:
    line = match.group(0)
    if _HEBREW.search(line) is None or _LEFT_TO_RIGHT.search(line) is not None:
        return line
    return line[::-1].translate(_MIRRORED)


def visual_to_logical(text: str) -> str:
    """Hebrew text stored in visual order (plain ISO-8859-8) put in reading order.

    Only lines of Hebrew alone are turned round: lines that mix in Latin letters or digits
    would need the whole bidirectional algorithm, and are left as stored.
    """
    return _LINE.sub(_logical_line, text)


def _is_visual(label: str | None, codec: str) -> bool:
    # ISO-8859-8-I (implicit) and -E (explicit) are in reading order; plain ISO-8859-8 is visual.
    if codec not in ("iso8859_8", "iso8859-8"):
        return False
    return not _normalise_label(label or "").endswith(("-i", "-e"))


def decode_declared(data: bytes, label: str | None, hints: Sequence[str] = ()) -> str:
    """Decode bytes a sender labelled with `label`; unknown labels fall back to guessing.

    Non-ASCII bytes that are valid UTF-8 are taken as UTF-8 whatever the label says: text in
    other charsets is practically never valid UTF-8, while tools that convert text to UTF-8 and
    keep the old label are common.
    """
    chain = codecs_for(label)
    if not chain:
        return decode_unknown(data, hints)
    if chain[0] == "utf-16":
        return _decode_utf16(data).lstrip("\ufeff")
    as_utf8 = None if data.isascii() else _strict(data, "utf-8")
    if as_utf8 is not None:
        return _undo_double_encoding(as_utf8, [label or ""]).lstrip("\ufeff")
    if _is_visual(label, chain[0]):
        return visual_to_logical(_lenient(data, chain[0]))
    for codec in chain:
        text = _strict(data, codec)
        if text is not None:
            return text.lstrip("\ufeff")
    if chain[0] == "utf-8":
        return decode_unknown(data, hints)
    return _lenient(data, chain[0])


def _undo_double_encoding(text: str, hints: Iterable[str]) -> str:
    high = [ch for ch in text if ch >= "\x80"]
    if not high or max(high) > "\xff":
        return text
    # CJK bytes read as Latin-1 give many symbols (U+0080-U+00BF); Western text gives letters
    # (U+00C0-U+00FF) and must not be "repaired" into CJK.
    symbols = sum(ch <= "\xbf" for ch in high)
    if symbols * 3 < len(high):
        return text
    raw = text.encode("latin-1")
    for label in hints:
        for codec in codecs_for(label):
            if codec in _DOUBLE_ENCODED_VICTIMS:
                repaired = _strict(raw, codec)
                if repaired is not None:
                    return repaired
    return text


def detect_codec(data: bytes) -> str | None:
    """Best guess at the codec of unlabelled 8-bit bytes, or None."""
    try:
        matches = list(charset_normalizer.from_bytes(data[:_DETECT_SAMPLE]))
    except Exception:  # a detector bug must not stop a search
        return None
    if not matches:
        return None
    least = min(match.chaos for match in matches)
    plausible = [m.encoding for m in matches if m.chaos <= least + _DETECT_TIE]
    ranked = sorted(plausible, key=_preference)
    best = ranked[0] if _preference(ranked[0]) < len(_DETECT_PREFERENCE) else plausible[0]
    chain = codecs_for(best)
    return chain[0] if chain else None


def _preference(codec: str) -> int:
    try:
        return _DETECT_PREFERENCE.index(codec)
    except ValueError:
        return len(_DETECT_PREFERENCE)


def _seven_bit(data: bytes) -> str:
    if b"\x1b" in data:
        # Escape sequences: raw ISO-2022 text, as old Japanese and Korean mail put in headers.
        for codec in (*CHARSET_ALIASES["iso-2022-jp"], "iso2022_kr"):
            text = _strict(data, codec)
            if text is not None:
                return text
    return data.decode("ascii")


def _last_resort(data: bytes) -> str:
    text = _strict(data, "cp1252")
    # Latin-1 maps every byte, so nothing is ever lost.
    return text if text is not None else data.decode("latin-1")


def decode_unknown(data: bytes, hints: Sequence[str] = ()) -> str:
    """Decode 8-bit bytes of unknown charset.

    UTF-8 first (it almost never decodes by accident), then the charsets the message declares
    elsewhere (`hints`), then detection, then a lossless single-byte reading.
    """
    if data.isascii():
        return _seven_bit(data)
    text = _strict(data, "utf-8")
    if text is not None:
        return _undo_double_encoding(text, hints).lstrip("\ufeff")
    for label in hints:
        for codec in codecs_for(label):
            if codec != "utf-8" and is_ascii_compatible(codec):
                text = _strict(data, codec)
                if text is not None:
                    return text
    detected = detect_codec(data)
    if detected is not None and is_ascii_compatible(detected):
        return _lenient(data, detected)
    return _last_resort(data)
