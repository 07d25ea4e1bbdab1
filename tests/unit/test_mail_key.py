"""The dedup key is read from the header block alone, and is the key the full parse gave before
the intake was staged: mail stored under the old keys is still recognised as a duplicate."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mailsvc.errors import ParseError
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
