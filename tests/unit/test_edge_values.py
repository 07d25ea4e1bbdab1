"""Pure pieces of the hostile-input defences: the DATA reader, MIME limits, value cleaning."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsvc.crmstore.models import Email
from mailsvc.ingest.parse import MimeLimitExceeded, ParseLimits, mime_shape, parse_mail
from mailsvc.ingest.sanitize import bad_address, clean_json, clean_line, clean_text, fit_row
from mailsvc.ingest.smtpdata import DataLimits, DataReader

LIMITS = DataLimits(max_line_bytes=100, max_header_count=5, max_header_bytes=300)


def read(*lines: bytes, max_size: int | None = None) -> DataReader:
    reader = DataReader(dataclasses.replace(LIMITS, max_size=max_size))
    for line in lines:
        assert not reader.done, "data after the end marker"
        reader.feed(line)
    return reader


def test_crlf_dot_crlf_ends_and_dots_are_unstuffed() -> None:
    reader = read(b"Subject: x\r\n", b"\r\n", b"..dot\r\n", b".\r\n")
    assert reader.done and reader.problem is None
    assert reader.content() == b"Subject: x\r\n\r\n.dot\r\n"


def test_bare_lf_lines_are_lines() -> None:
    lines = [b"Subject: x\n", b"\n"] + [b"y" * 80 + b"\n"] * 50
    reader = read(*lines, b"\r\n", b".\r\n")
    assert reader.done and reader.problem is None
    assert len(reader.content()) == sum(map(len, lines)) + 2


def test_a_dot_line_after_a_bare_lf_is_data() -> None:
    reader = read(b"Subject: x\r\n", b"\r\n", b"a\n", b".\r\n")
    assert not reader.done
    reader.feed(b".\r\n")
    assert reader.done and reader.content() == b"Subject: x\r\n\r\na\n\r\n"


def test_the_tail_of_an_overlong_line_never_ends_the_data() -> None:
    reader = read(b"x" * 200, b".\r\n")
    assert not reader.done and reader.problem is not None
    assert reader.problem.startswith("500 5.5.2")
    reader.feed(b".\r\n")
    assert reader.done and reader.content() == b""


@pytest.mark.parametrize("lines, reply", [
    ([b"H%d: v\r\n" % i for i in range(6)], "552 5.3.4 Too many header fields"),
    ([b"H: v\r\n"] + [b" folded\r\n"] * 60, "552 5.3.4 Header section larger"),
    ([b"S: v\r\n", b"\r\n"] + [b"z" * 50 + b"\r\n"] * 30, "552 5.3.4 Message too big"),
])
def test_limits_name_themselves(lines: list[bytes], reply: str) -> None:
    reader = read(*lines, b".\r\n", max_size=1000)
    assert reader.done and reader.problem is not None and reader.problem.startswith(reply)


def test_headers_count_only_in_the_header_section() -> None:
    reader = read(b"S: v\r\n", b"\r\n", *[b"Not-A-Header: %d\r\n" % i for i in range(20)],
                  b".\r\n")
    assert reader.problem is None


# ---------------------------------------------------------------- MIME limits


def nested(depth: int) -> bytes:
    data = b"From: a@b.example\nSubject: x\nMIME-Version: 1.0\n"
    for i in range(depth):
        data += b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i)
    data += b"Content-Type: text/plain\n\nhello\n"
    return data + b"".join(b"--b%d--\n" % i for i in reversed(range(depth)))


def test_mime_shape_counts_depth_and_parts() -> None:
    assert mime_shape(b"From: a@b.example\n\nhello\n") == (0, 0)
    assert mime_shape(nested(5)) == (5, 5)
    siblings = b'Content-Type: multipart/mixed; boundary="S"\n\n' + b"--S\n\nx\n" * 7 + b"--S--\n"
    assert mime_shape(siblings) == (1, 7)
    forwarded = b"From: a@b.example\n" + b"Content-Type: message/rfc822\n\nFrom: x@y.example\n" * 4
    assert mime_shape(forwarded)[0] == 4


def test_parse_limits() -> None:
    assert parse_mail(nested(5), ParseLimits(max_depth=5)).text == "hello"
    with pytest.raises(MimeLimitExceeded, match="nested 6 deep"):
        parse_mail(nested(6), ParseLimits(max_depth=5))
    with pytest.raises(MimeLimitExceeded, match="MIME parts"):
        parse_mail(nested(6), ParseLimits(max_parts=3))
    with pytest.raises(MimeLimitExceeded, match="decoded content"):
        parse_mail(b"From: a@b.example\n\n" + b"x" * 5000, ParseLimits(max_decoded_bytes=4096))


# ---------------------------------------------------------------- values


def test_clean_text_and_lines() -> None:
    assert clean_text("a\x00b\x01c\td\r\ne\x7f\udcff") == "abc\td\r\ne\ufffd"
    assert clean_line("Carla\r\n\tCustomer\x00") == "Carla Customer"
    assert clean_json({"a\x00": ["x\udc80", 1, None]}) == {"a": ["x\ufffd", 1, None]}


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=60))
def test_ascii_text_loses_exactly_its_control_characters(text: str) -> None:
    expected = "".join(c for c in text if c in "\t\n\r" or (c >= " " and c != "\x7f"))
    assert clean_text(text) == expected


def test_rows_are_fitted_to_the_model_columns() -> None:
    row = fit_row(Email.__table__, {
        "from_name": "N" * 400, "subject": "S\x00" * 10_000, "dedup_key": "k\x00",
        "headers": [["X\x00", "v\udcff"]], "raw": b"\x00", "not_a_column": "\x00",
    }, keep=frozenset({"dedup_key"}))
    assert row["from_name"] == "N" * 300
    assert row["subject"] == "S" * 10_000
    assert row["dedup_key"] == "k\x00" and row["raw"] == b"\x00"
    assert row["headers"] == [["X", "v\ufffd"]]
    assert row["not_a_column"] == "\x00"


@pytest.mark.parametrize("address, bad", [
    ("anna@mailsvc.example", False),
    ("jörg@müller.example", False),
    ("a\x00b@x.example", True),
    ("a\udcffb@x.example", True),
    ("a\rb@x.example", True),
])
def test_bad_envelope_addresses(address: str, bad: bool) -> None:
    assert bad_address(address) is bad
