"""Header decoding: encoded words, raw 8-bit bytes, charset labels, dates, header blocks."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.mailstore.charsets import codecs_for, decode_declared, decode_unknown
from tasks.mailstore.decode import decode_address_header, decode_header, parse_date
from tasks.mailstore.headers import body_offset, parse_headers, read_header_block


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("=?utf-8?B?5Lit5paH?=", "中文"),
        ("=?iso-8859-1?Q?caf=E9_cr=E8me?=", "café crème"),
        # adjacent words join without the whitespace between them
        ("=?utf-8?Q?a?= =?utf-8?Q?b?=\r\n =?utf-8?Q?c?=", "abc"),
        ("x =?utf-8?Q?a?= y", "x a y"),
        # a multi-byte character split over two words
        ("=?utf-8?B?5Lit?= =?utf-8?B?5paH?=", "中文"),
        ("=?gb2312?B?1tA=?= =?gb2312?B?zsQ=?=", "中文"),
        # unknown charset and bad base64 padding
        ("=?NONE?B?VEVTVA=?=", "TEST"),
        ("=?X-UNKNOWN?Q?plain?=", "plain"),
        # missing ?= at the end
        ("=?utf-8?B?5Lit5paH", "中文"),
        ("=?utf-8?Q?caf=C3=A9 bar", "café bar"),
        # labels Python lacks
        ("=?windows-874?B?4Mu12LfT?=", "เหตุทำ"),
        ("=?ks_c_5601-1987?B?wMy8urz2?=", "이성수"),
        ("=?x-sjis?B?g2WDWINn?=", "テスト"),
        ("=?unicode?B?RABlAHMAaQBnAG4A?=", "Design"),
        ("=?utf-16?B?/v8AVABlAHMAdA==?=", "Test"),
        ("=?utf-7?Q?+ZeVnLIqe-?=", "日本語"),
        ("=?iso-8859-1*sv?Q?D=F6rte?=", "Dörte"),
        ("=?iso-8859-8?q?=FA=E9=F8=E1=F2?=", "עברית"),
        ("plain text, no words", "plain text, no words"),
        ("", ""),
    ],
)
def test_decode_header_words(raw: str, text: str) -> None:
    assert decode_header(raw) == text


def test_encoded_words_inside_quoted_strings() -> None:
    raw = b'Re: Test: "=?UTF-8?B?Iua8ouWtlyI=?=" and "=?euc-kr?B?x9GxuQ==?="'
    assert decode_header(raw) == 'Re: Test: ""漢字"" and "한국"'
    assert decode_address_header(b'"=?euc-kr?B?x9GxuQ==?=" <k@example.kr>') == "한국 <k@example.kr>"


def test_address_header_quotes_kept_only_around_commas() -> None:
    raw = b'"Doe, John" <j@example.com>, "A \\"B\\"" <c@example.com>'
    assert decode_address_header(raw) == '"Doe, John" <j@example.com>, A "B" <c@example.com>'


@pytest.mark.parametrize(
    ("raw", "hints", "text"),
    [
        ("Café".encode(), (), "Café"),
        ("中文".encode("gb2312"), ("gb2312",), "中文"),
        ("한국어".encode("euc-kr"), ("euc-kr",), "한국어"),
        ("Привет".encode("koi8-r"), ("koi8-r",), "Привет"),
        ("Formação e Verão".encode("cp1252"), (), "Formação e Verão"),
        ("日本語の件名".encode("iso-2022-jp"), (), "日本語の件名"),
        # UTF-8 wins over a declared charset it happens to fit
        ("Ünïcödé".encode(), ("windows-1251",), "Ünïcödé"),
        # Big5 read as Latin-1 and saved as UTF-8, on a message that declares Big5
        ("大家說英語".encode("big5").decode("latin-1").encode(), ("big5",), "大家說英語"),
    ],
)
def test_raw_8bit_header_bytes(raw: bytes, hints: tuple[str, ...], text: str) -> None:
    assert decode_header(b"Subject " + raw, hints) == "Subject " + text


def test_undecodable_bytes_are_kept_losslessly() -> None:
    raw = bytes(range(0x80, 0x100))
    text = decode_unknown(raw)
    assert len(text) == len(raw)
    assert "\ufffd" not in text


@pytest.mark.parametrize(
    ("label", "codec"),
    [
        ("windows-874", "cp874"),
        ("ks_c_5601-1987", "cp949"),
        ("gb2312", "gb18030"),
        ("GB2312", "gb18030"),
        ("x-sjis", "cp932"),
        ("unicode", "utf-16"),
        ('"utf-8"', "utf-8"),
        ("cp-1252", "cp1252"),
    ],
)
def test_charset_aliases(label: str, codec: str) -> None:
    assert codecs_for(label)[0] == codec


@pytest.mark.parametrize("label", ["NONE", "X-UNKNOWN", "", "base64", "rot13", "idna", "no-such"])
def test_labels_that_name_no_charset(label: str) -> None:
    assert codecs_for(label) == ()


def test_declared_charset_falls_back_when_it_lies() -> None:
    assert decode_declared("naïve".encode("latin-1"), "utf-8") == "naïve"
    assert decode_declared("中文".encode("utf-16-le"), "unicode") == "中文"
    assert decode_declared("中文".encode("utf-16-be"), "utf-16") == "中文"
    # a 7-bit charset label on text a tool converted to UTF-8
    assert decode_declared("日本語です".encode(), "iso-2022-jp") == "日本語です"
    # Big5 read as Latin-1 and saved as UTF-8, still labelled Big5
    double = "軟體帝國更新迅速 大家說英語".encode("big5").decode("latin-1").encode()
    assert decode_declared(double, "big5") == "軟體帝國更新迅速 大家說英語"
    # Western text in UTF-8 under a Big5 label is left alone
    assert decode_declared("Crème brûlée, José".encode(), "big5") == "Crème brûlée, José"


@pytest.mark.parametrize(
    ("raw", "iso"),
    [
        ("Wed, 25 Oct 2017 10:30:00 +0800", "2017-10-25T02:30:00Z"),
        ("Fri, 23 Aug 2002 2:32:53 -0400", "2002-08-23T06:32:53Z"),
        ("Tue, 19 Jun 2001 01:16:04 +0800 (CST)", "2001-06-18T17:16:04Z"),
        ("25 Oct 17 10:30 GMT", "2017-10-25T10:30:00Z"),
        ("Wed, 25 Oct 2017 10:30:00", "2017-10-25T10:30:00Z"),
        ("2017-10-25T10:30:00+02:00", "2017-10-25T08:30:00Z"),
        ("not a date", ""),
        ("Wed, 32 Oct 2017 10:30:00 +0000", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_parse_date(raw: str | None, iso: str) -> None:
    assert parse_date(raw) == iso


@pytest.mark.parametrize("newline", [b"\r\n", b"\n", b"\r"])
def test_header_block_with_any_line_ending(newline: bytes) -> None:
    lines = [b"Subject: one", b"\ttwo", b"From: a@example.com", b"", b"body", b""]
    raw = newline.join(lines)
    end = body_offset(raw)
    assert end is not None
    assert raw[end:] == b"body" + newline
    headers = parse_headers(raw[:end])
    assert headers.get("subject") == b"one two"
    assert headers.get("FROM") == b"a@example.com"


def test_header_block_skips_envelope_and_junk_lines() -> None:
    raw = b"\xef\xbb\xbfFrom a@b Mon Jan  1 00:00:00 2001\nHELO x\n cont\nSubject: s\n\nbody"
    headers = parse_headers(raw)
    assert [name for name, _ in headers.fields] == ["subject"]


def test_no_blank_line_and_leading_blank_line() -> None:
    assert body_offset(b"Subject: only headers") is None
    assert body_offset(b"\nbody") == 1
    assert body_offset(b"\r\nbody") == 2


def test_read_header_block_stops_at_blank_line_across_chunks() -> None:
    head = b"X-Pad: " + b"a" * (64 * 1024 - 9) + b"\r\n\r\n"
    stream = io.BytesIO(head + b"B" * 500_000)
    assert read_header_block(stream) == head
    assert stream.tell() < len(head) + 64 * 1024


def test_read_header_block_is_capped() -> None:
    stream = io.BytesIO(b"X-Long: " + b"a" * 3_000_000)
    assert len(read_header_block(stream, limit=100_000)) == 100_000


@pytest.mark.timeout(30)  # a quadratic decoder would take minutes: fail, do not hang
def test_huge_folded_header_decodes_in_linear_time() -> None:
    words = b"\r\n\t".join([b"=?utf-8?Q?date=3E2017-08-20T10:08:28.617=3C/pr?="] * 2710)
    block = b'To: "test" <test@test.com>,\r\n\t' + words + b"\r\n\r\n"
    text = decode_address_header(parse_headers(block).get("to"))
    assert text.startswith("test <test@test.com>, date>2017-08-20T10:08:28.617</prdate>")
    assert text.count("</pr") == 2710


@settings(database=None, max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_decoding_arbitrary_bytes_never_raises(raw: bytes) -> None:
    # and always gives text that can be written as UTF-8 JSON
    assert isinstance(decode_header(raw).encode("utf-8"), bytes)
    assert isinstance(decode_address_header(raw).encode("utf-8"), bytes)
    assert isinstance(parse_date(raw), str)
    assert isinstance(parse_headers(raw).fields, tuple)


_WORDISH = st.lists(
    st.one_of(
        st.sampled_from(["=?", "?=", "?B?", "?Q?", "?b?", "utf-8", "NONE", "utf-16", "=", "_"]),
        st.sampled_from(["iso-2022-jp", "x-sjis", "unicode", "utf-7", "big5", '"', " ", "\t"]),
        st.text(max_size=8),
    ),
    max_size=30,
).map("".join)


@settings(database=None, max_examples=300, deadline=None)
@given(_WORDISH, st.lists(st.sampled_from(["utf-8", "big5", "utf-16", "junk", "NONE"])))
def test_decoding_encoded_word_lookalikes_never_raises(text: str, hints: list[str]) -> None:
    assert isinstance(decode_header(text, hints).encode("utf-8"), bytes)
    assert isinstance(decode_header(text.encode("utf-8", "surrogatepass"), hints), str)
    assert isinstance(decode_address_header(text, hints).encode("utf-8"), bytes)
