"""What the triage page reads. Lists never load raw bytes or bodies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, String, cast, exists, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import load_only, selectinload

from mailsvc.crmstore.models import (
    Email,
    EmailAttachment,
    EmailLink,
    InboxLead,
    LinkTarget,
    Opportunity,
    OutboxEvent,
    QuarantinedMail,
    Ticket,
)
from mailsvc.linking.references import normalise_message_id

PAGE_SIZE = 50
RECORDS = (LinkTarget.OPPORTUNITY, LinkTarget.TICKET, LinkTarget.INBOX_LEAD)
# Notes that say a person should look: several candidates, an ID that names nothing, a sender
# who claims to be one of us without proof.
ATTENTION_NOTES = ("ambiguous", "several_open_records", "unknown_id", "sender_unverified",
                   "new_person", "no_match")


@dataclass(frozen=True, slots=True)
class InboxFilter:
    attention: bool = True
    role: str | None = None
    owner: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    q: str | None = None
    offset: int = 0


def needs_attention() -> Any:
    """No record linked, or a note that asks for a person.

    The OFFSET 0 keeps PostgreSQL from planning NOT EXISTS inside this OR as a hashed subplan:
    that reads every record link of the store on each request (it is sized for a scan of the
    whole table, not for the page the LIMIT stops at), so the inbox grew with the store (~70 ms
    at 100,000 mails, see docs/benchmarks.md). Without it the planner probes the links of each
    mail the page looks at on (email_id, target_type, ...). OFFSET 0 changes no result."""
    linked = (select(EmailLink.id)
              .where(EmailLink.email_id == Email.id, EmailLink.target_type.in_(RECORDS))
              .offset(0).exists())
    notes = cast(Email.notes, String)
    return or_(~linked, *[notes.like(f"%{note}%") for note in ATTENTION_NOTES])


def inbox_statement(f: InboxFilter, message_id: str | None = None) -> Select[Email]:
    statement = select(Email).options(
        load_only(Email.id, Email.received_at, Email.from_email, Email.from_name, Email.subject,
                  Email.outcome, Email.rule, Email.direction, Email.intake_role, Email.notes,
                  Email.message_id),
        selectinload(Email.links),
    )
    if f.attention:
        statement = statement.where(needs_attention(), Email.automatic.is_(False))
    if f.role:
        statement = statement.where(Email.intake_role == f.role)
    if f.owner:
        statement = statement.where(exists().where(
            EmailLink.email_id == Email.id, EmailLink.target_type == LinkTarget.OWNER,
            EmailLink.target_id == f.owner))
    if f.since:
        statement = statement.where(Email.received_at >= f.since)
    if f.until:
        statement = statement.where(Email.received_at < f.until)
    if message_id is not None:
        statement = statement.where(Email.message_id == message_id)
    elif f.q:
        pattern = f"%{f.q.strip().lower()}%"
        statement = statement.where(or_(
            func.lower(Email.from_email).like(pattern), func.lower(Email.subject).like(pattern),
            func.lower(Email.message_id).like(pattern)))
    return statement.order_by(Email.received_at.desc(), Email.id.desc())


def as_message_id(q: str) -> str | None:
    """``q`` as a whole Message-ID (``local@domain``, angle brackets optional), or None."""
    normalised = normalise_message_id(q) if len(q.split()) == 1 else None
    return normalised if normalised and "@" in normalised else None


async def inbox(session: AsyncSession, f: InboxFilter) -> list[Email]:
    """A page of the inbox. A search that is a whole Message-ID finds that mail through the
    index; only when no mail has it does the search look inside senders, subjects and
    Message-IDs (a scan of the filtered mail)."""
    message_id = as_message_id(f.q or "")
    if message_id is not None and await session.scalar(
        select(Email.id).where(Email.message_id == message_id).limit(1)
    ) is None:
        message_id = None
    if f.owner and session.get_bind().dialect.name == "postgresql":
        # How much mail an owner has differs wildly by owner: a plan made for the owner at hand,
        # not the generic plan a prepared statement turns to after a few runs (measured: 90 and
        # 170 ms instead of 18 and 37 at 100,000 mails). The text search keeps the generic plan,
        # which walks the date index and stops at a full page.
        await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    statement = inbox_statement(f, message_id).offset(f.offset).limit(PAGE_SIZE + 1)
    return list(await session.scalars(statement))


async def mail(session: AsyncSession, email_id: int) -> Email | None:
    return await session.scalar(
        select(Email).options(
            selectinload(Email.links),
            selectinload(Email.attachments).load_only(
                EmailAttachment.id, EmailAttachment.filename, EmailAttachment.content_type,
                EmailAttachment.size, EmailAttachment.inline),
        ).where(Email.id == email_id)
    )


async def raw(session: AsyncSession, email_id: int) -> bytes | None:
    return await session.scalar(select(Email.raw).where(Email.id == email_id))


async def attachment(session: AsyncSession, email_id: int, attachment_id: int
                     ) -> EmailAttachment | None:
    return await session.scalar(select(EmailAttachment).where(
        EmailAttachment.id == attachment_id, EmailAttachment.email_id == email_id))


async def search_records(session: AsyncSession, kind: LinkTarget, q: str) -> list[dict[str, Any]]:
    """Up to ten records of ``kind`` whose id or title starts with / contains ``q``."""
    model: Any = {LinkTarget.OPPORTUNITY: Opportunity, LinkTarget.TICKET: Ticket,
                  LinkTarget.INBOX_LEAD: InboxLead}.get(kind)
    if model is None:
        return []
    title = model.subject if model is Ticket else model.title
    statement = select(model.id, title).order_by(model.id.desc()).limit(10)
    text = q.strip()
    if text.isdigit():
        statement = statement.where(model.id == int(text))
    elif text:
        statement = statement.where(func.lower(title).like(f"%{text.lower()}%"))
    return [{"id": i, "label": f"{i}: {t}"} for i, t in await session.execute(statement)]


async def leads(session: AsyncSession) -> list[InboxLead]:
    return list(await session.scalars(select(InboxLead).order_by(InboxLead.id.desc()).limit(100)))


async def tickets(session: AsyncSession) -> list[Ticket]:
    return list(await session.scalars(select(Ticket).order_by(Ticket.id.desc()).limit(100)))


async def quarantined(session: AsyncSession) -> list[QuarantinedMail]:
    return list(await session.scalars(
        select(QuarantinedMail).options(load_only(
            QuarantinedMail.id, QuarantinedMail.reason, QuarantinedMail.size,
            QuarantinedMail.intake_role, QuarantinedMail.source, QuarantinedMail.received_at))
        .order_by(QuarantinedMail.id.desc()).limit(100)))


async def health(session: AsyncSession) -> dict[str, int]:
    outbox = await session.scalar(
        select(func.count()).select_from(OutboxEvent).where(OutboxEvent.sent_at.is_(None)))
    quarantine = await session.scalar(select(func.count()).select_from(QuarantinedMail))
    return {"outbox": outbox or 0, "quarantine": quarantine or 0}


def mails_of(kind: LinkTarget, record_id: int) -> Select[Email]:
    return select(Email).options(load_only(Email.id, Email.subject, Email.received_at,
                                           Email.from_email)).where(exists().where(
        EmailLink.email_id == Email.id, EmailLink.target_type == kind,
        EmailLink.target_id == record_id)).order_by(Email.received_at.desc())
