"""Service tickets: status transitions with a running log of updates."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import (
    Account,
    Contact,
    Invoice,
    Order,
    Ticket,
    TicketStatus,
    TicketUpdate,
    User,
)
from mailsvc.crmstore.outbox import record_event
from mailsvc.crmstore.services.assignment import load_assigner
from mailsvc.crmstore.services.common import (
    actor_id,
    apply_changes,
    check_choice,
    ensure_exists,
    get_or_404,
    normalise_email,
    same_account,
)
from mailsvc.errors import Conflict, RuleViolation

# Which status may follow which; a closed ticket is reopened (to open) by a new request.
TICKET_MOVES: dict[TicketStatus, frozenset[TicketStatus]] = {
    TicketStatus.OPEN: frozenset({TicketStatus.IN_PROGRESS, TicketStatus.RESOLVED,
                                  TicketStatus.CLOSED}),
    TicketStatus.IN_PROGRESS: frozenset({TicketStatus.OPEN, TicketStatus.RESOLVED,
                                         TicketStatus.CLOSED}),
    TicketStatus.RESOLVED: frozenset({TicketStatus.IN_PROGRESS, TicketStatus.OPEN,
                                      TicketStatus.CLOSED}),
    TicketStatus.CLOSED: frozenset({TicketStatus.OPEN}),
}
TICKET_FIELDS = ("subject", "description", "type", "priority", "value_eur", "account_id",
                 "contact_id", "owner_id", "order_id", "invoice_id", "requester_email",
                 "requester_name")


async def _check(session: AsyncSession, fields: Mapping[str, Any]) -> int | None:
    """References exist and agree on the account; returns that account."""
    await ensure_exists(session, Account, fields.get("account_id"), "account")
    await ensure_exists(session, Contact, fields.get("contact_id"), "contact")
    await ensure_exists(session, User, fields.get("owner_id"), "user")
    await ensure_exists(session, Order, fields.get("order_id"), "order")
    await ensure_exists(session, Invoice, fields.get("invoice_id"), "invoice")
    if fields.get("order_id") is not None and fields.get("invoice_id") is not None:
        raise RuleViolation("a ticket concerns one order or one invoice, not both")
    if fields.get("value_eur") is not None and fields["value_eur"] < 0:
        raise RuleViolation("a ticket's value cannot be negative")
    return await same_account(session, fields.get("account_id"),
                              contact_id=fields.get("contact_id"),
                              order_id=fields.get("order_id"), invoice_id=fields.get("invoice_id"))


async def _author(session: AsyncSession, given: str | None) -> str | None:
    """The author shown on an update: as given, else the acting user's address."""
    if given is not None:
        return given
    user_id = actor_id(session)
    user = await session.get(User, user_id) if user_id is not None else None
    return user.email if user is not None else None


async def create_ticket(
    session: AsyncSession, subject: str, *, description: str = "",
    account_id: int | None = None, contact_id: int | None = None, owner_id: int | None = None,
    requester_email: str | None = None, requester_name: str | None = None,
    type: str = "question", priority: str = "normal", value_eur: Decimal | None = None,
    order_id: int | None = None, invoice_id: int | None = None,
) -> Ticket:
    """Open a ticket; without an owner it is assigned automatically (``services.assignment``)."""
    if not subject.strip():
        raise RuleViolation("a ticket needs a subject")
    account_id = await _check(session, {
        "account_id": account_id, "contact_id": contact_id, "owner_id": owner_id,
        "order_id": order_id, "invoice_id": invoice_id, "value_eur": value_eur})
    ticket_type = await check_choice(session, "ticket_type", type) or type
    assigned = None
    if owner_id is None:
        assigned = (await load_assigner(session)).assign(ticket_type)
        owner_id = assigned.user_id if assigned is not None else None
    ticket = Ticket(
        subject=subject[:500], description=description, account_id=account_id,
        contact_id=contact_id, owner_id=owner_id,
        requester_email=normalise_email(requester_email) if requester_email else None,
        requester_name=requester_name, type=ticket_type,
        priority=await check_choice(session, "priority", priority), value_eur=value_eur,
        order_id=order_id, invoice_id=invoice_id, updates=[],
    )
    session.add(ticket)
    await session.flush()
    record_event(
        session, "ticket.created",
        {"id": ticket.id, "subject": ticket.subject, "account_id": account_id,
         "contact_id": contact_id, "owner_id": owner_id, "type": ticket.type,
         "assigned_by": assigned.rule if assigned is not None else None},
        subject=f"ticket/{ticket.id}",
    )
    return ticket


async def update_ticket(
    session: AsyncSession, ticket_id: int, changes: Mapping[str, Any], author: str | None = None,
) -> Ticket:
    """Edit fields; a ``status`` in ``changes`` goes through the transition rules."""
    ticket = await get_or_404(session, Ticket, ticket_id)
    changes = dict(changes)
    status = changes.pop("status", None)
    merged = {name: getattr(ticket, name)
              for name in ("order_id", "invoice_id", "account_id", "contact_id")}
    merged.update(changes)
    await _check(session, merged)
    if changes.get("type") is not None:
        changes["type"] = await check_choice(session, "ticket_type", changes["type"])
    if changes.get("priority") is not None:
        changes["priority"] = await check_choice(session, "priority", changes["priority"])
    for required in ("subject", "type", "priority"):
        if required in changes and not changes[required]:
            raise RuleViolation(f"a ticket needs a {required}")
    changed = apply_changes(ticket, changes, TICKET_FIELDS)
    if changed:
        await session.flush()
        record_event(session, "ticket.updated", {"id": ticket.id, "changed": sorted(changed)},
                     subject=f"ticket/{ticket.id}")
    if status is not None and status != ticket.status:
        await change_ticket_status(session, ticket_id, status, author=author)
    return ticket


async def change_ticket_status(
    session: AsyncSession, ticket_id: int, status: TicketStatus, *, note: str = "",
    author: str | None = None, email_id: int | None = None,
) -> TicketUpdate:
    ticket = await get_or_404(session, Ticket, ticket_id)
    if status == ticket.status:
        raise Conflict(f"ticket {ticket_id} is {status} already")
    if status not in TICKET_MOVES[ticket.status]:
        raise RuleViolation(f"ticket {ticket_id} cannot go from {ticket.status} to {status}")
    now = utcnow()
    previous = ticket.status
    ticket.status = status
    if status in (TicketStatus.RESOLVED, TicketStatus.CLOSED):
        ticket.resolved_at = ticket.resolved_at or now
        if status == TicketStatus.CLOSED:
            ticket.closed_at = now
    else:  # reopened
        ticket.resolved_at = None
        ticket.closed_at = None
    update = TicketUpdate(ticket_id=ticket.id, body=note, author=await _author(session, author),
                          author_id=actor_id(session), status_from=str(previous),
                          status_to=str(status), email_id=email_id, created_at=now)
    session.add(update)
    await session.flush()
    record_event(session, "ticket.updated",
                 {"id": ticket.id, "status_from": str(previous), "status_to": str(status),
                  "update_id": update.id}, subject=f"ticket/{ticket.id}")
    return update


async def add_ticket_update(
    session: AsyncSession, ticket_id: int, body: str, *, author: str | None = None,
    status: TicketStatus | None = None, email_id: int | None = None,
) -> TicketUpdate:
    """Add a progress entry; with ``status`` it is also a status change."""
    ticket = await get_or_404(session, Ticket, ticket_id)
    if status is not None and status != ticket.status:
        return await change_ticket_status(session, ticket_id, status, note=body, author=author,
                                          email_id=email_id)
    if not body.strip():
        raise RuleViolation("an update needs a text")
    update = TicketUpdate(ticket_id=ticket.id, body=body, author=await _author(session, author),
                          author_id=actor_id(session), email_id=email_id, created_at=utcnow())
    session.add(update)
    await session.flush()
    record_event(session, "ticket.updated", {"id": ticket.id, "update_id": update.id},
                 subject=f"ticket/{ticket.id}")
    return update
