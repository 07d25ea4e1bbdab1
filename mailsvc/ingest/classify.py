"""Machine mail: tells auto-replies, bounces, list mail and loops from mail a person wrote."""

from __future__ import annotations

import email
import email.policy
import logging
import re

from flufl.bounce import all_failures

from mailsvc.linking.model import HUMAN, MailKind
from mailsvc.mail import Envelope, ParsedMail

LOOP_HEADER = "X-Mailsvc-Loop"
"""Our own marker: mail that carries it came from (or through) a mailsvc; never act on it."""

_AUTO_SUBJECT = re.compile(
    r"^\s*(?:(?:re|aw|wg|fwd?)\s*:\s*)*(?:"
    r"out of (?:the )?office|automatic reply|auto(?:matic)?[- ]?(?:reply|response|antwort)"
    r"|automatische antwort|abwesenheitsnotiz|abwesenheit|i am out of|ich bin (?:bis|ab|vom)"
    r"|away from (?:the|my) office|on vacation|urlaubsabwesenheit"
    r")",
    re.I,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver(?:ed|able)|delivery (?:status notification|failure|has failed)"
    r"|mail delivery (?:failed|failure|system)|returned mail|failure notice"
    r"|unzustellbar|nicht zustellbar|zustellung fehlgeschlagen|non[- ]delivery",
    re.I,
)
_DAEMON = re.compile(r"^(?:mailer-daemon|postmaster|mail-daemon|mailerdaemon)@", re.I)
_RECIPIENT_FIELD = re.compile(
    r"^(?:final|original)-recipient\s*:\s*rfc822\s*;\s*<?(?P<address>[^\s<>;]+@[^\s<>;]+)>?",
    re.I | re.M,
)
_ACTION = re.compile(r"^action\s*:\s*(?P<action>[a-z]+)", re.I | re.M)
_SUPPRESS_AUTO = frozenset({"all", "oof", "autoreply"})
_ADDRESS = re.compile(r"^[^\s@<>]+@[^\s@<>]+\.[^\s@<>]+$")
# flufl.bounce's second pass reads the bounce again with the stdlib parser; larger "bounces" are
# not worth it (a real DSN is a few kilobytes).
SECOND_PASS_MAX_BYTES = 1024 * 1024

logger = logging.getLogger(__name__)


def classify(
    mail: ParsedMail, envelope: Envelope | None = None, max_received: int = 30,
    raw: bytes | None = None,
) -> MailKind:
    """The kind of ``mail``, checked in order: loop, bounce, auto-reply, list; else human.

    List headers come before ``Precedence: bulk`` so list mail is named ``list``. ``raw`` (the
    message's bytes) lets a bounce's failed recipients be found by a second parser too.
    """
    return (
        _loop(mail, max_received)
        or _bounce(mail, envelope, raw)
        or _auto_reply(mail)
        or _list(mail)
        or _precedence(mail)
        or HUMAN
    )


def _loop(mail: ParsedMail, max_received: int) -> MailKind | None:
    if mail.header(LOOP_HEADER) is not None:
        return MailKind("loop", f"{LOOP_HEADER} header")
    received = len(mail.header_all("Received"))
    if received > max_received:
        return MailKind("loop", f"{received} Received headers")
    return None


def _bounce(mail: ParsedMail, envelope: Envelope | None, raw: bytes | None) -> MailKind | None:
    content_type = (mail.header("Content-Type") or mail.content_type).lower()
    if content_type.startswith("multipart/report"):
        if "disposition-notification" in content_type:
            return None  # a read receipt: an automatic reply, see _auto_reply
        if "feedback-report" in content_type:
            return MailKind("bounce", "feedback report")
        return MailKind("bounce", "delivery report", bounced_recipients(mail, raw))
    sender = mail.sender.email if mail.sender else ""
    null_path = (mail.header("Return-Path") or "").strip() == "<>" or (
        envelope is not None and envelope.mail_from == ""
    )
    if _DAEMON.match(sender) or (
        (null_path or not sender) and _BOUNCE_SUBJECT.search(mail.subject)
    ):
        reason = f"bounce from {sender or 'null sender'}"
        return MailKind("bounce", reason, bounced_recipients(mail, raw))
    if _BOUNCE_SUBJECT.search(mail.subject) and _has_delivery_status(mail):
        return MailKind("bounce", "delivery status part", bounced_recipients(mail, raw))
    return None


def _has_delivery_status(mail: ParsedMail) -> bool:
    return any(a.content_type == "message/delivery-status" for a in mail.attachments)


def bounced_recipients(mail: ParsedMail, raw: bytes | None = None) -> tuple[str, ...]:
    """The failed recipients: those of a standard DSN (RFC 3464), else the To of the enclosed
    original; then those GNU Mailman's bounce detectors (flufl.bounce) name as permanent
    failures in the many non-standard formats MTAs use."""
    found = dict.fromkeys(_dsn_recipients(mail))
    if raw is not None and len(raw) <= SECOND_PASS_MAX_BYTES:
        found.update(dict.fromkeys(_detected_failures(raw)))
    return tuple(found)


def _detected_failures(raw: bytes) -> list[str]:
    try:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        _temporary, permanent = all_failures(message)
    except Exception:  # a detector tripping over odd input only loses the second opinion
        logger.debug("bounce detectors failed", exc_info=True)
        return []
    addresses = (
        (a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)).strip().strip("<>")
        for a in permanent
    )
    return sorted({a.lower() for a in addresses if _ADDRESS.match(a)})


def _dsn_recipients(mail: ParsedMail) -> tuple[str, ...]:
    found: dict[str, None] = {}
    reports = [a for a in mail.attachments if a.content_type == "message/delivery-status"]
    for report in reports:
        text = report.content.decode("utf-8", "replace")
        for block in re.split(r"\n\s*\n", text):
            action = _ACTION.search(block)
            if action is not None and action["action"].lower() != "failed":
                continue  # delayed, delivered, relayed, expanded: not a bounce
            for match in _RECIPIENT_FIELD.finditer(block):
                found.setdefault(match["address"].lower(), None)
    if not reports:
        for enclosed in mail.enclosed:
            for address in enclosed.to:
                found.setdefault(address.email, None)
    return tuple(found)


def _auto_reply(mail: ParsedMail) -> MailKind | None:
    auto_submitted = (mail.header("Auto-Submitted") or "").strip().lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return MailKind("auto_reply", f"Auto-Submitted: {auto_submitted}")
    for name in ("X-Autoreply", "X-Autorespond", "X-Autogenerated", "X-AutoReply-From"):
        if mail.header(name) is not None:
            return MailKind("auto_reply", f"{name} header")
    suppress = {
        v.strip().lower() for v in (mail.header("X-Auto-Response-Suppress") or "").split(",")
    }
    if suppress & _SUPPRESS_AUTO:
        return MailKind("auto_reply", "X-Auto-Response-Suppress")
    content_type = (mail.header("Content-Type") or "").lower()
    if "disposition-notification" in content_type:
        return MailKind("auto_reply", "read receipt")
    if _AUTO_SUBJECT.search(mail.subject):
        return MailKind("auto_reply", "subject")
    return None


def _list(mail: ParsedMail) -> MailKind | None:
    for name in ("List-Id", "List-Unsubscribe", "List-Post"):
        if mail.header(name) is not None:
            return MailKind("list", f"{name} header")
    return None


def _precedence(mail: ParsedMail) -> MailKind | None:
    precedence = (mail.header("Precedence") or "").strip().lower()
    if precedence == "list":
        return MailKind("list", "Precedence: list")
    if precedence in {"auto_reply", "bulk", "junk"}:
        return MailKind("auto_reply", f"Precedence: {precedence}")
    return None
