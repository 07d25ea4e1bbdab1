"""Apply a linking decision to the store: the e-mail, its links and its events, in the caller's
transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore import intake, services
from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import (
    Email,
    EmailAttachment,
    EmailLink,
    LinkTarget,
    QuarantinedMail,
)
from mailsvc.crmstore.outbox import record_event, write_events
from mailsvc.ingest.outcome import Outcome, OutcomeKind
from mailsvc.linking.model import LinkDecision, Links, MailKind, Wanted
from mailsvc.linking.text import Reply
from mailsvc.mail import Address, ParsedMail, RawMail
from mailsvc.outbound.queue import after_intake as outbound_after_intake


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message made ready before its transaction: parsed (or why not) and keyed."""

    raw: RawMail
    key: str
    parsed: ParsedMail | None
    problem: str | None = None
    # Pure work done before the queue (None: not done, the writer does it).
    kind: MailKind | None = None
    want: Wanted | None = None
    reply: Reply | None = None


def _addresses(items: tuple[Address, ...]) -> list[dict[str, str]]:
    return [{"name": a.name, "email": a.email} for a in items]


def email_values(item: Prepared, decision: LinkDecision, outcome: OutcomeKind) -> dict[str, Any]:
    """The ``emails`` row of a decided mail."""
    mail = item.parsed
    assert mail is not None
    sender = mail.sender
    envelope = item.raw.envelope
    return {
        "dedup_key": item.key,
        "message_id": mail.message_id,
        "subject": mail.subject,
        "from_email": sender.email if sender else None,
        "from_name": sender.name if sender else None,
        "to": _addresses(mail.to),
        "cc": _addresses(mail.cc),
        "reply_to": _addresses(mail.reply_to),
        "sent_at": mail.date,
        "in_reply_to": list(mail.in_reply_to),
        "references": list(mail.references),
        "headers": [[name, value] for name, value in mail.headers],
        "text_body": mail.text,
        "html_body": mail.html,
        "reply_text": decision.reply_text,
        "raw": item.raw.data,
        "size": len(item.raw.data),
        "envelope_from": envelope.mail_from,
        "envelope_to": list(envelope.rcpt_tos),
        "intake_role": envelope.role,
        "source": envelope.source,
        "kind": decision.mail_kind,
        "direction": decision.direction,
        "automatic": decision.automatic,
        "outcome": outcome,
        "rule": decision.rule,
        "notes": list(decision.notes),
        "received_at": utcnow(),
    }


def attachment_values(mail: ParsedMail, email_id: int | None = None) -> list[dict[str, Any]]:
    return [
        {
            "email_id": email_id,
            "filename": a.filename,
            "content_type": a.content_type,
            "content_id": a.content_id,
            "inline": a.inline,
            "size": len(a.content),
            "content": a.content,
        }
        for a in mail.attachments
    ]


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
    """Insert the e-mail with its links, create what the decision asks for, record the events."""
    return (await store_emails(session, [(item, decision)]))[0]


async def store_emails(
    session: AsyncSession, decided: Sequence[tuple[Prepared, LinkDecision]]
) -> list[Outcome]:
    """Store a group of decided mails in stages, so each table gets one statement for the whole
    group: new leads and tickets (rare, one by one), the e-mails, their attachments, their links,
    then ticket logs and bounce marks (rare), the events, the activities and one UPDATE of the
    opportunities' last contact."""
    if not decided:
        return []
    decisions = []
    for _, decision in decided:
        links = await _create_records(session, decision)
        decisions.append(replace(decision, links=links))
    rows = [
        email_values(item, decision, outcome_kind(decision))
        for (item, _), decision in zip(decided, decisions, strict=True)
    ]
    inserted = await session.execute(insert(Email).returning(Email.id, Email.dedup_key), rows)
    ids = {key: email_id for email_id, key in inserted}
    attachments: list[dict[str, Any]] = []
    link_rows: list[dict[str, Any]] = []
    for (item, _), decision, row in zip(decided, decisions, rows, strict=True):
        assert item.parsed is not None
        row["id"] = ids[item.key]
        attachments += attachment_values(item.parsed, row["id"])
        link_rows += [
            {"email_id": row["id"], "target_type": LinkTarget(name), "target_id": target,
             "rule": decision.rule or "address"}
            for name, target in decision.links.as_dict().items()
            if target is not None
        ]
    if attachments:
        await session.execute(insert(EmailAttachment), attachments)
    if link_rows:
        await session.execute(insert(EmailLink), link_rows)
    outcomes = []
    activities = []
    events: list[dict[str, Any]] = []
    for row, decision in zip(rows, decisions, strict=True):
        activity = await _after_email(session, row, decision)
        if activity is not None:
            activities.append(activity)
        outcomes.append(_email_events(session, row, decision, events))
    await write_events(session, events)
    await services.add_email_activities(session, activities)
    return outcomes


def _email_events(
    session: AsyncSession, row: dict[str, Any], decision: LinkDecision,
    events: list[dict[str, Any]],
) -> Outcome:
    kind = outcome_kind(decision)
    outcome = Outcome(
        kind=kind,
        email_id=row["id"],
        message_id=row["message_id"],
        rule=decision.rule,
        links=decision.links.as_dict(),
        notes=decision.notes,
        automatic=decision.automatic,
    )
    event = {**outcome.to_json(), "subject": row["subject"], "from": row["from_email"],
             "intake_role": row["intake_role"], "direction": row["direction"],
             "mail_kind": row["kind"]}
    subject = f"email/{row['id']}"
    record_event(session, "email.received", event, subject=subject, batch=events)
    if kind != "ignored":
        record_event(session, "email.linked", event, subject=subject, batch=events)
    return outcome


async def _create_records(session: AsyncSession, decision: LinkDecision) -> Links:
    """The inbox lead or ticket the decision asks for; its id joins the links."""
    links = decision.links
    if decision.kind == "new_lead" and decision.lead is not None:
        draft = decision.lead
        lead = await intake.create_inbox_lead(
            session, title=draft.title, email=draft.email, first_name=draft.first_name,
            last_name=draft.last_name, company=draft.company, phone=draft.phone,
            owner_id=links.owner, account_id=links.account,
        )
        return replace(links, inbox_lead=lead.id)
    if decision.kind == "new_ticket" and decision.ticket is not None:
        ticket_draft = decision.ticket
        ticket = await intake.create_ticket_from_mail(
            session, subject=ticket_draft.subject, description=ticket_draft.description,
            requester_email=ticket_draft.requester_email,
            requester_name=ticket_draft.requester_name, account_id=links.account,
            contact_id=links.contact, owner_id=links.owner, type=ticket_draft.type,
            priority=ticket_draft.priority,
        )
        return replace(links, ticket=ticket.id)
    return links


async def _after_email(
    session: AsyncSession, email: dict[str, Any], decision: LinkDecision
) -> dict[str, Any] | None:
    """What needs the stored e-mail: the ticket's log entry, bouncing marks; the timeline entry
    is returned, to be added with the group's."""
    update = decision.ticket_update
    if decision.kind == "ticket_update" and update is not None:
        await intake.append_ticket_update(
            session, update.ticket_id, body=update.body, author=update.author,
            email_id=email["id"], reopen=update.reopen,
        )
    if decision.bounced:
        await intake.mark_bouncing(session, decision.bounced, email["id"])
    await outbound_after_intake(session, email, decision)  # acknowledgement, bounce of our mail
    links = decision.links
    if links.any and not decision.automatic and decision.kind != "ignore":
        return services.email_activity(
            subject=email["subject"], email_id=email["id"], at=email["sent_at"] or utcnow(),
            owner_id=links.owner,
            opportunity_id=links.opportunity, ticket_id=links.ticket, account_id=links.account,
            contact_id=links.contact, inbox_lead_id=links.inbox_lead,
            notes=(decision.reply_text or "")[:4000] or None,
        )
    return None


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
