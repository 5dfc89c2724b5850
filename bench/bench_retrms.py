"""Benchmark: the RETRMS search (`tasks.mailstore.search`) against GNU grep over a mail archive.

Builds a seeded archive laid out as the reference store expects (`<user>/<folder>/<YYYYMMDD>/
<id>.eml` day folders and `<user>/<folder>/<YYYYMMDD>.mbox` day files) in which needle words
appear in subjects (plain, raw 8-bit, folded, RFC 2047 B and Q words in UTF-8, Big5 and GB2312,
bytes split across encoded words), in bodies, and in places a subject search must not find (a
`Subject:` line quoted in a reply, a text attachment, base64 that happens to spell the needle).
The generator keeps the ground truth.  Then, on the same warm files in this process, it times our
subject search against `grep -rli`, scores every contender against that truth, times a body
search and a listing of everything, and prints the peak memory of our search.

    .venv/bin/python bench/bench_retrms.py [--messages 20000] [--size-mb 200] [--repeat 3]

Not a test: nothing here fails a build (unless --strict); read the figures.
"""

from __future__ import annotations

import argparse
import base64
import email
import email.policy
import functools
import html
import json
import mailbox
import math
import os
import quopri
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.message import Message as EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.mailstore import Criterion, FileMailStore, search  # noqa: E402
from tasks.mailstore import store as store_module  # noqa: E402

SHARED_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
BENCH_MEMORY = Path(__file__).resolve().with_name("bench_memory.py")
NOT_MAIL = frozenset({"LICENSE", "NOTICE", "SOURCE.txt", "README.md"})
MB = 1_000_000

NEEDLES = ("haha", "計劃")
USERS = ("yukoh", "hank", "tmchan")
FOLDERS = ("_ARCHIVE_", "Sent")
FOLDER_WEIGHTS = (85, 15)
CHARSETS = ("utf-8", "big5", "gb2312")
CHARSET_WEIGHTS = (70, 16, 14)
SUBJECT_FORMS = ("plain", "folded", "b", "q", "b-split")
FORM_NAMES = {
    "plain": "plain (raw 8-bit if not ASCII)",
    "folded": "folded over lines",
    "b": "RFC 2047 B",
    "q": "RFC 2047 Q",
    "b-split": "RFC 2047 B, bytes split across words",
}
SUBJECT_SHARE = 0.02
"""Share of the messages whose subject carries a needle (each needle on its own)."""
BODY_SHARE = 0.02
QUOTE_SHARE = 0.012
"""Share of the messages quoting an earlier mail's `Subject: <needle>` line in their body."""
ATTACHMENT_DECOY_SHARE = 0.005
ATTACHMENT_SHARE = 0.2
MAX_ATTACHMENT = 4 * MB
MBOX_SHARE = 0.12
"""Share of the (user, folder, day) partitions stored as one mbox file."""
BOTH_SHARE = 0.03
"""Share of the partitions that have both a day folder of .eml files and an mbox file."""
LF_SHARE = 0.1
"""Share of the .eml files written with bare LF line ends (mbox files always are)."""

UTF8_LOCALE = "C.UTF-8"

_WORD_TEXT = (
    "the of and to a in is you that it he was for on are as with his they I at be this have "
    "from or one had by word but not what all were we when your can said there use an each "
    "which she do how their if will up other about out many then them these so some her would "
    "make like him into time has look two more write go see number no way could people my than "
    "first water been call who its now find long down day did get come made may part over new "
    "take only little work know place year live me back give most very after thing our just "
    "name good man think say great where help through much before line right too mean old any "
    "same tell follow came want show also around form three small set put end does another well "
    "large must big even such because turn here why ask went men read need land different home "
    "meeting budget quarter invoice shipment contract customer report attached please review "
    "schedule project deadline approval regards thanks team office client order payment "
    "delivery account manager department update status issue request support product release "
    "server backup archive agreement draft proposal forecast revenue margin vendor purchase"
)
_TRADITIONAL = (
    "的一是在不了有和人這中大為上個國我以要他時來用們生到作地於出就分對成會可主發年動同工也能下過子"
    "說產種面而方後多定行學法所民得經十三之進著等部度家電力裡如水化高自二理起小物現實加量都兩體制機"
    "當使點從業本去把性好應開它合還因由其些然前外天政四日那社義事平形相全表間樣與關各重新線內數正心"
    "會議報告附件請查收謝謝合約客戶訂單付款交貨帳戶經理部門更新狀態問題要求支援產品發佈伺服器備份"
)
_SIMPLIFIED = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子"
    "说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机"
    "当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心"
    "会议报告附件请查收谢谢合约客户订单付款交货账户经理部门更新状态问题要求支持产品发布服务器备份"
)
PEOPLE = [
    ("Yuko Hamada", "yukoh"),
    ("Hank Chen", "hank"),
    ("陳大文", "tmchan"),
    ("王小明", "xiaoming"),
    ("Marie Dubois", "marie"),
    ("林美玲", "mei"),
    ("Priya Nair", "priya"),
    ("Carlos Mendes", "carlos"),
]
DOMAINS = ["mozart.example.com", "example.net", "partner.example.org", "example.com.tw"]
BINARY_KINDS = [("pdf", "application/pdf"), ("jpg", "image/jpeg"), ("docx", "application/msword")]
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_MBOX_FROM = re.compile(rb"^(>*From )", re.MULTILINE)
_SPACES = re.compile(r"\s+")

T = TypeVar("T")
Key = tuple[str, int]
"""A message: (path relative to the archive root, offset in an mbox file or -1 for a file)."""


def fold(text: str) -> str:
    """Text as the spec compares it: NFKC, case-folded, whitespace runs as one space."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return _SPACES.sub(" ", folded).strip()


def contains(needle: str, text: str) -> bool:
    return fold(needle) in fold(text)


def _label(charset: str, rng: random.Random) -> str:
    return charset.upper() if rng.random() < 0.4 else charset


def _q(data: bytes) -> str:
    return "".join("_" if b == 0x20 else chr(b) if b in _Q_SAFE else f"={b:02X}" for b in data)


def _word(text: str, charset: str, label: str, kind: str) -> str:
    data = text.encode(charset)
    if kind == "q":
        return f"=?{label}?Q?{_q(data)}?="
    return f"=?{label}?B?{base64.b64encode(data).decode()}?="


def encoded_words(text: str, charset: str, kind: str, rng: random.Random) -> str:
    """RFC 2047 words, split at characters, each at most a random 30-75 chars, folded."""
    limit = rng.randint(30, 75)
    label = _label(charset, rng)
    words: list[str] = []
    chunk = ""
    for char in text:
        if chunk and len(_word(chunk + char, charset, label, kind)) > limit:
            words.append(_word(chunk, charset, label, kind))
            chunk = char
        else:
            chunk += char
    words.append(_word(chunk, charset, label, kind))
    return "\r\n ".join(words)


def split_words(text: str, charset: str, rng: random.Random) -> str:
    """B words that cut the bytes anywhere, even inside a character, as some senders do."""
    data = text.encode(charset)
    label = _label(charset, rng)
    words = []
    start = 0
    while start < len(data):
        end = start + rng.randint(2, 9)
        words.append(f"=?{label}?B?{base64.b64encode(data[start:end]).decode()}?=")
        start = end
    return ("\r\n " if rng.random() < 0.5 else " ").join(words)


def fold_line(text: str, width: int) -> str:
    """Break a header value at spaces into lines of about `width`, as RFC 5322 folding does."""
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\r\n ".join([*lines, line])


def wrap(tokens: list[str], joiner: str, width: int = 72) -> str:
    lines, line = [], ""
    for token in tokens:
        if line and len(line) + len(joiner) + len(token) > width:
            lines.append(line)
            line = token
        else:
            line = f"{line}{joiner}{token}" if line else token
    return "\n".join([*lines, line])


@dataclass
class Script:
    """What a message's text is made of: latin words, or CJK characters in one charset."""

    name: str
    joiner: str
    vocabulary: list[str]


@dataclass
class Written:
    """What the generator wrote into one message, as text: the ground truth's source."""

    data: bytes
    subject: str
    body: str


class MailMaker:
    """Deterministic messages from one seeded RNG, with needles placed and counted."""

    def __init__(self, seed: int, needles: tuple[str, ...]) -> None:
        self.rng = random.Random(seed)
        self.needles = needles
        banned = {char for needle in needles for char in needle if not char.isascii()}
        words = [w for w in _WORD_TEXT.split() if not any(contains(n, w) for n in needles)]
        self.latin = Script("latin", " ", words)
        self.scripts = {
            "big5": Script("traditional", "", _cjk(_TRADITIONAL, "big5", banned)),
            "gb2312": Script("simplified", "", _cjk(_SIMPLIFIED, "gb2312", banned)),
            "utf-8": Script("traditional", "", _cjk(_TRADITIONAL, "utf-8", banned)),
        }
        self.counts: Counter[str] = Counter()
        self.previous = ""
        self.attachment_mean = 0.0

    # --- text ---------------------------------------------------------------------------------

    def script_for(self, charset: str) -> Script:
        if charset == "utf-8" and self.rng.random() < 0.8:
            return self.latin
        return self.scripts[charset]

    def tokens(self, script: Script, count: int) -> list[str]:
        if script is self.latin:
            return self.rng.choices(script.vocabulary, k=count)
        rng = self.rng
        return [
            "".join(rng.choices(script.vocabulary, k=rng.randint(2, 5)))
            if rng.random() < 0.85
            else rng.choice(self.latin.vocabulary)
            for _ in range(count)
        ]

    def variant(self, needle: str, charset: str) -> str:
        """The needle as a sender might write it: in any case, sometimes full-width."""
        if not needle.isascii():
            return needle
        roll = self.rng.random()
        if charset == "utf-8" and roll < 0.08:
            return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in needle.upper())
        return needle.upper() if roll < 0.25 else needle.capitalize() if roll < 0.5 else needle

    def insert(self, tokens: list[str], needle: str, charset: str, first: int = 0) -> str:
        variant = self.variant(needle, charset)
        tokens.insert(self.rng.randint(first, len(tokens)), variant)
        return variant

    # --- subject ------------------------------------------------------------------------------

    def subject(self, charset: str, script: Script) -> tuple[str, bytes]:
        rng = self.rng
        carried = [
            n for n in self.needles if _encodable(n, charset) and rng.random() < SUBJECT_SHARE
        ]
        tokens = self.tokens(script, rng.randint(3, 9) if carried else rng.randint(2, 8))
        form = rng.choice(SUBJECT_FORMS) if carried else self.plain_form(charset, tokens)
        variants = []
        for needle in carried:
            variants.append(
                self.insert(tokens, needle, charset, first=1 if form == "folded" else 0)
            )
            self.counts[f"{needle}|subject|{charset}|{form}"] += 1
        text = " ".join(tokens) if script is self.latin or rng.random() < 0.5 else "".join(tokens)
        if form == "folded" and " " not in text:
            text = " ".join(tokens)
        prefix = rng.choice(["", "", "", "Re: ", "RE: ", "Fwd: "])
        return prefix + text, prefix.encode() + self.encode_subject(text, charset, form, variants)

    def plain_form(self, charset: str, tokens: list[str]) -> str:
        if all(t.isascii() for t in tokens):
            return "folded" if sum(map(len, tokens)) > 50 else "plain"
        return self.rng.choices(["b", "q", "plain", "b-split"], weights=[60, 15, 15, 10])[0]

    def encode_subject(self, text: str, charset: str, form: str, variants: list[str]) -> bytes:
        rng = self.rng
        if form == "b-split":
            return split_words(text, charset, rng).encode()
        if form in ("b", "q"):
            return encoded_words(text, charset, form, rng).encode()
        if form == "folded":
            return self.folded(text, variants).encode(charset)
        return text.encode(charset)

    def folded(self, text: str, variants: list[str]) -> str:
        """Folded at spaces; a carried needle starts a continuation line."""
        width = self.rng.randint(12, 40)
        at = _needle_start(text, variants)
        if at <= 0:
            return fold_line(text, width)
        return fold_line(text[:at].rstrip(" "), width) + "\r\n " + fold_line(text[at:], width)

    # --- body ---------------------------------------------------------------------------------

    def body(self, charset: str, script: Script) -> tuple[str, bool]:
        """The text part's text, and whether it quotes a `Subject:` line with a needle."""
        rng = self.rng
        paragraphs = [self.tokens(script, rng.randint(8, 60)) for _ in range(rng.randint(1, 5))]
        for needle in self.needles:
            if _encodable(needle, charset) and rng.random() < BODY_SHARE:
                self.insert(rng.choice(paragraphs), needle, charset)
                self.counts[f"{needle}|body"] += 1
        text = "\n\n".join(wrap(p, script.joiner) for p in paragraphs)
        text += f"\n\n--\n{rng.choice(_people(charset))[0]}\nMozart Trading Ltd. | +852 2345 6789\n"
        quoted = self.quoted_subject(charset, script)
        if quoted:
            text += quoted
        elif rng.random() < 0.3 and _encodable(self.previous[:1500], charset):
            lines = self.previous[:1500].splitlines()
            text += "\nOn an earlier day, someone wrote:\n" + "\n".join(f"> {x}" for x in lines)
        self.previous = text
        return text + "\n", bool(quoted)

    def quoted_subject(self, charset: str, script: Script) -> str:
        """A reply quoting an earlier mail's headers, `Subject: <needle>` among them."""
        rng = self.rng
        needles = [n for n in self.needles if _encodable(n, charset)]
        if not needles or rng.random() >= QUOTE_SHARE:
            return ""
        needle = rng.choice(needles)
        self.counts[f"{needle}|quoted Subject: line in a body"] += 1
        tokens = self.tokens(script, rng.randint(2, 5))
        self.insert(tokens, needle, charset)
        subject = " ".join(tokens)
        sender, to = rng.sample(_people(charset), 2)
        if rng.random() < 0.5:
            return (
                f"\n-----Original Message-----\nFrom: {sender[0]}\nSent: Monday\n"
                f"To: {to[0]}\nSubject: {subject}\n\n{wrap(self.tokens(script, 20), ' ')}\n"
            )
        quote = " ".join(self.tokens(script, 9))
        return f"\n{sender[0]} wrote:\n> Subject: {subject}\n>\n> {quote}\n"

    # --- parts --------------------------------------------------------------------------------

    def transfer_encoding(self, data: bytes, charset: str, visible: bool) -> str:
        """How a text part is sent; `visible` ones stay readable to grep (7bit or 8bit)."""
        if visible:
            return "7bit" if data.isascii() else "8bit"
        if data.isascii():
            choices, weights = ["7bit", "quoted-printable", "base64"], [70, 20, 10]
        elif charset == "gb2312":
            choices, weights = ["base64", "8bit"], [70, 30]
        else:
            choices, weights = ["8bit", "quoted-printable", "base64"], [35, 35, 30]
        return self.rng.choices(choices, weights=weights)[0]

    def text_part(self, text: str, charset: str, subtype: str, visible: bool) -> bytes:
        data = text.replace("\n", "\r\n").encode(charset)
        cte = "base64" if subtype == "html" else self.transfer_encoding(data, charset, visible)
        head = (
            f"Content-Type: text/{subtype}; charset={_label(charset, self.rng)}\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n\r\n"
        ).encode()
        return head + _encode_body(data, cte)

    def attachments(self) -> list[bytes]:
        rng = self.rng
        parts = []
        if self.needles and rng.random() < ATTACHMENT_DECOY_SHARE:
            needle = rng.choice([n for n in self.needles if n.isascii()] or list(self.needles))
            self.counts[f"{needle}|text attachment"] += 1
            rows = [
                f"{rng.randint(1, 9999)},{' '.join(self.tokens(self.latin, 5))}",
                f"{rng.randint(1, 9999)},{needle},{' '.join(self.tokens(self.latin, 3))}",
            ]
            data = "\r\n".join(rows).encode("utf-8") + b"\r\n"
            parts.append(_attachment("notes.txt", "text/plain; charset=utf-8", data, "8bit"))
        if self.attachment_mean >= 2_000 and rng.random() < ATTACHMENT_SHARE:
            for _ in range(rng.choice([1, 1, 1, 2])):
                parts.append(self.binary_attachment())
        return parts

    def binary_attachment(self) -> bytes:
        rng = self.rng
        sigma = 1.0
        mu = math.log(self.attachment_mean / 1.35) - sigma * sigma / 2
        size = int(min(MAX_ATTACHMENT, max(1_000, rng.lognormvariate(mu, sigma))))
        ext, mime = rng.choice(BINARY_KINDS)
        name = f"{'-'.join(self.tokens(self.latin, 2))}.{ext}"
        return _attachment(name, mime, rng.randbytes(size), "base64")

    # --- message ------------------------------------------------------------------------------

    def message(self, n: int, when: float) -> Written:
        rng = self.rng
        charset = rng.choices(CHARSETS, weights=CHARSET_WEIGHTS)[0]
        script = self.script_for(charset)
        subject, subject_bytes = self.subject(charset, script)
        body, visible = self.body(charset, script)
        plain = self.text_part(body, charset, "plain", visible)
        attachments = self.attachments()
        if not attachments and rng.random() < 0.4:
            content = plain
        else:
            alternative = [plain, self.text_part(_html(body, charset), charset, "html", False)]
            inner = _multipart("alternative", alternative, f"alt_{n}_{rng.getrandbits(32):x}")
            content = (
                _multipart("mixed", [inner, *attachments], f"mix_{n}_{rng.getrandbits(32):x}")
                if attachments
                else inner
            )
        head = self.headers(n, when, subject_bytes)
        return Written(head + content, subject, body)

    def headers(self, n: int, when: float, subject: bytes) -> bytes:
        rng = self.rng
        sender, to = rng.sample(PEOPLE, 2)
        domain = rng.choice(DOMAINS)
        date_text = format_datetime(datetime.fromtimestamp(when, UTC))
        lines = [
            f"Return-Path: <{sender[1]}@{domain}>",
            f"Received: from mx{rng.randint(1, 9)}.{domain} (mx.{domain} [10.0.{n % 250}.1])"
            f"\r\n\tby mail.mozart.example.com with ESMTPS id {rng.getrandbits(48):x}; {date_text}",
            f"From: {_address(sender, domain)}",
            f"To: {_address(to, 'mozart.example.com')}",
        ]
        if rng.random() < 0.3:
            lines.append(f"Cc: {_address(rng.choice(PEOPLE), 'mozart.example.com')}")
        lines += [f"Date: {date_text}", f"Message-ID: <{rng.getrandbits(64):016x}.{n}@{domain}>"]
        lines += ["MIME-Version: 1.0", "X-Mailer: Mozart Mail 7.2"]
        return "\r\n".join(lines).encode() + b"\r\nSubject: " + subject + b"\r\n"


@functools.cache
def _people(charset: str) -> list[tuple[str, str]]:
    return [person for person in PEOPLE if _encodable(person[0], charset)]


def _cjk(text: str, charset: str, banned: set[str]) -> list[str]:
    return [c for c in dict.fromkeys(text) if c not in banned and _encodable(c, charset)]


def _encodable(text: str, charset: str) -> bool:
    try:
        text.encode(charset)
    except UnicodeEncodeError:
        return False
    return True


def _needle_start(text: str, variants: list[str]) -> int:
    starts = [text.find(v) for v in variants if v in text]
    if not starts:
        return -1
    return text.rfind(" ", 0, min(starts)) + 1


def _address(person: tuple[str, str], domain: str) -> str:
    name = person[0]
    if not name.isascii():
        name = f"=?UTF-8?B?{base64.b64encode(name.encode()).decode()}?="
    return f"{name} <{person[1]}@{domain}>"


def _encode_body(data: bytes, cte: str) -> bytes:
    if cte == "base64":
        return base64.encodebytes(data).replace(b"\n", b"\r\n")
    if cte == "quoted-printable":
        return quopri.encodestring(data.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n") + b"\r\n"
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _html(text: str, charset: str) -> str:
    paragraphs = "".join(
        f'<p style="margin:0;font-family:Calibri,sans-serif">{html.escape(p)}</p>\n'
        for p in text.split("\n\n")
    )
    return f'<html><head><meta charset="{charset}"></head><body>\n{paragraphs}</body></html>\n'


def _attachment(name: str, mime: str, data: bytes, cte: str) -> bytes:
    head = (
        f'Content-Type: {mime}; name="{name}"\r\nContent-Transfer-Encoding: {cte}\r\n'
        f'Content-Disposition: attachment; filename="{name}"\r\n\r\n'
    ).encode()
    return head + _encode_body(data, cte)


def _multipart(subtype: str, parts: list[bytes], boundary: str) -> bytes:
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()
    body = b"".join(f"--{boundary}\r\n".encode() + part for part in parts)
    return head + body + f"--{boundary}--\r\n".encode()


# --- the archive -------------------------------------------------------------------------------


@dataclass
class Archive:
    """The archive written, and the ground truth of every needle."""

    root: Path
    needles: tuple[str, ...]
    files: int = 0
    bytes: int = 0
    messages: int = 0
    mbox_files: int = 0
    mbox_messages: int = 0
    real_files: int = 0
    real_mbox: int = 0
    real_messages: int = 0
    subject_truth: dict[str, set[Key]] = field(default_factory=dict)
    body_truth: dict[str, set[Key]] = field(default_factory=dict)
    generated: set[Key] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)

    def record(self, key: Key, subject: str, body: str) -> None:
        for needle in self.needles:
            if contains(needle, subject):
                self.subject_truth.setdefault(needle, set()).add(key)
            if contains(needle, body):
                self.body_truth.setdefault(needle, set()).add(key)


class ArchiveWriter:
    """Puts messages into (user, folder, day) partitions: .eml day folders, mbox files, or both."""

    def __init__(self, archive: Archive, rng: random.Random) -> None:
        self.archive = archive
        self.rng = rng
        self.kinds: dict[tuple[str, str, str], str] = {}
        self.mbox_files: set[Path] = set()

    def place(self, n: int, when: float) -> tuple[Path, bool]:
        rng = self.rng
        user = rng.choice(USERS)
        folder = rng.choices(FOLDERS, weights=FOLDER_WEIGHTS)[0]
        day = time.strftime("%Y%m%d", time.gmtime(when))
        kind = self.kinds.get((user, folder, day))
        if kind is None:
            roll = rng.random()
            kind = "mbox" if roll < MBOX_SHARE else "both" if roll < MBOX_SHARE + BOTH_SHARE else ""
            self.kinds[(user, folder, day)] = kind
        base = self.archive.root / user / folder
        if kind == "mbox" or (kind == "both" and rng.random() < 0.5):
            return base / f"{day}.mbox", True
        return base / day / f"M{n:07d}.eml", False

    def write(self, n: int, when: float, written: Written) -> int:
        path, is_mbox = self.place(n, when)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = written.data
        if is_mbox:
            sender = PEOPLE[n % len(PEOPLE)][1]
            envelope = f"From {sender}@example.net {time.asctime(time.gmtime(when))}\n"
            data = envelope.encode() + _MBOX_FROM.sub(rb">\1", data.replace(b"\r\n", b"\n")) + b"\n"
            offset = path.stat().st_size if path.exists() else 0
            with path.open("ab") as mbox:
                mbox.write(data)
            self.mbox_files.add(path)
            self.archive.mbox_messages += 1
        else:
            if self.rng.random() < LF_SHARE:
                data = data.replace(b"\r\n", b"\n")
            path.write_bytes(data)
            offset = -1
        key = (path.relative_to(self.archive.root).as_posix(), offset)
        self.archive.generated.add(key)
        self.archive.record(key, written.subject, written.body)
        return len(data)


def build_archive(
    root: Path, messages: int, size_mb: float, seed: int, needles: tuple[str, ...], shared: bool
) -> Archive:
    """Write the archive under `root` (real messages included in the size) with its truth."""
    archive = Archive(root, needles)
    if shared and SHARED_CORPUS.is_dir():
        mix_shared_corpus(archive)
    real_bytes = _tally(root)[1] if root.exists() else 0
    maker = MailMaker(seed, needles)
    generate(ArchiveWriter(archive, maker.rng), maker, messages, size_mb * MB - real_bytes)
    archive.counts = maker.counts
    archive.files, archive.bytes = _tally(root)
    return archive


def generate(writer: ArchiveWriter, maker: MailMaker, messages: int, target: float) -> None:
    """Write `messages` messages of about `target` bytes in all, about 100 a day from 2017-07."""
    written = plain_bytes = plain_count = 0
    when = 1_500_000_000.0
    for n in range(1, messages + 1):
        when += maker.rng.expovariate(100 / 86400)
        # Attachments fill what text leaves of the size asked for, spread over what is left.
        per_message = (target - written) / (messages - n + 1)
        text_mean = plain_bytes / plain_count if plain_count else 6_000
        maker.attachment_mean = max(0.0, per_message - text_mean) / ATTACHMENT_SHARE
        message = maker.message(n, when)
        size = writer.write(n, when, message)
        written += size
        if b"Content-Disposition: attachment" not in message.data:
            plain_bytes += size
            plain_count += 1
    writer.archive.messages = messages
    writer.archive.mbox_files = len(writer.mbox_files)


def _tally(root: Path) -> tuple[int, int]:
    files = size = 0
    for folder, _, names in os.walk(root):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(folder, name))
    return files, size


def mix_shared_corpus(archive: Archive) -> None:
    """Copy the real messages in byte for byte: single files as .eml, mbox files as day files.

    Their truth comes from Python's `email` package (policy `default`), the generator not having
    written them.
    """
    sources = sorted(p for p in SHARED_CORPUS.rglob("*") if p.is_file() and p.name not in NOT_MAIL)
    start = date(2016, 1, 1)
    for i, source in enumerate(sources):
        user = USERS[i % len(USERS)]
        is_mbox = source.name.endswith(".mbox.txt")
        if is_mbox:
            day = (start - timedelta(days=1 + archive.real_mbox)).strftime("%Y%m%d")
            target = archive.root / user / "_ARCHIVE_" / f"{day}.mbox"
            archive.real_mbox += 1
        else:
            day = (start + timedelta(days=i // 8)).strftime("%Y%m%d")
            clean = re.sub(r"[^A-Za-z0-9._-]+", "_", source.relative_to(SHARED_CORPUS).as_posix())
            target = archive.root / user / "_ARCHIVE_" / day / f"R{i:03d}-{clean}.eml"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        archive.real_files += 1
        key = (target.relative_to(archive.root).as_posix(), -1)
        for subject, body in reference_texts(target, is_mbox):
            archive.real_messages += 1
            archive.record(key, subject, body)


def reference_texts(path: Path, is_mbox: bool) -> Iterator[tuple[str, str]]:
    """(subject, body text) of each message of a real file, as Python's `email` reads them."""
    if is_mbox:
        box = mailbox.mbox(path, create=False)
        raws = [box.get_bytes(key) for key in box.iterkeys()]
    else:
        raws = [path.read_bytes()]
    for raw in raws:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        subject = _safe(functools.partial(_reference_subject, message))
        yield subject, _safe(functools.partial(_reference_body, message))


def _safe(get: Callable[[], str]) -> str:
    try:
        return get()
    except Exception:  # a broken header reads as no text
        return ""


def _reference_subject(message: EmailMessage) -> str:
    return str(message.get("subject") or "")


def _reference_body(message: EmailMessage) -> str:
    texts = []
    for part in message.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        if part.get_content_disposition() == "attachment" or part.get_filename():
            continue
        content = getattr(part, "get_content", None)
        if content is not None:
            texts.append(_safe(content))
    return "\n".join(texts)


# --- contenders --------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    seconds: list[float] = field(default_factory=list)
    files: set[str] = field(default_factory=set)
    messages: set[Key] | None = None
    """Ours only: the messages found."""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass(frozen=True)
class Score:
    found: int
    true: int
    false: int
    missed: int

    @property
    def exact(self) -> bool:
        return self.false == 0 and self.missed == 0


def score(found: set[T], truth: set[T]) -> Score:
    hits = len(found & truth)
    return Score(len(found), hits, len(found) - hits, len(truth) - hits)


def forget_splits() -> None:
    """Start as a new task would: no mbox split cached from the run before."""
    cached = getattr(store_module, "_cached_splits", None)
    if cached is not None:
        cached.cache_clear()


def _no_progress(done: int, total: int) -> None:
    pass


def run_search(
    root: Path, query: Mapping[str, object], index: Path | None = None, fresh: bool = False
) -> list[tuple[str, str]]:
    """Our search, as RETRMS runs it: a new store, the criterion, every result consumed.

    `index`: the header cache to use (None: none); `fresh`: emptied first, as on a first search.
    """
    forget_splits()
    if fresh and index is not None:
        shutil.rmtree(index, ignore_errors=True)
    store = FileMailStore(root, index)
    criterion = Criterion.from_json(query)
    return [(mail.user, mail.id) for mail in search(store, criterion, _no_progress)]


def resolve(root: Path, hits: Iterable[tuple[str, str]]) -> set[Key]:
    """The files and mbox offsets behind result ids (outside the timed runs)."""
    store = FileMailStore(root)
    keys = set()
    for user, mail_id in hits:
        message = store.message(user, mail_id)
        offset = -1 if message.offset is None else message.offset
        keys.add((message.path.relative_to(root).as_posix(), offset))
    return keys


@dataclass(frozen=True)
class Grep:
    """A GNU grep command line over the archive; -Z only makes its file list NUL-separated."""

    name: str
    locale: str
    anchored: bool = False

    def command(self, needle: str, root: Path) -> list[str]:
        if self.anchored:
            return ["grep", "-rlZiE", f"^subject:.*{re.escape(needle)}", str(root)]
        return ["grep", "-rlZi", "--", needle, str(root)]

    def run(self, needle: str, root: Path) -> set[str]:
        env = {**os.environ, "LC_ALL": self.locale}
        done = subprocess.run(self.command(needle, root), capture_output=True, env=env, check=False)
        if done.returncode > 1:
            raise RuntimeError(f"{self.name}: {done.stderr.decode(errors='replace')}")
        return {
            os.path.relpath(os.fsdecode(path), root) for path in done.stdout.split(b"\0") if path
        }


GREP_BASELINE = Grep(f"grep -rli ({UTF8_LOCALE})", UTF8_LOCALE)
GREPS = [
    GREP_BASELINE,
    Grep("grep -rli (LC_ALL=C)", "C"),
    Grep("grep -rliE '^subject:.*N' (C)", "C", anchored=True),
]


def time_repeated(outcome: Outcome, action: Callable[[], object], repeat: int) -> object:
    result: object = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = action()
        outcome.seconds.append(time.perf_counter() - start)
    print(f"  {outcome.name}: {', '.join(f'{s:.2f}s' for s in outcome.seconds)}", flush=True)
    return result


def time_ours(
    name: str,
    root: Path,
    query: Mapping[str, object],
    repeat: int,
    index: Path | None = None,
    fresh: bool = False,
) -> Outcome:
    outcome = Outcome(name)
    if index is not None and not fresh:
        run_search(root, query, index)  # fill the cache, untimed
    search_once = functools.partial(run_search, root, query, index, fresh)
    hits = time_repeated(outcome, search_once, repeat)
    assert isinstance(hits, list)
    outcome.messages = resolve(root, hits)
    outcome.files = {path for path, _ in outcome.messages}
    return outcome


def time_grep(grep: Grep, root: Path, needle: str, repeat: int) -> Outcome:
    outcome = Outcome(grep.name)
    found = time_repeated(outcome, functools.partial(grep.run, needle, root), repeat)
    assert isinstance(found, set)
    outcome.files = found
    return outcome


def wait_until_settled(root: Path) -> None:
    """Wait until the folders just written count as settled, as an archive's old days do: the
    store lists a day folder changed in the last few seconds on every search, so without this
    "cache filled" would time a search of a brand-new archive, not every later one."""
    newest = max(os.stat(folder).st_ctime for folder, _, _ in os.walk(root))
    wait = newest + store_module.SETTLED_NS / 1e9 + 0.5 - time.time()
    if wait > 0:
        print(f"waiting {wait:.1f}s for the day folders to settle", flush=True)
        time.sleep(wait)


def warm_cache(root: Path) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                while f.read(1 << 20):
                    pass


# --- memory ------------------------------------------------------------------------------------


def memory_of(root: Path, query: Mapping[str, object]) -> str:
    """Peak memory of our search, measured by bench_memory.py in a fresh interpreter.

    A fresh one, because this process has freed memory the search would reuse unseen.
    """
    done = subprocess.run(
        [sys.executable, str(BENCH_MEMORY), "--measure", "search", "--root", str(root)]
        + ["--query", json.dumps(query)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return f"not measured ({done.stderr.strip().splitlines()[-1:]})"
    result = json.loads(done.stdout.splitlines()[-1])
    growth = result["rss_growth"]
    shown = "n/a" if growth is None else f"{growth / MB:.1f} MB"
    return (
        f"tracemalloc peak {result['traced'] / MB:.1f} MB, RSS peak growth {shown} "
        f"(RSS {result['rss_before'] / MB:.0f} MB before)"
    )


# --- report ------------------------------------------------------------------------------------


def files_of(keys: set[Key]) -> set[str]:
    return {path for path, _ in keys}


def table(outcomes: list[Outcome], truth: set[Key], archive: Archive) -> list[str]:
    ours = outcomes[0]
    truth_files = files_of(truth)
    lines = [
        f"{'contender':<34}{'files/s':>9}{'MB/s':>8}{'median s':>10}{'found':>7}{'true':>6}"
        f"{'false':>7}{'missed':>8}{'ours/this':>10}"
    ]
    for o in outcomes:
        s = score(o.files, truth_files)
        lines.append(
            f"{o.name:<34}{archive.files / o.median:>9.0f}{archive.bytes / o.median / MB:>8.1f}"
            f"{o.median:>10.2f}{s.found:>7}{s.true:>6}{s.false:>7}{s.missed:>8}"
            f"{o.median / ours.median:>10.2f}"
        )
    if ours.messages is not None:
        generated = ours.messages & archive.generated
        s = score(generated, truth & archive.generated)
        lines.append(
            f"  {ours.name}, by message (generated mail only): {s.found} found, {s.true} true, "
            f"{s.false} false, {s.missed} missed"
        )
    return lines


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def subject_goal(outcomes: list[Outcome], truth: set[Key], archive: Archive) -> tuple[str, bool]:
    ours = outcomes[0]
    grep = next(o for o in outcomes if o.name == GREP_BASELINE.name)
    speed = grep.median / ours.median
    files = score(ours.files, files_of(truth))
    messages = score((ours.messages or set()) & archive.generated, truth & archive.generated)
    exact = files.exact and messages.exact
    ok = speed >= 1.0 and exact
    text = (
        f"goal: at least {GREP_BASELINE.name}'s files/s with every true match and no false one: "
        f"{verdict(ok)} (speed x{speed:.2f}: {verdict(speed >= 1.0)}; "
        f"matches: {verdict(exact)})"
    )
    return text, ok


def report_misses(outcome: Outcome, truth: set[Key], archive: Archive, limit: int = 8) -> None:
    """Name the files our search got wrong, so a store bug can be chased."""
    found = outcome.messages or set()
    wrong = sorted(found - truth)
    missed = sorted(truth - found)
    for label, keys in (("found but not a match", wrong), ("missed", missed)):
        for path, offset in keys[:limit]:
            where = f" (mbox offset {offset})" if offset >= 0 else ""
            print(f"    {label}: {path}{where}")
        if len(keys) > limit:
            print(f"    ... and {len(keys) - limit} more {label}")


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000, help="generated messages")
    parser.add_argument("--size-mb", type=float, default=200, help="archive size (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs each; median shown")
    parser.add_argument("--needles", default=",".join(NEEDLES), help="comma-separated words")
    parser.add_argument("--seed", type=int, default=20171025)
    parser.add_argument(
        "--no-shared-corpus",
        action="store_true",
        help=f"do not mix in the real messages of {SHARED_CORPUS}",
    )
    parser.add_argument("--skip-body", action="store_true", help="skip the body search")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a goal is missed (default: always 0)"
    )
    return parser.parse_args(argv)


def print_archive(archive: Archive, seconds: float, shared: bool) -> None:
    eml = archive.messages - archive.mbox_messages
    print(
        f"archive: {archive.bytes / MB:.1f} MB in {archive.files} files, built in {seconds:.1f}s: "
        f"{archive.messages} generated messages ({eml} .eml, {archive.mbox_messages} in "
        f"{archive.mbox_files} .mbox day files)"
    )
    if archive.real_files:
        print(
            f"  + {archive.real_files} real files from shared/corpus ({archive.real_mbox} mbox), "
            f"{archive.real_messages} messages as Python's email reads them"
        )
    elif shared:
        print(f"  note: {SHARED_CORPUS} is not there; generated messages only")
    for needle in archive.needles:
        forms = Counter[str]()
        charsets = Counter[str]()
        for key, count in archive.counts.items():
            parts = key.split("|")
            if parts[0] == needle and parts[1] == "subject":
                charsets[parts[2]] += count
                forms[FORM_NAMES[parts[3]]] += count
        others = [
            f"{key.split('|')[1]} {count}"
            for key, count in sorted(archive.counts.items())
            if key.startswith(f"{needle}|") and key.split("|")[1] != "subject"
        ]
        print(
            f'  "{needle}" in {sum(forms.values())} subjects '
            f"({', '.join(f'{k} {v}' for k, v in sorted(forms.items()))}; "
            f"{', '.join(f'{k} {v}' for k, v in sorted(charsets.items()))}); {', '.join(others)}"
        )


def subject_section(archive: Archive, needle: str, repeat: int, index: Path) -> bool:
    truth = archive.subject_truth.get(needle, set())
    print(
        f'\nsubject "{needle}": {len(files_of(truth))} files hold a true match '
        f"({len(truth)} messages)"
    )
    query = {"subject": needle}
    outcomes = [
        time_ours("ours, header cache filled", archive.root, query, repeat, index),
        time_ours("ours, first search (fills it)", archive.root, query, repeat, index, True),
        time_ours("ours, no header cache", archive.root, query, repeat),
    ]
    outcomes += [time_grep(grep, archive.root, needle, repeat) for grep in GREPS]
    print("\n".join(table(outcomes, truth, archive)))
    text, ok = subject_goal(outcomes, truth, archive)
    print(text)
    report_misses(outcomes[0], truth, archive)
    return ok


def body_section(archive: Archive, needle: str, repeat: int, index: Path) -> bool:
    truth = archive.body_truth.get(needle, set())
    print(
        f'\nbody "{needle}": {len(files_of(truth))} files hold a true match ({len(truth)} messages)'
    )
    outcomes = [time_ours("ours search(body)", archive.root, {"body": needle}, repeat, index)]
    outcomes.append(time_grep(GREP_BASELINE, archive.root, needle, repeat))
    print("\n".join(table(outcomes, truth, archive)))
    ours = outcomes[0]
    ok = (
        score(ours.files, files_of(truth)).exact
        and score((ours.messages or set()) & archive.generated, truth & archive.generated).exact
    )
    print(f"check: our body search finds every true match and no false one: {verdict(ok)}")
    report_misses(ours, truth, archive)
    return ok


def listing_section(archive: Archive, repeat: int, index: Path) -> bool:
    print("\nlisting everything (empty criterion), header cache filled")
    outcome = time_ours("ours search({})", archive.root, {}, repeat, index)
    listed = outcome.messages or set()
    generated_ok = listed & archive.generated == archive.generated
    print(
        f"  {len(listed)} messages listed in {outcome.median:.2f}s: "
        f"{archive.files / outcome.median:.0f} files/s, "
        f"{len(listed) / outcome.median:.0f} messages/s, "
        f"{archive.bytes / outcome.median / MB:.1f} MB/s"
    )
    print(
        f"check: every generated message listed once, mbox messages at the offsets written: "
        f"{verdict(generated_ok)}"
    )
    real = len(listed - archive.generated)
    if archive.real_files:
        print(
            f"  real corpus: {real} messages listed; Python's email reads "
            f"{archive.real_messages} (its mailbox splits mimekit's unmunged.mbox.txt in 3, not 2)"
        )
    return generated_ok


def memory_section(archive: Archive, needle: str, body: bool) -> None:
    print()
    queries: list[tuple[str, dict[str, object]]] = [(f"subject {needle!r}", {"subject": needle})]
    if body:
        queries.append((f"body {needle!r}", {"body": needle}))
    queries.append(("{} (listing)", {}))
    for name, query in queries:
        print(f"ours search({name}), results streamed: {memory_of(archive.root, query)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    needles = tuple(n for n in args.needles.split(",") if n)
    shared = not args.no_shared_corpus
    with tempfile.TemporaryDirectory(prefix="bench-retrms-") as tmp:
        root = Path(tmp) / "mail_db"
        start = time.perf_counter()
        archive = build_archive(root, args.messages, args.size_mb, args.seed, needles, shared)
        print_archive(archive, time.perf_counter() - start, shared)
        warm_cache(root)
        wait_until_settled(root)
        index = Path(tmp) / "mail-index"
        results = [subject_section(archive, n, args.repeat, index) for n in needles]
        if not args.skip_body:
            results += [body_section(archive, n, args.repeat, index) for n in needles]
        results.append(listing_section(archive, args.repeat, index))
        memory_section(archive, needles[0], not args.skip_body)
        print(
            f"\nmachine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {_grep_version()}"
        )
    return 1 if args.strict and not all(results) else 0


def _grep_version() -> str:
    done = subprocess.run(["grep", "--version"], capture_output=True, text=True, check=False)
    return done.stdout.splitlines()[0] if done.stdout else "grep (unknown version)"


if __name__ == "__main__":
    raise SystemExit(main())
