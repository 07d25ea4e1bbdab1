"""Machine mail: auto-replies, bounces, list mail and loops, from headers and corpus mail."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsvc.ingest.classify import classify
from mailsvc.ingest.parse import parse_mail
from mailsvc.mail import Envelope
from tests.conftest import CORPUS


def kind_of(headers: str, body: str = "Hi\n", **kw: object) -> tuple[str, str | None]:
    data = f"From: someone@x.example\nTo: sales@crm.example\n{headers}\n\n{body}".encode()
    kind = classify(parse_mail(data), **kw)  # type: ignore[arg-type]
    return kind.name, kind.reason


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ("Subject: Offer", ("human", None)),
        ("Subject: x\nAuto-Submitted: no", ("human", None)),
        (
            "Subject: x\nAuto-Submitted: auto-replied",
            ("auto_reply", "Auto-Submitted: auto-replied"),
        ),
        (
            "Subject: x\nAuto-Submitted: auto-generated",
            ("auto_reply", "Auto-Submitted: auto-generated"),
        ),
        ("Subject: x\nX-Autoreply: yes", ("auto_reply", "X-Autoreply header")),
        ("Subject: x\nX-Autorespond: yes", ("auto_reply", "X-Autorespond header")),
        ("Subject: x\nPrecedence: auto_reply", ("auto_reply", "Precedence: auto_reply")),
        ("Subject: x\nPrecedence: junk", ("auto_reply", "Precedence: junk")),
        ("Subject: x\nPrecedence: bulk", ("auto_reply", "Precedence: bulk")),
        ("Subject: x\nX-Auto-Response-Suppress: All", ("auto_reply", "X-Auto-Response-Suppress")),
        (
            "Subject: x\nX-Auto-Response-Suppress: DR, OOF",
            ("auto_reply", "X-Auto-Response-Suppress"),
        ),
        ("Subject: Abwesenheitsnotiz: Angebot", ("auto_reply", "subject")),
        ("Subject: Automatische Antwort: Angebot", ("auto_reply", "subject")),
        ("Subject: Out of Office: Offer", ("auto_reply", "subject")),
        ("Subject: AW: Autoreply: Offer", ("auto_reply", "subject")),
        ("Subject: Our office move", ("human", None)),
        ("Subject: x\nList-Id: <users.lists.example>", ("list", "List-Id header")),
        ("Subject: x\nList-Unsubscribe: <mailto:u@x>", ("list", "List-Unsubscribe header")),
        ("Subject: x\nPrecedence: list", ("list", "Precedence: list")),
        ("Subject: x\nPrecedence: bulk\nList-Id: <l.x>", ("list", "List-Id header")),
        ("Subject: x\nX-Mailsvc-Loop: crm.example", ("loop", "X-Mailsvc-Loop header")),
        (
            "Subject: Undelivered Mail Returned to Sender\nReturn-Path: <>",
            ("bounce", "bounce from someone@x.example"),
        ),
    ],
)
def test_headers(headers: str, expected: tuple[str, str | None]) -> None:
    assert kind_of(headers) == expected


def test_mailer_daemon_sender_is_a_bounce() -> None:
    data = b"From: MAILER-DAEMON@mx.example\nTo: a@b.example\nSubject: failure notice\n\nx\n"
    assert classify(parse_mail(data)).name == "bounce"


def test_null_envelope_sender_with_bounce_subject_is_a_bounce() -> None:
    data = b"From: Mail System <system@mx.example>\nSubject: Unzustellbar: Angebot\n\nx\n"
    assert classify(parse_mail(data), Envelope("", ("a@b",), "sales")).name == "bounce"
    assert classify(parse_mail(data), Envelope("x@y.example", ("a@b",), "sales")).name == "human"


def test_received_count_over_the_limit_is_a_loop() -> None:
    received = "\n".join("Received: from a by b" for _ in range(6))
    assert kind_of(f"Subject: x\n{received}", max_received=5) == ("loop", "6 Received headers")
    assert kind_of(f"Subject: x\n{received}", max_received=6)[0] == "human"


# Real machine mail from the corpus (tests/corpus/MANIFEST.md): name, kind, bounced recipients.
CORPUS_CASES = [
    ("sisimai-set-of-emails/bsd/rfc3834-01.eml", "auto_reply", ()),
    ("sisimai-set-of-emails/bsd/rfc3834-03.eml", "auto_reply", ()),
    ("sisimai-set-of-emails/bsd/rfc3834-05.eml", "auto_reply", ()),
    (
        "sisimai-set-of-emails/bsd/lhost-postfix-01.eml",
        "bounce",
        ("r@p351355.pool.example.ne.jp", "kijitora@example.org"),
    ),
    ("sisimai-set-of-emails/bsd/rfc3464-03.eml", "bounce", ("kijitora@example.com",)),
    ("sisimai-set-of-emails/bsd/lhost-exim-01.eml", "bounce", ()),
    (
        "enmime/dsn/testdata/multi_recipient_dsn.raw",
        "bounce",
        ("arathib@vnet.ibm.com", "wsnell@sdcc13.ucsd.edu"),
    ),
    ("enmime/dsn/testdata/delayed_dsn.raw", "bounce", ()),
    ("mimekit/messages/delivery-status.txt", "bounce", ("newsletter-request@imusic.com",)),
    ("mimekit/messages/disposition-notification.txt", "auto_reply", ()),
    ("mimekit/openpgp/[Announce] GnuPG 2.1.20 released.eml", "list", ()),
    ("bestpractical-rt/emails/8859-15-message-series/dir", "list", ()),
    ("zammad/mail089.box", "auto_reply", ()),
    ("sisimai-set-of-emails/not/is-not-bounce-01.eml", "human", ()),
    ("mailgun-talon/standard_replies/iphone.eml", "human", ()),
]


@pytest.mark.parametrize(("name", "kind", "bounced"), CORPUS_CASES)
def test_corpus_mail(name: str, kind: str, bounced: tuple[str, ...]) -> None:
    path: Path = CORPUS / name
    result = classify(parse_mail(path.read_bytes()))
    assert result.name == kind
    assert result.bounced == bounced


def test_the_second_pass_names_a_non_standard_bounce_recipient() -> None:
    """Exim's plain-text bounce has no DSN part; GNU Mailman's detectors read it."""
    data = (CORPUS / "sisimai-set-of-emails/bsd/lhost-exim-01.eml").read_bytes()
    assert classify(parse_mail(data)).bounced == ()
    assert classify(parse_mail(data), raw=data).bounced == ("kijitora@example.ed.jp",)


def test_a_delayed_delivery_names_no_failed_recipient_in_either_pass() -> None:
    data = (CORPUS / "enmime/dsn/testdata/delayed_dsn.raw").read_bytes()
    assert classify(parse_mail(data), raw=data).bounced == ()


def test_most_corpus_bounces_name_their_failed_recipient() -> None:
    from mailsvc.errors import ParseError
    from tests.conftest import corpus_messages

    named = total = 0
    for path in corpus_messages():
        data = path.read_bytes()
        try:
            mail = parse_mail(data)
        except ParseError:
            continue
        kind = classify(mail, raw=data)
        if kind.name == "bounce":
            total += 1
            named += bool(kind.bounced)
    assert total >= 50
    assert named >= 40, f"{named} of {total} bounces name a failed recipient"
