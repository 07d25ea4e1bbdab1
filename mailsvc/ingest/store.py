"""Apply a linking decision to the store: the e-mail, its links and its events, in the caller's
transaction."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.models import (
    Email,
    EmailAttachment,
    EmailLink,
    LinkTarget,
    QuarantinedMail,
)
from mailsvc.crmstore.outbox import record_event
from mailsvc.ingest.outcome import Outcome, OutcomeKind
from mailsvc.linking.model import LinkDecision
from mailsvc.mail import Address, ParsedMail, RawMail


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message made ready before its transaction: parsed (or why not) and keyed."""

    raw: RawMail
    key: str
    parsed: ParsedMail | None
    problem: str | None = None


def _addresses(items: tuple[Address, ...]) -> list[dict[str, str]]:
    return [{"name": a.name, "email": a.email} for a in items]


def build_email(item: Prepared, decision: LinkDecision, outcome: OutcomeKind) -> Email:
    mail = item.parsed
    assert mail is not None
    sender = mail.sender
    envelope = item.raw.envelope
    return Email(
        dedup_key=item.key,
        message_id=mail.message_id,
        subject=mail.subject,
        from_email=sender.email if sender else None,
        from_name=sender.name if sender else None,
        to=_addresses(mail.to),
        cc=_addresses(mail.cc),
        reply_to=_addresses(mail.reply_to),
        sent_at=mail.date,
        in_reply_to=list(mail.in_reply_to),
        references=list(mail.references),
        headers=[[name, value] for name, value in mail.headers],
        text_body=mail.text,
        html_body=mail.html,
        raw=item.raw.data,
        size=len(item.raw.data),
        envelope_from=envelope.mail_from,
        envelope_to=list(envelope.rcpt_tos),
        intake_role=envelope.role,
        source=envelope.source,
        kind=decision.mail_kind,
        direction=decision.direction,
        automatic=decision.automatic,
        outcome=outcome,
        rule=decision.rule,
        notes=list(decision.notes),
        attachments=[
            EmailAttachment(
                filename=a.filename,
                content_type=a.content_type,
                content_id=a.content_id,
                inline=a.inline,
                size=len(a.content),
                content=a.content,
            )
            for a in mail.attachments
        ],
    )


def outcome_kind(decision: LinkDecision) -> OutcomeKind:
    if decision.kind == "new_lead":
        return "lead_created"
    if decision.kind == "new_ticket":
        return "ticket_created"
    if decision.kind == "ticket_update":
        return "ticket_updated"
    if decision.kind == "link" and decision.links.any:
        return "linked"
    return "ignored"


async def store_email(
    session: AsyncSession, item: Prepared, decision: LinkDecision
) -> Outcome:
    """Insert the e-mail with its attachments and links, and record its events."""
    kind = outcome_kind(decision)
    email = build_email(item, decision, kind)
    links = decision.links.as_dict()
    email.links = [
        EmailLink(target_type=LinkTarget(name), target_id=target, rule=decision.rule or "address")
        for name, target in links.items()
        if target is not None
    ]
    session.add(email)
    await session.flush()
    outcome = Outcome(
        kind=kind,
        email_id=email.id,
        message_id=email.message_id,
        rule=decision.rule,
        links=links,
        notes=decision.notes,
        automatic=decision.automatic,
    )
    event = {**outcome.to_json(), "subject": email.subject, "from": email.from_email,
             "intake_role": email.intake_role, "direction": email.direction}
    record_event(session, "email.received", event, subject=f"email/{email.id}")
    if kind != "ignored":
        record_event(session, "email.linked", event, subject=f"email/{email.id}")
    return outcome


async def quarantine(session: AsyncSession, item: Prepared, reason: str) -> Outcome:
    envelope = item.raw.envelope
    row = QuarantinedMail(
        dedup_key=item.key,
        reason=reason[:4000],
        raw=item.raw.data,
        size=len(item.raw.data),
        envelope_from=envelope.mail_from,
        envelope_to=list(envelope.rcpt_tos),
        intake_role=envelope.role,
        source=envelope.source,
    )
    session.add(row)
    await session.flush()
    message_id = item.parsed.message_id if item.parsed else None
    outcome = Outcome("quarantined", message_id=message_id, quarantine_id=row.id, reason=reason)
    record_event(
        session, "email.quarantined",
        {"quarantine_id": row.id, "reason": reason, "message_id": message_id,
         "intake_role": envelope.role, "size": row.size},
        subject=f"quarantine/{row.id}",
    )
    return outcome


async def find_existing(session: AsyncSession, keys: list[str]) -> dict[str, Outcome]:
    """Keys already stored (as e-mail or in quarantine), as the duplicate outcomes to report."""
    if not keys:
        return {}
    found: dict[str, Outcome] = {}
    emails = await session.execute(
        select(Email.dedup_key, Email.id, Email.message_id).where(Email.dedup_key.in_(keys))
    )
    for key, email_id, message_id in emails:
        found[key] = Outcome("duplicate", email_id=email_id, message_id=message_id)
    rows = await session.execute(
        select(QuarantinedMail.dedup_key, QuarantinedMail.id).where(
            QuarantinedMail.dedup_key.in_(keys)
        )
    )
    for key, quarantine_id in rows:
        found.setdefault(key, Outcome("duplicate", quarantine_id=quarantine_id))
    return found
