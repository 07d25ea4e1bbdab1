"""The dedup key is read from the header block alone, and is the key the full parse gave before
the intake was staged: mail stored under the old keys is still recognised as a duplicate."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsvc.errors import ParseError
from mailsvc.ingest import parse
from mailsvc.ingest.parse import MAX_MESSAGE_ID, mail_key, parse_mail
from tests.conftest import CORPUS, corpus_messages

MESSAGES = corpus_messages()


def key_from_full_parse(data: bytes) -> str:
    """How the key was made before: the parsed mail's Message-ID, else a hash of the bytes."""
    try:
        message_id = parse_mail(data).message_id
    except ParseError:
        message_id = None
    if message_id and len(message_id) <= MAX_MESSAGE_ID:
        local, _, domain = message_id.rpartition("@")
        if local and domain:
            return f"mid:{local}@{domain.lower()}"
    normalised = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return "sha256:" + hashlib.sha256(normalised).hexdigest()


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_the_header_only_key_is_the_full_parse_key(path: Path) -> None:
    data = path.read_bytes()
    assert mail_key(data) == key_from_full_parse(data)


@pytest.mark.parametrize("data", [
    b"From: a@example.com\r\nMessage-ID: <X1@Example.COM>\r\n\r\nbody\r\n",
    b"From: a@example.com\rMessage-ID: <x2@example.com>\r\rbody\r",  # CR-only line ends
    b"\xef\xbb\xbf\n\nMessage-ID:\n <x3@example.com>\nFrom: a@example.com\n\nbody\n",
    b"junk line\nmore junk\nMessage-ID: <x4@example.com>\nFrom: a@example.com\n\nbody\n",
    b"From: a@example.com\nSubject: " + b"y" * 70_000 + b"\nMessage-ID: <x5@example.com>\n\nb\n",
    b"From: a@example.com\nSubject: no id\n\nbody\n",
    b"\x00\x01\x02 not a mail",
    b"",
])
def test_odd_mail_gets_the_same_key_as_before(data: bytes) -> None:
    assert mail_key(data) == key_from_full_parse(data)


def test_line_ends_do_not_change_the_key() -> None:
    lf = b"From: a@example.com\nSubject: no id\n\nline one\nline two\n"
    crlf, cr = lf.replace(b"\n", b"\r\n"), lf.replace(b"\n", b"\r")
    assert mail_key(lf) == mail_key(crlf) == mail_key(cr)


def _full_reading(data: bytes) -> str | None:
    """The Message-ID as the full header reading finds it (the plain shortcut switched off)."""
    original = parse._plain_message_id
    parse._plain_message_id = lambda head: parse._NOT_PLAIN
    try:
        return parse._header_message_id(data)
    finally:
        parse._plain_message_id = original


def test_the_plain_header_shortcut_agrees_with_the_full_reading_on_the_corpus() -> None:
    taken = 0
    for path in corpus_messages():
        data = path.read_bytes()
        plain = parse._plain_message_id(data[:parse._HEAD_PREFIX])
        if plain is not parse._NOT_PLAIN:
            taken += 1
            assert plain == _full_reading(data), path
    assert taken > 50  # the shortcut is taken at all


HEADER_LINES = st.sampled_from([
    b"Message-ID: <a@Example.COM>", b"message-id:<b@x.example>", b"MESSAGE-ID:   <c@y>  ",
    b"Message-ID: <d@z.example>\r\n <e@z.example>", b"Message-Id: no-brackets@host",
    b"Message-ID: <>", b"Message-ID: <f@g> (comment)", b"Subject: hello", b"From: a@b.example",
    b"X-Folded: one\r\n\ttwo", b" continuation", b"Message-ID : <h@i>", b"Bad line",
    b"Subject: caf\xc3\xa9", b"Message-ID: <j@k>\x00", b"",
])


@settings(max_examples=1500, deadline=None)
@given(st.lists(HEADER_LINES, min_size=1, max_size=8), st.sampled_from([b"\r\n", b"\n"]))
def test_the_shortcut_agrees_on_generated_headers(lines: list[bytes], end: bytes) -> None:
    data = end.join(lines) + end + end + b"body" + end
    plain = parse._plain_message_id(data)
    if plain is not parse._NOT_PLAIN:
        assert plain == _full_reading(data)
