"""Outbound mail's pure parts: subjects, thread headers, the MIME message, acknowledgements,
SMTP verdicts, retry delays, Message-IDs in bounces, the relay URL."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from email import message_from_bytes, policy

import pytest

from mailsvc.linking.references import IdPatterns, RecordId
from mailsvc.outbound.compose import (
    MAX_REFERENCES,
    Outgoing,
    OutgoingAttachment,
    ack_text,
    build_message,
    is_machine_address,
    new_message_id,
    our_message_ids,
    reply_subject,
    retry_delay,
    thread_headers,
    verdict,
    with_record_id,
)
from mailsvc.relay_url import parse_relay_url

PATTERNS = IdPatterns("OPP", "TCK")
TICKET = RecordId("ticket", 12)


def test_the_record_id_is_added_only_when_missing() -> None:
    assert with_record_id("Printer broken", "TCK-12", TICKET, PATTERNS) == "Printer broken [TCK-12]"
    assert with_record_id("[TCK-12] Printer", "TCK-12", TICKET, PATTERNS) == "[TCK-12] Printer"
    assert with_record_id("About tck 12", "TCK-12", TICKET, PATTERNS) == "About tck 12"
    # Another record's ID is not this one's.
    assert with_record_id("TCK-1 again", "TCK-12", TICKET, PATTERNS) == "TCK-1 again [TCK-12]"


def test_the_default_subject_answers_the_last_mail() -> None:
    assert reply_subject(None, "AW: Re: Printer broken", "title", "TCK-12", TICKET,
                         PATTERNS) == "Re: Printer broken [TCK-12]"
    assert reply_subject(None, None, "Printer broken", "TCK-12", TICKET,
                         PATTERNS) == "Re: Printer broken [TCK-12]"
    assert reply_subject("Your quote", "x", "y", "TCK-12", TICKET,
                         PATTERNS) == "Your quote [TCK-12]"
    assert reply_subject(None, "", "", "TCK-12", TICKET, PATTERNS) == "[TCK-12]"


def test_thread_headers_answer_the_last_mail_and_keep_the_chain_short() -> None:
    assert thread_headers(None, ("a@x",)) == (None, ())
    assert thread_headers("c@x", ("a@x", "b@x")) == ("c@x", ("a@x", "b@x", "c@x"))
    long = tuple(f"{n}@x" for n in range(40))
    _, refs = thread_headers("last@x", long)
    assert len(refs) == MAX_REFERENCES and refs[0] == "0@x" and refs[-1] == "last@x"


def _outgoing(**changes: object) -> Outgoing:
    values: dict[str, object] = {
        "from_address": "support@crm.example", "from_name": "Anna Müller",
        "to": ("jane@example.org",), "cc": ("boss@example.org",),
        "subject": "Re: Drucker kaputt [TCK-12]", "text": "Grüße\n", "html": "<p>Grüße</p>",
        "message_id": new_message_id("abc123", "TCK-12", "CRM.example"),
        "date": datetime(2026, 11, 30, 12, 0, tzinfo=UTC), "in_reply_to": "q@example.org",
        "references": ("p@example.org", "q@example.org"),
        "attachments": (OutgoingAttachment("offer.pdf", "application/pdf", b"%PDF-1.4"),),
    }
    values.update(changes)
    return Outgoing(**values)  # type: ignore[arg-type]


def test_the_message_carries_our_id_the_thread_and_the_parts() -> None:
    raw = build_message(_outgoing()).as_bytes()
    assert b"\r\n" in raw and b"\n\n" not in raw.replace(b"\r\n", b"")
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Message-ID"] == "<abc123.tck-12@crm.example>"
    assert parsed["In-Reply-To"] == "<q@example.org>"
    assert parsed["References"] == "<p@example.org> <q@example.org>"
    assert str(parsed["Subject"]) == "Re: Drucker kaputt [TCK-12]"
    assert parsed["From"].addresses[0].display_name == "Anna Müller"
    assert parsed["From"].addresses[0].addr_spec == "support@crm.example"
    assert parsed["Cc"] == "boss@example.org"
    assert parsed["Auto-Submitted"] is None
    body = parsed.get_body(("plain",))
    assert body is not None and body.get_content().strip() == "Grüße"
    html = parsed.get_body(("html",))
    assert html is not None and "Grüße" in html.get_content()
    attachments = list(parsed.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["offer.pdf"]
    assert attachments[0].get_content() == b"%PDF-1.4"


def test_an_automatic_mail_says_so() -> None:
    parsed = message_from_bytes(
        build_message(_outgoing(auto_submitted="auto-replied", html=None, attachments=()))
        .as_bytes(), policy=policy.default)
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["X-Auto-Response-Suppress"] == "All"
    assert parsed.get_content_type() == "text/plain"


@pytest.mark.parametrize("address", [
    "noreply@shop.example", "no-reply@shop.example", "do_not_reply@x.example",
    "MAILER-DAEMON@mx.example", "postmaster@x.example", "bounces+123@lists.example",
    "notifications@github.example", "", "nobody",
])
def test_machine_addresses_are_recognised(address: str) -> None:
    assert is_machine_address(address)


@pytest.mark.parametrize("address", ["jane@example.org", "noreen@example.org",
                                     "reply-team@example.org", "daemonic.person@x.example"])
def test_people_are_not_machines(address: str) -> None:
    assert not is_machine_address(address)


def test_the_acknowledgement_in_german_and_english_names_the_ticket() -> None:
    subject, body = ack_text("de+en", "TCK-7", "Drucker kaputt", "Jane Doe")
    assert subject.startswith("[TCK-7] Eingangsbestätigung / Request received")
    assert "Drucker kaputt" in subject
    assert "Guten Tag Jane Doe" in body and "Hello Jane Doe" in body
    assert body.count("TCK-7") >= 4
    subject, body = ack_text("en", "TCK-7", "", None)
    assert subject == "[TCK-7] Request received" and "Hello," in body
    assert "Guten Tag" not in body


def test_a_template_replaces_the_text_and_keeps_the_id_in_the_subject() -> None:
    template = "Subject: Danke für {subject}\n\nHallo {name}, Nummer {ticket}. {unknown}\n"
    subject, body = ack_text("de", "TCK-7", "Frage", "Jane", template)
    assert subject == "[TCK-7] Danke für Frage"
    assert body == "Hallo Jane, Nummer TCK-7. {unknown}\n"


@pytest.mark.parametrize(("code", "expected"), [
    (250, "sent"), (550, "failed"), (554, "failed"), (421, "deferred"), (451, "deferred"),
    (452, "deferred"), (999, "deferred"),
])
def test_smtp_codes_decide_the_delivery(code: int, expected: str) -> None:
    assert verdict(code) == expected


def test_retries_start_within_a_minute_and_grow_to_an_hour() -> None:
    delays = [retry_delay(n, 30) for n in range(1, 12)]
    assert delays[0] == 30 and delays[0] <= 60
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert delays[-1] == 3600


def test_a_bounce_names_our_message_id_but_not_the_threads_earlier_mail() -> None:
    bounce = (
        b"Message-ID: <dsn-1@crm.example>\r\nSubject: Undelivered\r\n\r\n"
        b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        b"Message-ID: <abc.tck-3@CRM.example>\r\n"
        b"References: <earlier.tck-3@crm.example>\r\n"
    )
    assert our_message_ids(bounce, "crm.example", exclude="dsn-1@crm.example") == (
        "abc.tck-3@crm.example",)
    assert our_message_ids(bounce, "other.example") == ()
    assert our_message_ids(b"", "crm.example", also=("x@crm.example", "y@else.example")) == (
        "x@crm.example",)


def test_relay_urls() -> None:
    plain = parse_relay_url("smtp://relay.example")
    assert (plain.host, plain.port, plain.implicit_tls, plain.starttls) == (
        "relay.example", 25, False, "none")
    submission = parse_relay_url("smtp://us%40er:p%3Ass@relay.example:587?starttls=required")
    assert submission.port == 587 and submission.starttls == "required"
    assert (submission.username, submission.password) == ("us@er", "p:ss")
    assert "p:ss" not in submission.describe()
    tls = parse_relay_url("smtps://relay.example")
    assert tls.implicit_tls and tls.port == 465


@pytest.mark.parametrize(("url", "words"), [
    ("http://relay.example", "smtp://"), ("smtp://", "no host"),
    ("smtp://relay.example:99999", "port"), ("smtp://relay.example?starttls=maybe", "starttls"),
    ("smtp://relay.example?tls=1", "unknown"), ("smtps://relay.example?starttls=required", "TLS"),
])
def test_wrong_relay_urls_say_what_is_wrong(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_relay_url(url)


def test_a_wrong_outbound_url_is_a_configuration_error_naming_the_setting() -> None:
    from mailsvc.config import load_settings
    from mailsvc.errors import ConfigError

    with pytest.raises(ConfigError, match=r"MAILSVC_OUTBOUND_SMTP_URL: .*starttls"):
        load_settings(_env_file=None, outbound_smtp_url="smtp://relay.example?starttls=yes")
    settings = load_settings(_env_file=None, outbound_smtp_url="smtp://relay.example",
                             support_address="help@Support.Example")
    assert settings.ticket_ack_enabled and settings.outbound_message_id_domain == "support.example"
    assert not load_settings(_env_file=None, ticket_ack=True).ticket_ack_enabled
    assert not load_settings(_env_file=None, outbound_smtp_url="smtp://relay.example",
                             ticket_ack=False).ticket_ack_enabled
