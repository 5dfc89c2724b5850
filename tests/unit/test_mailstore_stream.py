"""Big mails are read as a stream: the same text as the whole parse, without holding the mail."""

from __future__ import annotations

import base64
import io
import os
import random
import tracemalloc
from pathlib import Path

import pytest

from tasks.mailstore import Criterion, FileMailStore, search, stream
from tasks.mailstore import mime as mime_module
from tasks.mailstore.criteria import fold

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"

DIFFERS_IN_TEXT = {
    # A multipart/digest whose parts begin with lines shaped like header fields: `email` keeps
    # a few of them as text where the walk reads them as the enclosed message's fields.
    "mailcore2/parser/input/mbox/jwz/52",
}


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is absent: the real-mail corpus tests need it")
    return sorted(
        p for p in CORPUS.rglob("*") if p.is_file() and p.name not in ("README.md", "LICENSE")
    )


def whole(raw: bytes) -> tuple[str, bool]:
    tree = mime_module.parse(raw)
    return mime_module.body_text(tree), mime_module.has_attachment(tree)


@pytest.mark.corpus
def test_the_walk_reads_the_corpus_as_the_whole_parse_does() -> None:
    walked = differ = 0
    for path in corpus_files():
        raw = path.read_bytes()
        result = stream.walk(io.BytesIO(raw))
        if result is None:  # CR-only line ends: such a mail is parsed whole
            continue
        walked += 1
        text, _ = whole(raw)
        if fold("\n".join(result[0])) != fold(text):
            relative = str(path.relative_to(CORPUS))
            assert relative in DIFFERS_IN_TEXT, f"{relative}: the walk read other text"
            differ += 1
    assert walked > 400
    assert differ <= len(DIFFERS_IN_TEXT)


def big_mail(attachment_mb: int, text: str = "the needle is here") -> bytes:
    rng = random.Random(7)
    payload = base64.encodebytes(rng.randbytes(attachment_mb << 20))
    return (
        b"From: a@example.com\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\npreamble\r\n'
        b'--outer\r\nContent-Type: multipart/alternative; boundary="inner"\r\n\r\n'
        b"--inner\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + text.encode().replace(b" ", b"=20")
        + b"\r\n--inner\r\nContent-Type: text/html; charset=big5\r\n\r\n<p>"
        + "計劃".encode("big5")
        + b"</p>\r\n--inner--\r\n"
        b'--outer\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename="x.png"'
        b"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + payload.replace(b"\n", b"\r\n")
        + b"--outer\r\nContent-Type: message/rfc822\r\n\r\n"
        b"From: b@example.com\r\nSubject: inner\r\n\r\nforwarded words\r\n"
        b"--outer--\r\nepilogue\r\n"
    )


def test_a_big_mail_is_walked_to_the_same_text() -> None:
    raw = big_mail(2)
    texts, attachment = stream.walk(io.BytesIO(raw)) or ([], False)
    assert (fold("\n".join(texts)), attachment) == (fold(whole(raw)[0]), True)
    assert "the needle is here" in texts[0]
    assert "計劃" in texts[1]
    assert texts[2].strip() == "forwarded words"


def test_a_body_search_of_a_big_mail_does_not_hold_it(tmp_path: Path) -> None:
    raw = big_mail(16)
    day = tmp_path / "yukoh" / "_ARCHIVE_" / "20171025"
    day.mkdir(parents=True)
    (day / "BIG.eml").write_bytes(raw)
    store = FileMailStore(tmp_path)
    tracemalloc.start()
    try:
        hits = [
            s.id
            for needle in ("needle is", "計劃", "forwarded")
            for s in search(store, Criterion.from_json({"body": needle}), lambda d, t: None)
        ]
        attached = list(
            search(store, Criterion.from_json({"has-attachment": True}), lambda d, t: None)
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert hits == ["BIG", "BIG", "BIG"]
    assert [s.id for s in attached] == ["BIG"]
    # The whole parse peaks at several times the mail (over 100 MB here); the walk holds a
    # line, the text parts and one read buffer.
    assert peak < len(raw) // 4, f"peak {peak} bytes for a {len(raw)}-byte mail"


def test_cr_only_mail_is_parsed_whole() -> None:
    raw = big_mail(0).replace(b"\r\n", b"\r")
    assert stream.walk(io.BytesIO(raw)) is None


def test_a_big_mail_without_boundaries_is_one_text(tmp_path: Path) -> None:
    body = b"line of text\n" * ((stream.STREAM_FROM // 13) + 10) + b"last words\n"
    raw = b"From: a@example.com\nSubject: log\n\n" + body
    texts, attachment = stream.walk(io.BytesIO(raw)) or ([], True)
    assert (texts, attachment) == ([whole(raw)[0]], False)
    path = tmp_path / "u" / "f" / "20171025" / "LOG.eml"
    path.parent.mkdir(parents=True)
    path.write_bytes(raw)
    assert os.path.getsize(path) > stream.STREAM_FROM
    found = search(FileMailStore(tmp_path), Criterion.from_json({"body": "last words"}), print)
    assert [s.id for s in found] == ["LOG"]
