"""Personal data: erase a person (their mail, contact data, pending events), and retention.

A person is found by a contact id or an e-mail address (then every contact with that address
is that person, with all their addresses). What goes:

- **their mail**: every stored mail from or to one of their addresses (From, To, Cc, Reply-To,
  envelope) or linked to their contact loses its raw bytes, headers, bodies, subject and
  attachments, and their addresses in its address lists. The row stays as a tombstone (id, date,
  links to other records, Message-ID), so a re-delivered copy is still a duplicate and the
  records' timelines show that a mail was there;
- **their contact data**: the contacts and their addresses and tags are deleted; opportunities,
  tickets, activities, quotes and inbox leads that named the contact keep no reference;
- inbox leads and tickets keep a placeholder (``[erased]``) instead of the person's name and
  address; ticket updates and e-mail activities of their mail lose the text;
- their **quarantined mail** (envelope sender or recipient) loses its raw bytes;
- **events not yet published** no longer contain their addresses, and events about the erased
  mail, contacts, leads and tickets no longer carry names, subjects or bodies.

Each erasure leaves an audit row (who asked, when, how many of each; never whose data) and a
``privacy.erased`` event with the ids concerned, so consumers can erase their copies.

The functions take a session and never commit: the caller's transaction makes it all or nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Text, cast, delete, false, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import load_only

from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import (
    Activity,
    Contact,
    ContactEmail,
    ContactTag,
    Email,
    EmailAttachment,
    EmailLink,
    Erasure,
    InboxLead,
    LinkTarget,
    Opportunity,
    OutboxEvent,
    QuarantinedMail,
    Quote,
    Ticket,
    TicketUpdate,
    User,
    UserEmail,
)
from mailsvc.crmstore.outbox import record_event
from mailsvc.errors import NotFound, RuleViolation

if TYPE_CHECKING:
    from mailsvc.config import PrivacySettings

logger = logging.getLogger(__name__)

PLACEHOLDER = "[erased]"
ERASED_NOTE = "erased"
CHUNK = 500  # ids per IN (...) list: well under SQLite's limits

# Keys of event data that carry what a person wrote or who they are.
PERSONAL_KEYS = frozenset({
    "subject", "title", "from", "from_name", "name", "first_name", "last_name", "phone",
    "email", "requester_email", "requester_name", "author", "body", "text", "text_body",
    "html_body", "reply_text", "notes", "description", "to", "cc", "reply_to",
})

T = TypeVar("T")


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def normalise(address: str) -> str:
    return address.strip().lower()


@dataclass
class ErasureReport:
    """What an erasure removed (or, with ``dry_run``, would remove); counts, never values."""

    dry_run: bool
    contacts: list[int] = field(default_factory=list)
    emails: list[int] = field(default_factory=list)
    inbox_leads: list[int] = field(default_factory=list)
    tickets: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    erasure_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"erasure_id": self.erasure_id, "dry_run": self.dry_run,
                "contact_ids": self.contacts, "email_ids": self.emails,
                "inbox_lead_ids": self.inbox_leads, "ticket_ids": self.tickets,
                "counts": dict(self.counts)}


# ------------------------------------------------------------------ who is the person
async def contact_addresses(session: AsyncSession, contact_ids: Iterable[int]) -> set[str]:
    ids = list(contact_ids)
    if not ids:
        return set()
    found = {normalise(a) for a in await session.scalars(
        select(Contact.email).where(Contact.id.in_(ids), Contact.email.is_not(None))) if a}
    found |= {normalise(a) for a in await session.scalars(
        select(ContactEmail.email).where(ContactEmail.contact_id.in_(ids)))}
    return found


async def contacts_with(session: AsyncSession, addresses: Iterable[str]) -> set[int]:
    wanted = sorted(addresses)
    if not wanted:
        return set()
    ids = set(await session.scalars(
        select(Contact.id).where(func.lower(Contact.email).in_(wanted))))
    ids |= set(await session.scalars(
        select(ContactEmail.contact_id).where(func.lower(ContactEmail.email).in_(wanted))))
    return ids


async def resolve_person(
    session: AsyncSession, *, contact_id: int | None = None, address: str | None = None,
    protected: Iterable[str] = (),
) -> tuple[set[int], set[str]]:
    """The contacts and addresses of the person named by a contact id or an address.

    Refuses a person with one of the ``protected`` addresses (the intake's own: every mail is
    to them) or a user's address (our own staff are not erased as customers)."""
    contacts, addresses = await _person(session, contact_id=contact_id, address=address)
    refused = addresses & {normalise(a) for a in protected}
    users = await session.scalars(select(User.id).where(func.lower(User.email).in_(
        sorted(addresses))).union(select(UserEmail.user_id).where(
            func.lower(UserEmail.email).in_(sorted(addresses)))))
    user_ids = sorted(set(users))
    if refused:
        raise RuleViolation("an intake address of this service cannot be erased")
    if user_ids:
        raise RuleViolation(f"the address belongs to user {user_ids[0]}: users are not erased "
                            "this way")
    return contacts, addresses


async def _person(
    session: AsyncSession, *, contact_id: int | None, address: str | None,
) -> tuple[set[int], set[str]]:
    if (contact_id is None) == (address is None):
        raise RuleViolation("name the person by exactly one of a contact id or an address")
    if contact_id is not None:
        if await session.get(Contact, contact_id) is None:
            raise NotFound(f"contact {contact_id} does not exist")
        contacts = {contact_id}
        return contacts, await contact_addresses(session, contacts)
    assert address is not None
    wanted = normalise(address)
    if "@" not in wanted or len(wanted) > 320:
        raise RuleViolation("the address is not an e-mail address")
    contacts = await contacts_with(session, {wanted})
    return contacts, {wanted} | await contact_addresses(session, contacts)


# ------------------------------------------------------------------ what is theirs
def _listed(entries: Any, addresses: set[str]) -> bool:
    for entry in entries or ():
        value = entry.get("email") if isinstance(entry, dict) else entry
        if isinstance(value, str) and normalise(value) in addresses:
            return True
    return False


def _without(entries: Any, addresses: set[str]) -> list[Any]:
    kept = []
    for entry in entries or ():
        value = entry.get("email") if isinstance(entry, dict) else entry
        if not (isinstance(value, str) and normalise(value) in addresses):
            kept.append(entry)
    return kept


def _mentions(text: str | None, addresses: set[str]) -> bool:
    lowered = (text or "").lower()
    return any(a in lowered for a in addresses)


ADDRESS_COLUMNS = (Email.id, Email.from_email, Email.from_name, Email.envelope_from, Email.to,
                   Email.cc, Email.reply_to, Email.envelope_to, Email.message_id,
                   Email.dedup_key, Email.notes)


async def mails_of(
    session: AsyncSession, contacts: set[int], addresses: set[str],
) -> list[Email]:
    """Stored mail from or to the addresses, or linked to the contacts (address columns only)."""
    wanted = sorted(addresses)
    text_match = [func.lower(cast(column, Text)).contains(a, autoescape=True)
                  for column in (Email.to, Email.cc, Email.reply_to, Email.envelope_to)
                  for a in wanted]
    conditions = [func.lower(Email.from_email).in_(wanted),
                  func.lower(Email.envelope_from).in_(wanted), *text_match]
    if contacts:
        conditions.append(Email.id.in_(
            select(EmailLink.email_id).where(EmailLink.target_type == LinkTarget.CONTACT,
                                             EmailLink.target_id.in_(sorted(contacts)))))
    linked = set()
    if contacts:
        linked = set(await session.scalars(
            select(EmailLink.email_id).where(EmailLink.target_type == LinkTarget.CONTACT,
                                             EmailLink.target_id.in_(sorted(contacts)))))
    rows = await session.scalars(
        select(Email).options(load_only(*ADDRESS_COLUMNS)).where(or_(*conditions))
        .order_by(Email.id))
    # The text match may hit a longer address (ann@x.example in joann@x.example): check.
    return [row for row in rows if row.id in linked or _is_party(row, addresses)]


def _is_party(row: Email, addresses: set[str]) -> bool:
    return (normalise(row.from_email or "") in addresses
            or normalise(row.envelope_from or "") in addresses
            or any(_listed(entries, addresses)
                   for entries in (row.to, row.cc, row.reply_to, row.envelope_to)))


# ------------------------------------------------------------------ removing mail content
CONTENT_CLEARED: dict[str, Any] = {
    "raw": b"", "headers": [], "text_body": "", "html_body": "", "reply_text": None,
}


async def remove_content(session: AsyncSession, email_ids: Sequence[int], now: datetime,
                         *, subject_too: bool) -> int:
    """Clear the raw bytes, headers and bodies (and the subject) of these mails and delete
    their attachments; returns the number of attachments deleted."""
    values = {**CONTENT_CLEARED, "content_removed_at": now}
    if subject_too:
        values["subject"] = ""
    deleted = 0
    for part in chunks(email_ids):
        result = await session.execute(
            delete(EmailAttachment).where(EmailAttachment.email_id.in_(part)))
        deleted += int(getattr(result, "rowcount", 0) or 0)
        await session.execute(update(Email).where(Email.id.in_(part)).values(**values)
                              .execution_options(synchronize_session=False))
    return deleted


def _scrub_addresses(row: Email, addresses: set[str]) -> None:
    if normalise(row.from_email or "") in addresses:
        row.from_email = None
        row.from_name = None
    if normalise(row.envelope_from or "") in addresses:
        row.envelope_from = None
    row.to = _without(row.to, addresses)
    row.cc = _without(row.cc, addresses)
    row.reply_to = _without(row.reply_to, addresses)
    row.envelope_to = _without(row.envelope_to, addresses)
    if _mentions(row.message_id, addresses) or _mentions(row.dedup_key, addresses):
        row.message_id = None
        row.dedup_key = "erased:" + hashlib.sha256(row.dedup_key.encode()).hexdigest()
    if ERASED_NOTE not in (row.notes or []):
        row.notes = [*(row.notes or []), ERASED_NOTE]


# ------------------------------------------------------------------ pending events
def scrub_event_data(data: Any, addresses: set[str], personal: bool,
                     erase: bool = False) -> Any:
    """Event data without the addresses; with ``personal`` also without names and text: the
    text under a personal key becomes ``[erased]``. The shape stays (a string stays a string,
    a list a list), so the event still meets its schema in docs/asyncapi.yaml."""
    if isinstance(data, dict):
        return {key: scrub_event_data(value, addresses, personal,
                                      erase or (personal and key in PERSONAL_KEYS))
                for key, value in data.items()}
    if isinstance(data, list):
        return [scrub_event_data(value, addresses, personal, erase) for value in data]
    if isinstance(data, str) and erase and data:
        return PLACEHOLDER
    if isinstance(data, str) and _mentions(data, addresses):
        result = data
        for address in sorted(addresses, key=len, reverse=True):
            result = _replace_folded(result, address, PLACEHOLDER)
        return result
    return data


def _replace_folded(text: str, needle: str, replacement: str) -> str:
    lowered = text.lower()
    out, start = [], 0
    while (at := lowered.find(needle, start)) >= 0:
        out += [text[start:at], replacement]
        start = at + len(needle)
    out.append(text[start:])
    return "".join(out)


async def scrub_pending_events(
    session: AsyncSession, addresses: set[str], subjects: set[str], *, dry_run: bool,
) -> int:
    """Rewrite the events not yet published that name the addresses or concern the subjects."""
    wanted = sorted(addresses)
    conditions = [func.lower(cast(OutboxEvent.data, Text)).contains(a, autoescape=True)
                  for a in wanted]
    subject_list = sorted(subjects)
    for part in chunks(subject_list):
        conditions.append(OutboxEvent.subject.in_(part))
    if not conditions:
        return 0
    changed = 0
    rows = await session.scalars(
        select(OutboxEvent).where(OutboxEvent.sent_at.is_(None), or_(*conditions))
        .order_by(OutboxEvent.seq))
    for row in rows:
        personal = row.subject in subjects
        scrubbed = scrub_event_data(row.data, addresses, personal)
        if scrubbed != row.data:
            changed += 1
            if not dry_run:
                row.data = scrubbed
    return changed


# ------------------------------------------------------------------ erase
@dataclass
class _Found:
    """The person's rows, loaded before anything changes."""

    contacts: set[int]
    addresses: set[str]
    mails: list[Email]
    leads: list[InboxLead]
    tickets: list[Ticket]
    updates: list[TicketUpdate]
    activities: list[Activity]
    quarantined: list[QuarantinedMail]

    def subjects(self) -> set[str]:
        """The event subjects that concern the person's records."""
        return ({f"email/{m.id}" for m in self.mails} | {f"contact/{i}" for i in self.contacts}
                | {f"inbox_lead/{lead.id}" for lead in self.leads}
                | {f"ticket/{t.id}" for t in self.tickets})


async def _find(session: AsyncSession, contacts: set[int], addresses: set[str]) -> _Found:
    wanted, contact_ids = sorted(addresses), sorted(contacts)
    mails = await mails_of(session, contacts, addresses)
    email_ids = [m.id for m in mails]
    leads = await _rows(session, InboxLead, or_(
        func.lower(InboxLead.email).in_(wanted), InboxLead.open_key.in_(wanted),
        InboxLead.contact_id.in_(contact_ids) if contacts else false()))
    tickets = await _rows(session, Ticket, or_(
        func.lower(Ticket.requester_email).in_(wanted),
        Ticket.contact_id.in_(contact_ids) if contacts else false()))
    updates = await _rows(session, TicketUpdate, or_(
        TicketUpdate.email_id.in_(email_ids) if email_ids else false(),
        func.lower(TicketUpdate.author).in_(wanted)))
    activities = (await _rows(session, Activity, Activity.email_id.in_(email_ids))
                  if email_ids else [])
    return _Found(contacts, addresses, mails, leads, tickets, updates, activities,
                  await _quarantined(session, addresses))


async def erase(
    session: AsyncSession, *, contact_id: int | None = None, address: str | None = None,
    actor: str = "cli", dry_run: bool = False, now: datetime | None = None,
    protected: Iterable[str] = (),
) -> ErasureReport:
    """Erase a person's personal data (see the module docstring); ``dry_run`` only counts.
    ``protected``: addresses never erased (the intake addresses)."""
    now = now or utcnow()
    contacts, addresses = await resolve_person(session, contact_id=contact_id, address=address,
                                               protected=protected)
    found = await _find(session, contacts, addresses)
    email_ids = [m.id for m in found.mails]
    report = ErasureReport(dry_run=dry_run, contacts=sorted(contacts), emails=email_ids,
                           inbox_leads=sorted(lead.id for lead in found.leads),
                           tickets=sorted(t.id for t in found.tickets))
    report.counts.update({
        "contacts": len(contacts), "addresses": len(addresses), "emails": len(email_ids),
        "attachments": await _count(session, EmailAttachment.id, EmailAttachment.email_id,
                                    email_ids),
        "inbox_leads": len(found.leads), "tickets": len(found.tickets),
        "ticket_updates": len(found.updates), "activities": len(found.activities),
        "quarantined": len(found.quarantined),
        "pending_events": await scrub_pending_events(session, addresses, found.subjects(),
                                                     dry_run=dry_run),
    })
    if dry_run:
        return report
    await _apply(session, found, now)
    audit = Erasure(kind="erase", actor=actor[:100], counts=dict(report.counts),
                    created_at=now)
    session.add(audit)
    await session.flush()
    report.erasure_id = audit.id
    record_event(session, "privacy.erased", {
        "erasure_id": audit.id, "contact_ids": report.contacts, "email_ids": email_ids,
        "inbox_lead_ids": report.inbox_leads, "ticket_ids": report.tickets,
        "counts": dict(report.counts)}, subject=f"erasure/{audit.id}")
    return report


async def _apply(session: AsyncSession, found: _Found, now: datetime) -> None:
    addresses, contacts = found.addresses, found.contacts
    for mail in found.mails:
        _scrub_addresses(mail, addresses)
    await session.flush()
    await remove_content(session, [m.id for m in found.mails], now, subject_too=True)
    for lead in found.leads:
        lead.email = lead.open_key = lead.first_name = lead.phone = None
        lead.last_name = PLACEHOLDER
    for ticket in found.tickets:
        if normalise(ticket.requester_email or "") in addresses:
            ticket.requester_email = None
            ticket.requester_name = PLACEHOLDER
            ticket.description = PLACEHOLDER
    for ticket_update in found.updates:
        ticket_update.body = PLACEHOLDER
        if normalise(ticket_update.author or "") in addresses:
            ticket_update.author = None
    for activity in found.activities:
        activity.subject = "E-mail " + PLACEHOLDER
        activity.notes = None
    for row in found.quarantined:
        row.raw = b""
        if normalise(row.envelope_from or "") in addresses:
            row.envelope_from = None
        row.envelope_to = _without(row.envelope_to, addresses)
    await session.flush()
    await _forget_contacts(session, sorted(contacts))


async def _count(session: AsyncSession, id_column: Any, key: Any, ids: Sequence[int]) -> int:
    total = 0
    for part in chunks(ids):
        total += int(await session.scalar(
            select(func.count(id_column)).where(key.in_(part))) or 0)
    return total


async def _rows(session: AsyncSession, model: type[T], condition: Any) -> list[T]:
    return list(await session.scalars(select(model).where(condition)))


async def _quarantined(session: AsyncSession, addresses: set[str]) -> list[QuarantinedMail]:
    wanted = sorted(addresses)
    rows = await session.scalars(
        select(QuarantinedMail).options(load_only(
            QuarantinedMail.id, QuarantinedMail.envelope_from, QuarantinedMail.envelope_to))
        .where(or_(func.lower(QuarantinedMail.envelope_from).in_(wanted),
                   *(func.lower(cast(QuarantinedMail.envelope_to, Text)).contains(
                       a, autoescape=True) for a in wanted))))
    return [row for row in rows
            if normalise(row.envelope_from or "") in addresses
            or _listed(row.envelope_to, addresses)]


async def _forget_contacts(session: AsyncSession, contacts: Sequence[int]) -> None:
    """Delete the contacts; what referred to them keeps no reference."""
    if not contacts:
        return
    for model in (Opportunity, Ticket, InboxLead, Activity, Quote):
        column = model.contact_id
        await session.execute(update(model).where(column.in_(contacts)).values(contact_id=None)
                              .execution_options(synchronize_session=False))
    await session.execute(delete(EmailLink).where(
        EmailLink.target_type == LinkTarget.CONTACT, EmailLink.target_id.in_(contacts)))
    await session.execute(delete(ContactEmail).where(ContactEmail.contact_id.in_(contacts)))
    await session.execute(delete(ContactTag).where(ContactTag.contact_id.in_(contacts)))
    await session.execute(delete(Contact).where(Contact.id.in_(contacts))
                          .execution_options(synchronize_session=False))


# ------------------------------------------------------------------ retention
@dataclass(frozen=True, slots=True)
class RetentionReport:
    emails: int
    attachments: int
    quarantined: int
    cutoff: datetime | None


async def expire_content(
    session: AsyncSession, cutoff: datetime, *, limit: int = CHUNK, now: datetime | None = None,
) -> tuple[int, int, int]:
    """Remove the content of up to ``limit`` mails (and quarantined mails) received before
    ``cutoff``; returns (mails, attachments, quarantined). Never commits."""
    now = now or utcnow()
    ids = list(await session.scalars(
        select(Email.id).where(Email.received_at < cutoff, Email.content_removed_at.is_(None))
        .order_by(Email.id).limit(limit)))
    attachments = await remove_content(session, ids, now, subject_too=False)
    quarantined = list(await session.scalars(
        select(QuarantinedMail.id).where(QuarantinedMail.received_at < cutoff,
                                         func.length(QuarantinedMail.raw) > 0)
        .order_by(QuarantinedMail.id).limit(limit)))
    if quarantined:
        await session.execute(update(QuarantinedMail).where(QuarantinedMail.id.in_(quarantined))
                              .values(raw=b"")
                              .execution_options(synchronize_session=False))
    return len(ids), attachments, len(quarantined)


async def enforce_retention(
    sessions: async_sessionmaker[AsyncSession], privacy: PrivacySettings, *,
    now: datetime | None = None, batch: int = CHUNK,
) -> RetentionReport:
    """Remove raw bytes, headers, bodies and attachments of mail older than
    ``MAILSVC_RETENTION_DAYS`` (nothing when unset), in short transactions of ``batch`` mails,
    with one audit row when anything was removed."""
    if privacy.retention_days is None:
        return RetentionReport(0, 0, 0, None)
    now = now or utcnow()
    cutoff = now - timedelta(days=privacy.retention_days)
    emails = attachments = quarantined = 0
    while True:
        async with sessions() as session, session.begin():
            done = await expire_content(session, cutoff, limit=batch, now=now)
        emails, attachments, quarantined = (emails + done[0], attachments + done[1],
                                            quarantined + done[2])
        if done[0] < batch and done[2] < batch:
            break
    if emails or quarantined:
        async with sessions() as session, session.begin():
            session.add(Erasure(kind="retention", actor="retention", created_at=now, counts={
                "emails": emails, "attachments": attachments, "quarantined": quarantined,
                "retention_days": privacy.retention_days}))
    return RetentionReport(emails, attachments, quarantined, cutoff)


async def retention_loop(
    sessions: async_sessionmaker[AsyncSession], privacy: PrivacySettings,
) -> None:
    """``enforce_retention`` now and every ``MAILSVC_RETENTION_INTERVAL_SECONDS`` until
    cancelled; a failed run is logged and tried again at the next interval."""
    while True:
        try:
            report = await enforce_retention(sessions, privacy)
            if report.emails or report.quarantined:
                logger.info("retention: content of %d mail(s) and %d quarantined mail(s) "
                            "removed", report.emails, report.quarantined)
        except Exception:
            logger.exception("retention run failed; trying again later")
        await asyncio.sleep(privacy.retention_interval_seconds)
