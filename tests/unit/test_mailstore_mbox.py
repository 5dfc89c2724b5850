"""Splitting mbox files: which `From ` lines separate messages, and exact byte ranges."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.mailstore.mbox import split_mbox


def _split(data: bytes) -> list[bytes]:
    return [data[offset : offset + length] for offset, length in split_mbox(io.BytesIO(data))]


def _message(subject: str, body: bytes = b"Hello.\n", envelope: bytes = b"") -> bytes:
    envelope = envelope or b"From sender@example.com Mon Jan  1 10:00:00 2001\n"
    return envelope + f"Subject: {subject}\n\n".encode() + body


def test_messages_tile_the_file() -> None:
    one, two, three = _message("one") + b"\n", _message("two") + b"\n", _message("three")
    assert _split(one + two + three) == [one, two, three]


def test_quoted_from_lines_are_kept_as_stored() -> None:
    one = _message("one", b"Hi\n\n>From here on\n\n") + b"\n"
    two = _message("two")
    assert _split(one + two) == [one, two]


def test_unescaped_from_line_in_a_body_is_not_a_separator() -> None:
    one = _message("one", b"My favourite film:\n\nFrom Russia with love\n\nAnd yours?\n\n")
    two = _message("two", b"From Russia with love\nYear: 1963\n")
    assert _split(one + two) == [one, two]


def test_bom_and_netscape_separators_without_blank_lines() -> None:
    one = _message("one", envelope=b"From -\n")
    two = _message("two", envelope=b"From - Mon Jun  3 12:50:27 1996\n")
    data = b"\xef\xbb\xbf" + one + two
    assert _split(data) == [one, two]


def test_netscape_line_in_a_body_needs_a_header_after_it() -> None:
    one = _message("one", b"quoted:\nFrom - nobody\nsaid this\n", envelope=b"From -\n")
    assert _split(one) == [one]


def test_crlf_mbox() -> None:
    one = _message("one").replace(b"\n", b"\r\n") + b"\r\n"
    two = _message("two").replace(b"\n", b"\r\n")
    assert _split(one + two) == [one, two]


def test_honest_content_length_protects_from_lines_in_the_body() -> None:
    body = b"First line.\n\nFrom someone@example.com Mon Jan  1 10:00:00 2001\nlooks like one\n"
    one = (
        b"From a@example.com Mon Jan  1 10:00:00 2001\n"
        + f"Content-Length: {len(body)}\n".encode()
        + b"Subject: one\n\n"
        + body
        + b"\n"
    )
    two = _message("two")
    assert _split(one + two) == [one, two]


def test_dishonest_content_length_is_ignored() -> None:
    one = _message("one", b"Body.\n\n").replace(b"Subject", b"Content-Length: 3\nSubject")
    two = _message("two")
    assert _split(one + two) == [one, two]


def test_content_length_to_end_of_file() -> None:
    body = b"\nFrom x@example.com Mon Jan  1 10:00:00 2001\nnot a message\n"
    one = b"From -\nContent-Length: " + str(len(body)).encode() + b"\n\n" + body
    assert _split(one) == [one]


def test_text_before_the_first_separator_is_kept() -> None:
    stray = b"stray text\n\n"
    one = _message("one")
    assert _split(stray + one) == [stray, one]
    assert _split(b"\n\n" + one) == [one]


def test_a_file_without_separators_is_one_message() -> None:
    data = b"Subject: lonely\n\nno envelope\n"
    assert _split(data) == [data]
    assert _split(b"") == []


def test_long_lines_are_read_in_pieces() -> None:
    long_body = b"x" * 200_000 + b"From nobody@example.com Mon Jan  1 10:00:00 2001\n\n"
    one = _message("one", long_body)
    two = _message("two")
    assert _split(one + two) == [one, two]


@settings(database=None, max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [b"From a@b Mon Jan  1 10:00:00 2001\n", b"From -\n", b"\n", b"\r\n", b"Subject: x\n"]
            + [b"Content-Length: 5\n", b"Content-Length: 0\n", b">From x\n", b"body\n", b"\xef"]
        ),
        max_size=40,
    ).map(b"".join)
)
def test_any_input_splits_into_a_tiling(data: bytes) -> None:
    ranges = list(split_mbox(io.BytesIO(data)))
    if not ranges:
        assert not data.strip()
        return
    position = ranges[0][0]
    assert not data[:position].strip()
    for offset, length in ranges:
        assert offset == position
        assert length > 0
        position += length
    assert position == len(data)
