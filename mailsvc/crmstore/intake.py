"""What incoming mail changes in the CRM: tickets and their updates, bouncing addresses
(inbox leads: ``services.open_inbox_lead``). Functions take a session and never commit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.bulk import insert_ids
from mailsvc.crmstore.models import (
    ContactEmail,
    Ticket,
    TicketStatus,
    TicketUpdate,
)
from mailsvc.crmstore.outbox import historical_events, record_event, write_events
from mailsvc.crmstore.services.assignment import Assigner, Assignment

EMAIL_SOURCE = "e-mail"


@dataclass(frozen=True, slots=True)
class TicketRequest:
    """A new ticket a mail asks for. ``closed_at``: a request from an archive, made closed and
    dated then; ``historical`` flags its event."""

    subject: str
    description: str
    requester_email: str
    requester_name: str | None
    account_id: int | None = None
    contact_id: int | None = None
    owner_id: int | None = None
    type: str = "question"
    priority: str = "normal"
    closed_at: datetime | None = None
    historical: bool = False


async def create_tickets_from_mail(
    session: AsyncSession, requests: Sequence[TicketRequest], assigner: Assigner | None = None,
) -> list[int]:
    """Tickets for new requests, inserted together; their ids, in order. One without an owner
    goes to the user ``assigner`` (the batch's) picks. Each records ``ticket.created``."""
    now = utcnow()
    rows: list[dict[str, Any]] = []
    assignments: list[Assignment | None] = []
    for request in requests:
        assigned = (assigner.assign(request.type)
                    if request.owner_id is None and assigner is not None else None)
        then = request.closed_at
        rows.append({
            "subject": request.subject[:500], "description": request.description,
            "type": request.type, "priority": request.priority,
            "status": TicketStatus.OPEN if then is None else TicketStatus.CLOSED,
            "account_id": request.account_id, "contact_id": request.contact_id,
            "owner_id": assigned.user_id if assigned is not None else request.owner_id,
            "requester_email": request.requester_email.strip().lower(),
            "requester_name": request.requester_name,
            "created_at": then or now, "updated_at": then or now, "closed_at": then,
        })
        assignments.append(assigned)
    ids = await insert_ids(session, Ticket, rows)
    events: list[dict[str, Any]] = []
    for ticket_id, row, assigned, request in zip(ids, rows, assignments, requests, strict=True):
        with historical_events(session, request.historical):
            record_event(
                session, "ticket.created",
                {"id": ticket_id, "subject": row["subject"], "type": request.type,
                 "priority": request.priority, "status": str(row["status"]),
                 "account_id": request.account_id, "contact_id": request.contact_id,
                 "owner_id": row["owner_id"], "requester_email": row["requester_email"],
                 "requester_name": request.requester_name, "source": EMAIL_SOURCE,
                 "assigned_by": assigned.rule if assigned is not None else None},
                subject=f"ticket/{ticket_id}", batch=events,
            )
    await write_events(session, events)
    return ids


@dataclass(frozen=True, slots=True)
class TicketLogEntry:
    """A mail to log on a ticket. ``reopen`` sets a resolved ticket back to open; ``at``: when
    the entry was written (an archived mail's date; default now); ``historical`` flags its
    event."""

    ticket_id: int
    body: str
    author: str | None
    email_id: int | None
    reopen: bool
    at: datetime | None = None
    historical: bool = False


async def append_ticket_updates(
    session: AsyncSession, entries: Sequence[TicketLogEntry]
) -> list[int | None]:
    """Log mails on their tickets, in order (the tickets locked once, in id order, the entries
    inserted together); the entries' ids, None for a ticket that is gone. Each records
    ``ticket.updated``."""
    ids = sorted({entry.ticket_id for entry in entries})
    tickets = {ticket.id: ticket for ticket in await session.scalars(
        select(Ticket).where(Ticket.id.in_(ids)).order_by(Ticket.id).with_for_update())}
    now = utcnow()
    rows: list[dict[str, Any]] = []
    logged: list[tuple[int, dict[str, Any], TicketStatus]] = []  # entry's position, row, status
    for n, entry in enumerate(entries):
        ticket = tickets.get(entry.ticket_id)
        if ticket is None:
            continue
        before = ticket.status
        after = TicketStatus.OPEN if entry.reopen and before == TicketStatus.RESOLVED else before
        row = {
            "ticket_id": entry.ticket_id, "body": entry.body, "author": entry.author,
            "email_id": entry.email_id,
            "status_from": str(before) if after != before else None,
            "status_to": str(after) if after != before else None,
            "created_at": entry.at or now,
        }
        if after != before:
            ticket.status = after
            ticket.resolved_at = None
        rows.append(row)
        logged.append((n, row, after))
    await session.flush()  # the reopened tickets
    update_ids = await insert_ids(session, TicketUpdate, rows)
    events: list[dict[str, Any]] = []
    made: list[int | None] = [None] * len(entries)
    for (n, row, status), update_id in zip(logged, update_ids, strict=True):
        entry = entries[n]
        made[n] = update_id
        with historical_events(session, entry.historical):
            record_event(
                session, "ticket.updated",
                {"id": entry.ticket_id, "update_id": update_id, "email_id": entry.email_id,
                 "author": entry.author, "status": str(status),
                 "status_from": row["status_from"], "status_to": row["status_to"],
                 "reopened": row["status_to"] is not None},
                subject=f"ticket/{entry.ticket_id}", batch=events,
            )
    await write_events(session, events)
    return made


async def append_ticket_update(
    session: AsyncSession, ticket_id: int, *, body: str, author: str | None,
    email_id: int | None, reopen: bool, at: datetime | None = None,
) -> int | None:
    """Log one mail on a ticket (``append_ticket_updates``)."""
    entry = TicketLogEntry(ticket_id, body, author, email_id, reopen, at)
    return (await append_ticket_updates(session, [entry]))[0]


async def mark_bouncing(
    session: AsyncSession, addresses: Iterable[str], email_id: int | None,
    at: datetime | None = None,
) -> list[ContactEmail]:
    """Flag contact addresses that bounced; each newly flagged address is one event."""
    wanted = sorted({a.strip().lower() for a in addresses if a})
    if not wanted:
        return []
    rows = list(
        await session.scalars(
            select(ContactEmail).where(
                ContactEmail.email.in_(wanted), ContactEmail.bouncing.is_(False)
            ).order_by(ContactEmail.id)
        )
    )
    when = at or utcnow()
    for row in rows:
        row.bouncing = True
        row.bounced_at = when
        record_event(
            session, "contact.bouncing",
            {"contact_id": row.contact_id, "email": row.email, "email_id": email_id},
            subject=f"contact/{row.contact_id}",
        )
    await session.flush()
    return rows
