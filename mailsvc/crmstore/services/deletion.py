"""Deleting opportunities, quotes, orders and invoices: only what no business fact rests on.

A record is deleted when it was a mistake, never to rewrite what happened: revenue that was won,
an order that was placed from an accepted quote, an invoice that was paid stay (cancel them
instead). What a deleted record leaves behind keeps its history: e-mails are unlinked from it
(each with its ``email.unlinked`` event), done activities stay on the contact's and account's
timeline without it, a converted inbox lead stays converted without the link. Every refusal is a
``Conflict`` (409) that names what is in the way.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from mailsvc.crmstore.models import (
    Activity,
    EmailLink,
    InboxLead,
    Invoice,
    InvoiceStatus,
    LinkTarget,
    Opportunity,
    OpportunityStatus,
    Order,
    OrderStatus,
    Quote,
    Ticket,
)
from mailsvc.crmstore.outbox import record_event
from mailsvc.crmstore.services.common import get_or_404
from mailsvc.crmstore.services.emails import unlink_email
from mailsvc.errors import Conflict


def _ids(what: str, ids: Sequence[int]) -> str:
    """'orders 3, 4' / 'order 3'."""
    return f"{what}{'s' if len(ids) > 1 else ''} {', '.join(str(i) for i in ids)}"


async def _tickets_on(session: AsyncSession, column: InstrumentedAttribute[int | None],
                      record_id: int) -> list[int]:
    """The tickets that concern the order or invoice (a ticket keeps what it is about)."""
    return list(await session.scalars(
        select(Ticket.id).where(column == record_id).order_by(Ticket.id)))


async def delete_invoice(session: AsyncSession, invoice_id: int) -> None:
    """An open or cancelled invoice no ticket concerns; a paid one is booked (409)."""
    invoice = await get_or_404(session, Invoice, invoice_id)
    if invoice.status == InvoiceStatus.PAID:
        raise Conflict(f"invoice {invoice_id} is paid: a paid invoice cannot be deleted")
    tickets = await _tickets_on(session, Ticket.invoice_id, invoice_id)
    if tickets:
        raise Conflict(f"invoice {invoice_id} cannot be deleted: {_ids('ticket', tickets)} "
                       "concern it")
    data = {"id": invoice_id, "number": invoice.number, "status": str(invoice.status),
            "amount": str(invoice.amount), "order_id": invoice.order_id,
            "opportunity_id": invoice.opportunity_id, "account_id": invoice.account_id}
    await session.delete(invoice)
    await session.flush()
    record_event(session, "invoice.deleted", data, subject=f"invoice/{invoice_id}")


async def delete_order(session: AsyncSession, order_id: int) -> None:
    """An order that was not delivered and has no invoice and no ticket (409 otherwise)."""
    order = await get_or_404(session, Order, order_id)
    if order.status == OrderStatus.DELIVERED:
        raise Conflict(f"order {order_id} is delivered: a delivered order cannot be deleted")
    invoices = list(await session.scalars(
        select(Invoice.id).where(Invoice.order_id == order_id).order_by(Invoice.id)))
    if invoices:
        raise Conflict(f"order {order_id} cannot be deleted: it has {_ids('invoice', invoices)}")
    tickets = await _tickets_on(session, Ticket.order_id, order_id)
    if tickets:
        raise Conflict(f"order {order_id} cannot be deleted: {_ids('ticket', tickets)} "
                       "concern it")
    data = {"id": order_id, "status": str(order.status), "amount": str(order.amount),
            "quote_id": order.quote_id, "opportunity_id": order.opportunity_id,
            "account_id": order.account_id}
    await session.delete(order)
    await session.flush()
    record_event(session, "order.deleted", data, subject=f"order/{order_id}")


async def delete_quote(session: AsyncSession, quote_id: int) -> None:
    """A quote no order was made from (an accepted quote with an order is 409)."""
    quote = await get_or_404(session, Quote, quote_id)
    orders = list(await session.scalars(
        select(Order.id).where(Order.quote_id == quote_id).order_by(Order.id)))
    if orders:
        raise Conflict(f"quote {quote_id} cannot be deleted: {_ids('order', orders)} "
                       f"{'were' if len(orders) > 1 else 'was'} made from it")
    data = {"id": quote_id, "status": str(quote.status), "amount": str(quote.amount),
            "opportunity_id": quote.opportunity_id, "account_id": quote.account_id}
    await session.delete(quote)
    await session.flush()
    record_event(session, "quote.deleted", data, subject=f"quote/{quote_id}")


async def _opportunity_blockers(session: AsyncSession, opportunity: Opportunity) -> str | None:
    """Why the opportunity cannot go, if it cannot: won, or with orders or invoices."""
    if opportunity.status == OpportunityStatus.WON:
        return (f"opportunity {opportunity.id} is won: its revenue is booked, it cannot be "
                "deleted")
    orders = list(await session.scalars(
        select(Order.id).where(Order.opportunity_id == opportunity.id).order_by(Order.id)))
    invoices = list(await session.scalars(
        select(Invoice.id).where(Invoice.opportunity_id == opportunity.id).order_by(Invoice.id)))
    if orders or invoices:
        found = " and ".join(part for part in (
            _ids("order", orders) if orders else "", _ids("invoice", invoices) if invoices else "",
        ) if part)
        return f"opportunity {opportunity.id} cannot be deleted: it has {found}"
    return None


async def delete_opportunity(session: AsyncSession, opportunity_id: int) -> None:
    """Delete an opportunity that is not won and has no order or invoice.

    Its quotes go with it (``quote.deleted`` each); its e-mails are unlinked, not deleted
    (``email.unlinked`` each); its open activities are deleted (``activity.deleted``), its done
    ones (calls, meetings, logged mails) stay on the contact's and account's timeline without
    it; an inbox lead converted into it keeps its status and loses the link. Stage history,
    monthly snapshots, tags and subscribers go with it."""
    opportunity = await get_or_404(session, Opportunity, opportunity_id)
    reason = await _opportunity_blockers(session, opportunity)
    if reason is not None:
        raise Conflict(reason)
    quotes = list(await session.scalars(
        select(Quote.id).where(Quote.opportunity_id == opportunity_id).order_by(Quote.id)))
    for quote_id in quotes:
        await delete_quote(session, quote_id)
    links = list(await session.execute(
        select(EmailLink.email_id).where(EmailLink.target_type == LinkTarget.OPPORTUNITY,
                                         EmailLink.target_id == opportunity_id)
        .order_by(EmailLink.email_id)))
    emails = [email_id for (email_id,) in links]
    for email_id in emails:
        await unlink_email(session, email_id, LinkTarget.OPPORTUNITY, opportunity_id)
    activities = list(await session.scalars(
        select(Activity).where(Activity.opportunity_id == opportunity_id).order_by(Activity.id)))
    deleted, kept = [], []
    for activity in activities:
        if activity.done:
            activity.opportunity_id = None
            kept.append(activity.id)
        else:
            await session.delete(activity)
            deleted.append(activity.id)
    leads = list(await session.scalars(
        select(InboxLead).where(InboxLead.opportunity_id == opportunity_id)))
    for lead in leads:
        lead.opportunity_id = None
    data = {"id": opportunity_id, "title": opportunity.title, "kind": str(opportunity.kind),
            "status": str(opportunity.status), "account_id": opportunity.account_id,
            "owner_id": opportunity.owner_id, "quote_ids": quotes, "email_ids": emails,
            "deleted_activity_ids": deleted, "kept_activity_ids": kept,
            "inbox_lead_ids": [lead.id for lead in leads]}
    await session.flush()
    await session.delete(opportunity)
    await session.flush()
    for activity_id in deleted:
        record_event(session, "activity.deleted",
                     {"id": activity_id, "opportunity_id": opportunity_id, "ticket_id": None},
                     subject=f"activity/{activity_id}")
    record_event(session, "opportunity.deleted", data, subject=f"opportunity/{opportunity_id}")
