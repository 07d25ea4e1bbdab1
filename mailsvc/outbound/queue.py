"""Outbound mail into the store: the outgoing e-mail on its record and its row in the delivery
queue, in the caller's transaction (committed before anything is sent)."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mailsvc.config import IntakeSettings, LinkingSettings, OutboundSettings
from mailsvc.crmstore import intake, services
from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import (
    Contact,
    Email,
    EmailAttachment,
    EmailLink,
    InboxLead,
    LinkTarget,
    Opportunity,
    Ticket,
    User,
)
from mailsvc.crmstore.outbound_models import DeliveryStatus, OutboundMail
from mailsvc.crmstore.outbox import record_event
from mailsvc.errors import ConfigError, NotFound, RuleViolation
from mailsvc.linking.model import LinkDecision
from mailsvc.linking.references import IdPatterns, RecordId
from mailsvc.outbound.compose import (
    Outgoing,
    OutgoingAttachment,
    ack_text,
    build_message,
    is_machine_address,
    new_message_id,
    our_message_ids,
    reply_subject,
    thread_headers,
)

logger = logging.getLogger(__name__)

POLICY_KEY = "mailsvc.outbound"
OUTBOUND_RULE = "outbound"
Role = Literal["support", "sales"]


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """The parts of the settings outbound mail needs, carried in ``Session.info``."""

    enabled: bool
    domain: str
    senders: Mapping[str, str]
    patterns: IdPatterns
    intake_addresses: frozenset[str]
    max_bytes: int
    ack: bool
    ack_window: timedelta
    ack_language: str
    ack_template: str | None

    @classmethod
    def from_settings(
        cls, outbound: OutboundSettings, linking: LinkingSettings, intake: IntakeSettings
    ) -> OutboundPolicy:
        """Outbound's own settings, the intake addresses and prefixes (linking), and the size
        limit of the intake, which our own mail keeps too."""
        template = None
        if outbound.ticket_ack_template is not None:
            try:
                template = outbound.ticket_ack_template.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"MAILSVC_TICKET_ACK_TEMPLATE: cannot read it: {exc}") from None
        return cls(
            enabled=outbound.smtp_url is not None,
            domain=outbound.effective_message_id_domain(linking),
            senders={"support": linking.support_address[0], "sales": linking.sales_address[0]},
            patterns=IdPatterns(linking.opportunity_prefix, linking.ticket_prefix),
            intake_addresses=frozenset(linking.intake_roles),
            max_bytes=intake.max_message_bytes,
            ack=outbound.ticket_ack_enabled,
            ack_window=timedelta(minutes=outbound.ack_window_minutes),
            ack_language=outbound.ticket_ack_language,
            ack_template=template,
        )


def configure_sessions(
    sessions: async_sessionmaker[AsyncSession], outbound: OutboundSettings,
    linking: LinkingSettings, intake: IntakeSettings,
) -> None:
    """Every session of the factory carries the outbound policy (the intake's acknowledgement
    and bounce handling read it there, in the intake's own transaction)."""
    sessions.configure(info={POLICY_KEY: OutboundPolicy.from_settings(outbound, linking, intake)})


def policy_of(session: AsyncSession) -> OutboundPolicy | None:
    policy = session.info.get(POLICY_KEY)
    return policy if isinstance(policy, OutboundPolicy) else None


@dataclass(frozen=True, slots=True)
class RecordContext:
    """A record we write from: who to, from which role, the thread to answer."""

    target: LinkTarget
    record_id: int
    record: RecordId | None
    label: str
    role: Role
    recipients: tuple[str, ...]
    title: str
    account_id: int | None
    contact_id: int | None
    owner_id: int | None
    last_message_id: str | None = None
    last_subject: str | None = None
    last_references: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Queued:
    email_id: int
    message_id: str


async def record_context(
    session: AsyncSession, policy: OutboundPolicy, target: LinkTarget, record_id: int
) -> RecordContext:
    """The record's defaults; NotFound when it does not exist."""
    if target == LinkTarget.TICKET:
        ticket = await session.get(Ticket, record_id)
        if ticket is None:
            raise NotFound(f"ticket {record_id} does not exist")
        to = ticket.requester_email or await _contact_address(session, ticket.contact_id)
        ref = RecordId("ticket", record_id)
        context = RecordContext(
            target, record_id, ref, policy.patterns.label(ref), "support",
            (to,) if to else (), ticket.subject, ticket.account_id, ticket.contact_id,
            ticket.owner_id,
        )
    elif target == LinkTarget.OPPORTUNITY:
        opportunity = await session.get(Opportunity, record_id)
        if opportunity is None:
            raise NotFound(f"opportunity {record_id} does not exist")
        to = await _contact_address(session, opportunity.contact_id)
        ref = RecordId("opportunity", record_id)
        context = RecordContext(
            target, record_id, ref, policy.patterns.label(ref), "sales", (to,) if to else (),
            opportunity.title, opportunity.account_id, opportunity.contact_id,
            opportunity.owner_id,
        )
    else:
        lead = await session.get(InboxLead, record_id)
        if lead is None:
            raise NotFound(f"inbox lead {record_id} does not exist")
        to = lead.email or await _contact_address(session, lead.contact_id)
        context = RecordContext(
            target, record_id, None, f"lead-{record_id}", "sales", (to,) if to else (),
            lead.title, lead.account_id, lead.contact_id, lead.owner_id,
        )
    last = (await session.execute(
        select(Email.message_id, Email.subject, Email.references)
        .join(EmailLink, EmailLink.email_id == Email.id)
        .where(EmailLink.target_type == target, EmailLink.target_id == record_id,
               # Answer what a person wrote: never our acknowledgement, a bounce or an auto-reply.
               Email.message_id.is_not(None), Email.automatic.is_(False))
        .order_by(Email.received_at.desc(), Email.id.desc()).limit(1)
    )).first()
    if last is None:
        return context
    message_id, subject, references = last
    return _with_last(context, message_id, subject, tuple(references or ()))


def _with_last(
    context: RecordContext, message_id: str | None, subject: str | None,
    references: tuple[str, ...],
) -> RecordContext:
    return replace(context, last_message_id=message_id, last_subject=subject,
                   last_references=tuple(str(r) for r in references))


async def _contact_address(session: AsyncSession, contact_id: int | None) -> str | None:
    if contact_id is None:
        return None
    contact = await session.get(Contact, contact_id)
    if contact is None:
        return None
    return contact.email or next((a.email for a in contact.addresses), None)


async def enqueue(
    session: AsyncSession, policy: OutboundPolicy, context: RecordContext, *, text: str,
    html: str | None = None, to: Sequence[str] | None = None, cc: Sequence[str] = (),
    subject: str | None = None, attachments: Sequence[OutgoingAttachment] = (),
    actor: User | None = None, kind: Literal["reply", "ack"] = "reply",
) -> Queued:
    """Store the mail as an outgoing e-mail linked to the record (on its timeline, the acting
    user as owner) and queue its delivery. Nothing is sent here: the sender takes it after the
    caller's commit."""
    now = utcnow()
    recipients = tuple(dict.fromkeys(a.strip().lower() for a in (*(to or context.recipients), *cc)))
    if not recipients:
        raise RuleViolation(f"{context.label} has no address to write to: give `to`")
    automatic = kind == "ack"
    token = secrets.token_hex(10)
    message_id = new_message_id(token, context.label, policy.domain)
    in_reply_to, references = thread_headers(context.last_message_id, context.last_references)
    if context.record is not None:
        subject_line = reply_subject(subject, context.last_subject, context.title, context.label,
                                     context.record, policy.patterns)
    else:
        subject_line = " ".join((subject or f"Re: {context.last_subject or context.title}").split())
    sender = policy.senders[context.role]
    outgoing = Outgoing(
        from_address=sender, from_name=" ".join(actor.name.split()) if actor else None,
        to=tuple(a.strip() for a in (to or context.recipients)), cc=tuple(cc),
        subject=subject_line, text=text, html=html, message_id=message_id, date=now,
        in_reply_to=in_reply_to, references=references,
        auto_submitted="auto-replied" if automatic else None, attachments=tuple(attachments),
    )
    try:
        message = build_message(outgoing)
        raw = message.as_bytes()
    except (ValueError, TypeError) as exc:  # a header the email package refuses
        raise RuleViolation(f"the mail cannot be built: {exc}") from None
    if len(raw) > policy.max_bytes:
        raise RuleViolation(
            f"the mail would be {len(raw)} bytes, more than MAILSVC_MAX_MESSAGE_BYTES allows"
        )
    owner_id = actor.id if actor else context.owner_id
    email = Email(
        dedup_key=f"mid:{message_id}", message_id=message_id, subject=subject_line,
        from_email=sender, from_name=outgoing.from_name,
        to=[{"name": "", "email": a.lower()} for a in outgoing.to],
        cc=[{"name": "", "email": a.lower()} for a in outgoing.cc], reply_to=[], sent_at=now,
        in_reply_to=[in_reply_to] if in_reply_to else [], references=list(references),
        headers=[[name, str(value)] for name, value in message.items()], text_body=text,
        html_body=html or "", reply_text=text, raw=raw, size=len(raw),
        # RFC 3834 3.3: an automatic answer goes out with a null return path, so it never
        # draws a bounce or an answer of its own.
        envelope_from=None if automatic else sender, envelope_to=list(recipients),
        intake_role=context.role, source="outbound",
        kind="auto_reply" if automatic else "human", direction="outgoing", automatic=automatic,
        outcome="linked", rule=OUTBOUND_RULE, notes=[f"outbound:{kind}"], received_at=now,
    )
    session.add(email)
    await session.flush()
    for attachment in attachments:
        session.add(EmailAttachment(
            email_id=email.id, filename=attachment.filename,
            content_type=attachment.content_type, content_id=None, inline=False,
            size=len(attachment.content), content=attachment.content,
        ))
    _add_links(session, email.id, context, owner_id)
    if not automatic:
        await services.add_email_activity(
            session, email_id=email.id, subject=subject_line, at=now, owner_id=owner_id,
            opportunity_id=context.record_id if context.target == LinkTarget.OPPORTUNITY else None,
            ticket_id=context.record_id if context.target == LinkTarget.TICKET else None,
            inbox_lead_id=context.record_id if context.target == LinkTarget.INBOX_LEAD else None,
            account_id=context.account_id, contact_id=context.contact_id,
            notes=text[:4000] or None,
        )
    if context.target == LinkTarget.TICKET:
        await intake.append_ticket_update(
            session, context.record_id, body=text, author=actor.email if actor else sender,
            email_id=email.id, reopen=False,
        )
    session.add(OutboundMail(
        email_id=email.id, kind=kind, status=DeliveryStatus.QUEUED.value,
        mail_from="" if automatic else sender, rcpt_to=list(recipients),
        recipient=recipients[0], attempts=0, next_attempt_at=now,
    ))
    await session.flush()
    return Queued(email.id, message_id)


def _add_links(
    session: AsyncSession, email_id: int, context: RecordContext, owner_id: int | None
) -> None:
    targets = {
        (context.target, context.record_id),
        *((LinkTarget.ACCOUNT, i) for i in [context.account_id] if i),
        *((LinkTarget.CONTACT, i) for i in [context.contact_id] if i),
        *((LinkTarget.OWNER, i) for i in [owner_id] if i),
    }
    for target, target_id in sorted(targets):
        session.add(EmailLink(email_id=email_id, target_type=target, target_id=target_id,
                              rule=OUTBOUND_RULE))


async def after_intake(
    session: AsyncSession, email: Mapping[str, Any], decision: LinkDecision
) -> None:
    """The intake stored ``email`` (its ``emails`` row values): acknowledge a new ticket, and
    let a bounce of our own mail fail that mail. In the intake's transaction."""
    policy = policy_of(session)
    if policy is None or not policy.enabled:
        return
    if decision.mail_kind == "bounce":
        await _bounced(session, policy, email, decision)
    elif decision.kind == "new_ticket" and decision.links.ticket is not None and policy.ack:
        await _acknowledge(session, policy, email, decision.links.ticket)


_MACHINE_HEADERS = re.compile(
    r"^(auto-submitted|precedence|list-id|list-unsubscribe|list-post|x-autoreply)$", re.IGNORECASE
)


def wants_acknowledgement(email: Mapping[str, Any], policy: OutboundPolicy) -> bool:
    """Human mail from a person's address: no machine mail, lists, noreply or our own."""
    sender = (email.get("from_email") or "").lower()
    if email.get("automatic") or email.get("kind") != "human" or not sender:
        return False
    if is_machine_address(sender) or sender in policy.intake_addresses:
        return False
    if email.get("envelope_from") in ("", "<>"):
        return False  # a null return path: a machine's mail (RFC 5321 4.5.5)
    for name, value in email.get("headers") or ():
        if _MACHINE_HEADERS.match(str(name)):
            if str(name).lower() == "auto-submitted" and str(value).strip().lower() == "no":
                continue
            if str(name).lower() == "precedence" and str(value).strip().lower() not in (
                "bulk", "list", "junk", "auto_reply"):
                continue
            return False
    return True


async def _acknowledge(
    session: AsyncSession, policy: OutboundPolicy, email: Mapping[str, Any], ticket_id: int
) -> None:
    if not wants_acknowledgement(email, policy):
        return
    sender = str(email["from_email"]).lower()
    since = utcnow() - policy.ack_window
    earlier = await session.scalar(
        select(OutboundMail.id).where(
            OutboundMail.kind == "ack", OutboundMail.recipient == sender,
            OutboundMail.created_at >= since,
        ).limit(1)
    )
    if earlier is not None:
        logger.info("no acknowledgement for ticket %s: %s had one within the window",
                    ticket_id, sender)
        return
    ticket = await session.get(Ticket, ticket_id)
    if ticket is None or (ticket.requester_email or "").lower() != sender:
        return  # e.g. a colleague forwarded the customer's mail: the customer did not write us
    ref = RecordId("ticket", ticket_id)
    label = policy.patterns.label(ref)
    subject, body = ack_text(policy.ack_language, label, ticket.subject, ticket.requester_name,
                             policy.ack_template)
    context = RecordContext(
        LinkTarget.TICKET, ticket_id, ref, label, "support", (sender,), ticket.subject,
        ticket.account_id, ticket.contact_id, ticket.owner_id,
        last_message_id=email.get("message_id"), last_subject=email.get("subject"),
        last_references=tuple(email.get("references") or ()),
    )
    try:
        await enqueue(session, policy, context, text=body, subject=subject, kind="ack")
    except RuleViolation as exc:  # raised before anything is written: the ticket stands
        logger.warning("no acknowledgement for ticket %s: %s", ticket_id, exc)


_DIAGNOSTIC = re.compile(rb"^Diagnostic-Code:[ \t]*[^;\r\n]*;[ \t]*(.+)$", re.MULTILINE | re.I)


def bounce_reason(raw: bytes, notes: Sequence[str]) -> str:
    match = _DIAGNOSTIC.search(raw)
    if match:
        return match[1].decode("latin-1").strip()[:2000]
    return ("; ".join(notes) or "bounced")[:2000]


async def _bounced(
    session: AsyncSession, policy: OutboundPolicy, email: Mapping[str, Any],
    decision: LinkDecision,
) -> None:
    ids = our_message_ids(email["raw"], policy.domain, exclude=email.get("message_id"),
                          also=tuple(email.get("in_reply_to") or ()))
    if not ids:
        return
    rows = (await session.execute(
        select(OutboundMail, Email.message_id).join(Email, Email.id == OutboundMail.email_id)
        .where(Email.message_id.in_(ids), Email.direction == "outgoing")
    )).all()
    reason = bounce_reason(email["raw"], decision.notes)
    for outbound, message_id in rows:
        if outbound.status == DeliveryStatus.FAILED.value:
            continue
        mark_failed(session, outbound, str(message_id), f"bounced: {reason}", "bounced",
                    utcnow())
        if not decision.bounced:
            # The bounce named nobody readable: the mail's own recipients are the ones.
            await intake.mark_bouncing(session, outbound.rcpt_to, email["id"])


def mark_failed(
    session: AsyncSession, outbound: OutboundMail, message_id: str, reply: str,
    reason: Literal["rejected", "expired", "bounced"], now: datetime,
) -> None:
    outbound.status = DeliveryStatus.FAILED.value
    outbound.failed_at = now
    outbound.last_reply = reply[:2000]
    record_event(session, "email.send_failed", {
        "email_id": outbound.email_id, "message_id": message_id, "kind": outbound.kind,
        "recipients": list(outbound.rcpt_to), "attempts": outbound.attempts,
        "reply": outbound.last_reply, "reason": reason,
    }, subject=f"email/{outbound.email_id}")


async def delivery_of(session: AsyncSession, email_id: int) -> OutboundMail | None:
    """The delivery state of an outgoing e-mail (None for mail we did not send)."""
    found: OutboundMail | None = await session.scalar(
        select(OutboundMail).where(OutboundMail.email_id == email_id)
    )
    return found
