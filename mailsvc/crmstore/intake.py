"""What incoming mail changes in the CRM: tickets and their updates, bouncing addresses
(inbox leads: ``services.open_inbox_lead``). Functions take a session and never commit."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import (
    ContactEmail,
    Ticket,
    TicketStatus,
    TicketUpdate,
)
from mailsvc.crmstore.outbox import record_event
from mailsvc.crmstore.services.assignment import Assigner

EMAIL_SOURCE = "e-mail"


async def create_ticket_from_mail(
    session: AsyncSession, *, subject: str, description: str, requester_email: str,
    requester_name: str | None, account_id: int | None = None, contact_id: int | None = None,
    owner_id: int | None = None, type: str = "question", priority: str = "normal",
    assigner: Assigner | None = None, closed_at: datetime | None = None,
) -> Ticket:
    """A ticket for a new request; without an owner, ``assigner`` (the batch's) picks one.

    With ``closed_at`` (a request from an archive) the ticket is made closed, created, changed
    and closed at that time."""
    assigned = assigner.assign(type) if owner_id is None and assigner is not None else None
    if assigned is not None:
        owner_id = assigned.user_id
    ticket = Ticket(
        subject=subject[:500], description=description, type=type, priority=priority,
        status=TicketStatus.OPEN if closed_at is None else TicketStatus.CLOSED,
        account_id=account_id, contact_id=contact_id,
        owner_id=owner_id, requester_email=requester_email.strip().lower(),
        requester_name=requester_name,
    )
    if closed_at is not None:
        ticket.created_at = ticket.updated_at = ticket.closed_at = closed_at
    session.add(ticket)
    await session.flush()
    record_event(
        session, "ticket.created",
        {"id": ticket.id, "subject": ticket.subject, "type": type, "priority": priority,
         "status": str(ticket.status), "account_id": account_id, "contact_id": contact_id,
         "owner_id": owner_id, "requester_email": ticket.requester_email,
         "requester_name": requester_name, "source": EMAIL_SOURCE,
         "assigned_by": assigned.rule if assigned is not None else None},
        subject=f"ticket/{ticket.id}",
    )
    return ticket


async def append_ticket_update(
    session: AsyncSession, ticket_id: int, *, body: str, author: str | None,
    email_id: int | None, reopen: bool, at: datetime | None = None,
) -> TicketUpdate | None:
    """Log a mail on a ticket; ``reopen`` sets a resolved ticket back to open. ``at``: when the
    entry was written (an archived mail's date; default now)."""
    ticket = await session.get(Ticket, ticket_id, with_for_update=True)
    if ticket is None:
        return None
    before = ticket.status
    after = TicketStatus.OPEN if reopen and before == TicketStatus.RESOLVED else before
    update = TicketUpdate(
        ticket_id=ticket_id, body=body, author=author, email_id=email_id,
        status_from=str(before) if after != before else None,
        status_to=str(after) if after != before else None,
    )
    if at is not None:
        update.created_at = at
    if after != before:
        ticket.status = after
        ticket.resolved_at = None
    session.add(update)
    await session.flush()
    record_event(
        session, "ticket.updated",
        {"id": ticket_id, "update_id": update.id, "email_id": email_id, "author": author,
         "status": str(after), "status_from": update.status_from, "status_to": update.status_to,
         "reopened": after != before},
        subject=f"ticket/{ticket_id}",
    )
    return update


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
