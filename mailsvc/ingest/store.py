"""Apply a linking decision to the store: the e-mail, its links and its events, in the caller's
transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.bulk import insert_rows, table_of
from mailsvc.crmstore.models import Email, EmailAttachment, QuarantinedMail
from mailsvc.crmstore.outbox import historical_events, record_event, write_events
from mailsvc.ingest.applier import StoredMail, apply_decisions
from mailsvc.ingest.outcome import DROPPED, Outcome, OutcomeKind, QuarantineReason
from mailsvc.ingest.prepare import EXACT_COLUMNS, Prepared, mail_values
from mailsvc.ingest.sanitize import clean_text, column_lengths, fit_row
from mailsvc.linking.model import LinkDecision
from mailsvc.mail import ParsedMail
from mailsvc.outbound.queue import after_intake as outbound_after_intake


def email_values(item: Prepared, decision: LinkDecision, outcome: OutcomeKind) -> dict[str, Any]:
    """The ``emails`` row of a decided mail, every value cleaned and fitted to its column."""
    return {
        **(item.values if item.values is not None
           else mail_values(item, column_lengths(Email.__table__))),
        **fit_row(Email.__table__, {
            "reply_text": decision.reply_text,
            "kind": decision.mail_kind,
            "direction": decision.direction,
            "automatic": decision.automatic,
            "outcome": outcome,
            "rule": str(decision.rule),
            "notes": list(decision.notes),
        }),
        "raw": item.raw.data,
        "size": len(item.raw.data),
        "received_at": utcnow(),
    }


def attachment_values(mail: ParsedMail, email_id: int | None = None) -> list[dict[str, Any]]:
    return [
        fit_row(EmailAttachment.__table__, {
            "email_id": email_id,
            "filename": a.filename,
            "content_type": a.content_type,
            "content_id": a.content_id,
            "inline": a.inline,
            "size": len(a.content),
            "content": a.content,
        })
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
    group: the e-mails, their attachments, then the decisions applied (``applier``: new leads and
    tickets, links, ticket logs and bounce marks, timeline), then the events. A mail a never-log
    rule dropped is not stored at all (``DROPPED``)."""
    if any(decision.kind == "drop" for _, decision in decided):
        kept = [(item, d) for item, d in decided if d.kind != "drop"]
        stored = iter(await store_emails(session, kept))
        return [DROPPED if d.kind == "drop" else next(stored) for _, d in decided]
    if not decided:
        return []
    rows = [email_values(item, decision, outcome_kind(decision)) for item, decision in decided]
    emails = table_of(Email)
    inserted = await session.execute(
        insert(emails).returning(emails.c.id, emails.c.dedup_key), rows)
    ids = {key: email_id for email_id, key in inserted}
    attachments: list[dict[str, Any]] = []
    mails: list[StoredMail] = []
    for (item, _), row in zip(decided, rows, strict=True):
        assert item.parsed is not None
        row["id"] = ids[item.key]
        attachments += attachment_values(item.parsed, row["id"])
        mails.append(StoredMail(row["id"], row["subject"], row["sent_at"], row["received_at"],
                                historical=item.raw.envelope.historical))
    if attachments:
        await insert_rows(session, EmailAttachment, attachments)
    applied = await apply_decisions(
        session, list(zip(mails, (d for _, d in decided), strict=True)), create=True
    )
    for row, done, mail in zip(rows, applied, mails, strict=True):
        # Outbound mail: acknowledge a new ticket, fail our own mail that bounced; never for
        # archived mail (its sender wrote long ago, its bounce is old news).
        if not mail.historical:
            await outbound_after_intake(session, row, done.decision)
    events: list[dict[str, Any]] = []
    outcomes: list[Outcome] = []
    for row, done, mail in zip(rows, applied, mails, strict=True):
        with historical_events(session, mail.historical):
            outcomes.append(_email_events(session, row, done.decision, events))
    await write_events(session, events)
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
        rule=str(decision.rule),
        links=decision.links.as_dict(),
        notes=decision.notes,
        automatic=decision.automatic,
        rules_tried=tuple(str(r) for r in decision.rules_tried),
    )
    event = {**outcome.to_json(), "subject": row["subject"], "from": row["from_email"],
             "intake_role": row["intake_role"], "direction": row["direction"],
             "mail_kind": row["kind"]}
    subject = f"email/{row['id']}"
    record_event(session, "email.received", event, subject=subject, batch=events)
    if kind != "ignored":
        record_event(session, "email.linked", event, subject=subject, batch=events)
    return outcome


async def quarantine(session: AsyncSession, item: Prepared, reason: QuarantineReason) -> Outcome:
    envelope = item.raw.envelope
    row = QuarantinedMail(**fit_row(QuarantinedMail.__table__, {
        "dedup_key": item.key,
        "reason": clean_text(reason[:4000]),
        "raw": item.raw.data,
        "size": len(item.raw.data),
        "envelope_from": envelope.mail_from,
        "envelope_to": list(envelope.rcpt_tos),
        "intake_role": str(envelope.role),
        "source": envelope.source,
    }, keep=EXACT_COLUMNS))
    session.add(row)
    await session.flush()
    message_id = item.parsed.message_id if item.parsed else None
    outcome = Outcome("quarantined", message_id=message_id, quarantine_id=row.id, reason=reason)
    with historical_events(session, envelope.historical):
        record_event(
            session, "email.quarantined",
            {"quarantine_id": row.id, "reason": reason, "message_id": message_id,
             "intake_role": str(envelope.role), "size": row.size},
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
