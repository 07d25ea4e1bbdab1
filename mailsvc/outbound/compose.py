"""Outgoing mail, composed without I/O: Message-IDs, subjects, thread headers, the MIME message,
the acknowledgement's text, and what an SMTP reply means for delivery."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Literal

from mailsvc.linking.references import IdPatterns, RecordId, find_record_ids, strip_reply_prefixes

MAX_REFERENCES = 20
"""References kept from the thread (the first and the newest), as mail clients trim them."""

Verdict = Literal["sent", "deferred", "failed"]


@dataclass(frozen=True, slots=True)
class OutgoingAttachment:
    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Everything a mail we send is made of; ``message_id`` without angle brackets."""

    from_address: str
    from_name: str | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str
    text: str
    html: str | None
    message_id: str
    date: datetime
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    # RFC 3834: "auto-replied" on the acknowledgement; never on mail a person wrote.
    auto_submitted: str | None = None
    attachments: tuple[OutgoingAttachment, ...] = ()


def new_message_id(token: str, label: str, domain: str) -> str:
    """Our Message-ID: a random token and the record's label, under our own domain."""
    return f"{token}.{label.lower()}@{domain.lower()}"


def with_record_id(subject: str, label: str, record: RecordId, patterns: IdPatterns) -> str:
    """``subject`` with ``[TCK-12]`` appended unless the record's ID is in it already."""
    subject = " ".join(subject.split())
    if record in find_record_ids(subject, patterns):
        return subject
    return f"{subject} [{label}]" if subject else f"[{label}]"


def reply_subject(
    given: str | None, last_subject: str | None, fallback: str, label: str, record: RecordId,
    patterns: IdPatterns,
) -> str:
    """The subject asked for, else "Re: " and the record's last mail's subject (else its
    title); the record's ID is added in brackets when missing, so the answer finds it again."""
    if given and given.strip():
        return with_record_id(given, label, record, patterns)
    base = strip_reply_prefixes(last_subject or "") or strip_reply_prefixes(fallback)
    return with_record_id(f"Re: {base}" if base else "", label, record, patterns)


def thread_headers(
    last_message_id: str | None, last_references: tuple[str, ...]
) -> tuple[str | None, tuple[str, ...]]:
    """In-Reply-To and References answering the mail ``last_message_id`` (RFC 5322 3.6.4)."""
    if not last_message_id:
        return None, ()
    chain = tuple(dict.fromkeys((*last_references, last_message_id)))
    if len(chain) > MAX_REFERENCES:
        chain = (chain[0], *chain[-(MAX_REFERENCES - 1):])
    return last_message_id, chain


def build_message(mail: Outgoing) -> EmailMessage:
    """The MIME message (stdlib ``email``): text, optional HTML alternative, attachments."""
    message = EmailMessage(policy=SMTP)
    local, _, domain = mail.from_address.rpartition("@")
    message["From"] = HeaderAddress(display_name=mail.from_name or "", username=local,
                                    domain=domain)
    message["To"] = ", ".join(mail.to)
    if mail.cc:
        message["Cc"] = ", ".join(mail.cc)
    message["Subject"] = mail.subject
    message["Date"] = format_datetime(mail.date)
    message["Message-ID"] = f"<{mail.message_id}>"
    if mail.in_reply_to:
        message["In-Reply-To"] = f"<{mail.in_reply_to}>"
    if mail.references:
        message["References"] = " ".join(f"<{ref}>" for ref in mail.references)
    if mail.auto_submitted:
        message["Auto-Submitted"] = mail.auto_submitted
        # Exchange and Outlook: no out-of-office answers to an automatic mail.
        message["X-Auto-Response-Suppress"] = "All"
    message.set_content(mail.text)
    if mail.html:
        message.add_alternative(mail.html, subtype="html")
    for attachment in mail.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        message.add_attachment(attachment.content, maintype=maintype or "application",
                               subtype=subtype or "octet-stream", filename=attachment.filename)
    return message


_MACHINE_LOCAL = re.compile(
    r"^(?:no[-_.]?reply|do[-_.]?not[-_.]?reply|mailer[-_.]daemon|postmaster|bounces?"
    r"|daemon|auto[-_.]?reply|notifications?)(?:[-+_.].*)?$",
    re.IGNORECASE,
)


def is_machine_address(address: str) -> bool:
    """Addresses nobody reads answers at: noreply, mailer-daemon, bounces, ... (and empty)."""
    local, at, _ = address.strip().rpartition("@")
    if not at or not local:
        return True
    return bool(_MACHINE_LOCAL.match(local))


ACK_TEXTS = {
    "de": (
        "Eingangsbestätigung",
        "Guten Tag{name_de},\n\nvielen Dank für Ihre Nachricht. Wir haben Ihre Anfrage unter der "
        "Nummer {ticket} aufgenommen und melden uns so bald wie möglich.\nBitte lassen Sie die "
        "Nummer {ticket} im Betreff, wenn Sie uns dazu schreiben: Antworten Sie einfach auf "
        "diese Nachricht.\n\nBetreff Ihrer Anfrage: {subject}\n\nDies ist eine automatische "
        "Nachricht.\n",
    ),
    "en": (
        "Request received",
        "Hello{name_en},\n\nthank you for your message. We have logged your request as {ticket} "
        "and will get back to you as soon as we can.\nPlease keep {ticket} in the subject when "
        "you write to us about it: simply reply to this message.\n\nSubject of your request: "
        "{subject}\n\nThis is an automatic message.\n",
    ),
}


def ack_text(
    language: str, ticket: str, subject: str, name: str | None, template: str | None = None,
) -> tuple[str, str]:
    """Subject and body of a new ticket's acknowledgement.

    ``template`` (MAILSVC_TICKET_ACK_TEMPLATE): "Subject: ..." on its first line, a blank line,
    then the body; ``{ticket}``, ``{subject}`` and ``{name}`` are filled in, nothing else is
    interpreted. The ticket's ID is added to the subject when the template leaves it out.
    """
    values = {"ticket": ticket, "subject": subject or "-", "name": name or ""}
    if template is not None:
        head, _, body = template.partition("\n\n")
        title = head.removeprefix("Subject:").strip() if head.startswith("Subject:") else ""
        if not title:
            title, body = "{ticket}", template
        filled = _fill(title, values), _fill(body, values)
    else:
        parts = [ACK_TEXTS[code] for code in language.split("+")]
        extras = {"name_de": f" {name}" if name else "", "name_en": f" {name}" if name else ""}
        title = " / ".join(title for title, _ in parts)
        body = "\n---\n\n".join(_fill(text, {**values, **extras}) for _, text in parts)
        filled = f"[{ticket}] {title}: {subject}" if subject else f"[{ticket}] {title}", body
    subject_line, body = filled
    if ticket not in subject_line:
        subject_line = f"[{ticket}] {subject_line}"
    return " ".join(subject_line.split())[:500], body


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def verdict(code: int) -> Verdict:
    """What an SMTP reply code means for the mail: 2xx sent, 5xx failed, anything else later."""
    if 200 <= code < 300:
        return "sent"
    if 500 <= code < 600:
        return "failed"
    return "deferred"


def retry_delay(attempts: int, initial: float, cap: float = 3600.0) -> float:
    """Seconds until the next try after ``attempts`` failed ones: initial, doubling, capped."""
    return float(min(cap, initial * 2 ** max(0, attempts - 1)))


_MESSAGE_ID_LINE = r"^[>\s]*Message-ID:[ \t]*<([^<>\s@]{{1,500}})@{domain}>"


def our_message_ids(
    raw: bytes, domain: str, exclude: str | None = None, also: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """Our own Message-IDs a bounce names: ``Message-ID:`` lines under our domain anywhere in
    ``raw`` (a bounce quotes the original's headers; its References are not taken, they name
    earlier mail of the thread) and those of ``also`` (the bounce's In-Reply-To), normalised,
    without ``exclude`` (the bounce's own)."""
    pattern = re.compile(_MESSAGE_ID_LINE.format(domain=re.escape(domain)),
                         re.IGNORECASE | re.MULTILINE)
    suffix = f"@{domain.lower()}"
    found = [f"{m[1]}{suffix}" for m in pattern.finditer(raw.decode("latin-1"))]
    found += [i for i in also if i.lower().endswith(suffix)]
    return tuple(dict.fromkeys(f for f in found if f != exclude))
