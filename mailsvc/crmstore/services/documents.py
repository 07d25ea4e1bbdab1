"""Quotes, orders and invoices, with their status rules."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import (
    Account,
    Contact,
    Invoice,
    InvoiceStatus,
    Opportunity,
    Order,
    OrderStatus,
    Quote,
    QuoteStatus,
    User,
)
from mailsvc.crmstore.outbox import record_event
from mailsvc.crmstore.services.common import (
    DuplicateRecord,
    apply_changes,
    ensure_exists,
    get_or_404,
    same_account,
)
from mailsvc.errors import Conflict, RuleViolation

QUOTE_MOVES = {
    QuoteStatus.OPEN: {QuoteStatus.SENT, QuoteStatus.ACCEPTED, QuoteStatus.REJECTED},
    QuoteStatus.SENT: {QuoteStatus.ACCEPTED, QuoteStatus.REJECTED},
    QuoteStatus.ACCEPTED: set(),
    QuoteStatus.REJECTED: set(),
}
ORDER_MOVES = {
    OrderStatus.OPEN: {OrderStatus.CONFIRMED, OrderStatus.DELIVERED, OrderStatus.CANCELLED},
    OrderStatus.CONFIRMED: {OrderStatus.DELIVERED, OrderStatus.CANCELLED},
    OrderStatus.DELIVERED: set(),
    OrderStatus.CANCELLED: set(),
}


def invoice_status(invoice: Invoice, today: date) -> str:
    """The status a user sees: ``overdue`` is an open invoice past its due date."""
    if invoice.status == InvoiceStatus.OPEN and invoice.due_date < today:
        return "overdue"
    return str(invoice.status)


async def _defaults_from_opportunity(
    session: AsyncSession, fields: dict[str, Any]
) -> dict[str, Any]:
    await ensure_exists(session, Account, fields.get("account_id"), "account")
    await ensure_exists(session, User, fields.get("owner_id"), "user")
    await ensure_exists(session, Contact, fields.get("contact_id"), "contact")
    if fields.get("opportunity_id") is not None:
        opportunity = await get_or_404(session, Opportunity, fields["opportunity_id"])
        if opportunity.status == "lost":
            raise RuleViolation(f"opportunity {opportunity.id} is lost: no new documents")
        await same_account(session, fields.get("account_id"), opportunity=opportunity)
        for name in ("account_id", "owner_id", "contact_id"):
            if name in fields and fields[name] is None:
                fields[name] = getattr(opportunity, name)
    await same_account(session, fields.get("account_id"), contact_id=fields.get("contact_id"))
    if fields.get("amount") is not None and fields["amount"] < 0:
        raise RuleViolation("an amount cannot be negative")
    return fields


async def _ordered(session: AsyncSession, quote_id: int, exclude: int | None = None) -> int | None:
    """The live (not cancelled) order made from the quote, if any."""
    query = select(Order.id).where(Order.quote_id == quote_id,
                                   Order.status != OrderStatus.CANCELLED)
    if exclude is not None:
        query = query.where(Order.id != exclude)
    return await session.scalar(query.order_by(Order.id).limit(1))


async def _invoiced(session: AsyncSession, order_id: int, exclude: int | None = None) -> Decimal:
    """What the order's invoices (not cancelled) add up to."""
    query = select(func.coalesce(func.sum(Invoice.amount), 0)).where(
        Invoice.order_id == order_id, Invoice.status != InvoiceStatus.CANCELLED)
    if exclude is not None:
        query = query.where(Invoice.id != exclude)
    return Decimal(str(await session.scalar(query) or 0))


async def check_amount(session: AsyncSession, kind: str, document_id: int, amount: Decimal
                       ) -> None:
    """A new amount of a document keeps the invoice rules: an invoice within its order, an
    order not below what is invoiced of it."""
    if kind == "invoice":
        invoice = await get_or_404(session, Invoice, document_id)
        if invoice.order_id is not None:
            order = await get_or_404(session, Order, invoice.order_id)
            await _check_invoice_cap(session, order, amount, exclude=invoice.id)
    elif kind == "order":
        invoiced = await _invoiced(session, document_id)
        if amount < invoiced:
            raise RuleViolation(f"order {document_id} is invoiced for {invoiced:.2f} already: "
                                "its amount cannot be less")


async def _check_invoice_cap(
    session: AsyncSession, order: Order, amount: Decimal, exclude: int | None = None
) -> None:
    invoiced = await _invoiced(session, order.id, exclude)
    if invoiced + amount > order.amount:
        left = max(order.amount - invoiced, Decimal("0"))
        raise RuleViolation(
            f"order {order.id} is for {order.amount:.2f}, {invoiced:.2f} of it invoiced already: "
            f"an invoice of {amount:.2f} exceeds the {left:.2f} left")


async def create_quote(
    session: AsyncSession, title: str, amount: Decimal, *, valid_until: date | None = None,
    opportunity_id: int | None = None, account_id: int | None = None,
    contact_id: int | None = None, owner_id: int | None = None,
) -> Quote:
    if not title.strip():
        raise RuleViolation("a quote needs a title")
    fields = await _defaults_from_opportunity(session, {
        "opportunity_id": opportunity_id, "account_id": account_id, "contact_id": contact_id,
        "owner_id": owner_id, "amount": amount})
    quote = Quote(title=title.strip(), valid_until=valid_until, **fields)
    session.add(quote)
    await session.flush()
    record_event(session, "quote.created", {"id": quote.id, "amount": str(amount),
                                            "opportunity_id": quote.opportunity_id},
                 subject=f"quote/{quote.id}")
    return quote


async def _change(
    session: AsyncSession, document: Quote | Order | Invoice, label: str, final: bool,
    changes: Mapping[str, Any], editable: tuple[str, ...],
) -> None:
    """The rules every commercial document shares when it is edited."""
    if final:
        raise RuleViolation(
            f"{label} {document.id} is {document.status} and can no longer change"
        )
    if changes.get("amount") is not None and changes["amount"] < 0:
        raise RuleViolation("an amount cannot be negative")
    await ensure_exists(session, User, changes.get("owner_id"), "user")
    apply_changes(document, changes, editable)


async def update_quote(session: AsyncSession, quote_id: int, changes: Mapping[str, Any]) -> Quote:
    quote = await get_or_404(session, Quote, quote_id)
    final = quote.status in (QuoteStatus.ACCEPTED, QuoteStatus.REJECTED)
    await _change(session, quote, "quote", final, changes,
                  ("title", "amount", "valid_until", "owner_id"))
    await session.flush()
    return quote


async def set_quote_status(session: AsyncSession, quote_id: int, status: QuoteStatus) -> Quote:
    quote = await get_or_404(session, Quote, quote_id)
    if status == quote.status:
        raise Conflict(f"quote {quote_id} is {status} already")
    if status not in QUOTE_MOVES[quote.status]:
        raise RuleViolation(f"quote {quote_id} cannot go from {quote.status} to {status}")
    now = utcnow()
    quote.status = status
    if status == QuoteStatus.SENT:
        quote.sent_at = now
    else:
        quote.sent_at = quote.sent_at or now
        quote.decided_at = now
    await session.flush()
    record_event(session, f"quote.{status}", {"id": quote.id}, subject=f"quote/{quote.id}")
    return quote


async def create_order(
    session: AsyncSession, title: str, amount: Decimal, *, delivery_date: date | None = None,
    quote_id: int | None = None, opportunity_id: int | None = None,
    account_id: int | None = None, owner_id: int | None = None,
) -> Order:
    if not title.strip():
        raise RuleViolation("an order needs a title")
    if quote_id is not None:
        quote = await get_or_404(session, Quote, quote_id)
        if quote.status != QuoteStatus.ACCEPTED:
            raise RuleViolation(f"quote {quote_id} is {quote.status}: only an accepted quote "
                                "becomes an order")
        ordered = await _ordered(session, quote_id)
        if ordered is not None:
            raise DuplicateRecord(f"quote {quote_id} became order {ordered} already (cancel that "
                                  "order to order it again)", "order", ordered)
        await same_account(session, account_id, quote=quote)
        if opportunity_id is not None and quote.opportunity_id not in (None, opportunity_id):
            raise RuleViolation(f"quote {quote_id} belongs to opportunity {quote.opportunity_id}, "
                                f"not to opportunity {opportunity_id}")
        opportunity_id = opportunity_id or quote.opportunity_id
        account_id = account_id or quote.account_id
    fields = await _defaults_from_opportunity(session, {
        "opportunity_id": opportunity_id, "account_id": account_id, "owner_id": owner_id,
        "amount": amount})
    order = Order(title=title.strip(), delivery_date=delivery_date, quote_id=quote_id, **fields)
    session.add(order)
    await session.flush()
    record_event(session, "order.created", {"id": order.id, "amount": str(amount),
                                            "opportunity_id": order.opportunity_id},
                 subject=f"order/{order.id}")
    return order


async def update_order(session: AsyncSession, order_id: int, changes: Mapping[str, Any]) -> Order:
    order = await get_or_404(session, Order, order_id)
    final = order.status in (OrderStatus.DELIVERED, OrderStatus.CANCELLED)
    if changes.get("amount") is not None and not final:
        invoiced = await _invoiced(session, order.id)
        if changes["amount"] < invoiced:
            raise RuleViolation(f"order {order.id} is invoiced for {invoiced:.2f} already: its "
                                "amount cannot be less")
    await _change(session, order, "order", final, changes,
                  ("title", "amount", "delivery_date", "owner_id"))
    await session.flush()
    return order


async def set_order_status(session: AsyncSession, order_id: int, status: OrderStatus) -> Order:
    order = await get_or_404(session, Order, order_id)
    if status == order.status:
        raise Conflict(f"order {order_id} is {status} already")
    if status not in ORDER_MOVES[order.status]:
        raise RuleViolation(f"order {order_id} cannot go from {order.status} to {status}")
    order.status = status
    if status == OrderStatus.DELIVERED:
        order.delivered_at = utcnow()
    await session.flush()
    record_event(session, f"order.{status}", {"id": order.id}, subject=f"order/{order.id}")
    return order


async def create_invoice(
    session: AsyncSession, amount: Decimal, due_date: date, *, issued_on: date | None = None,
    number: str | None = None, order_id: int | None = None, opportunity_id: int | None = None,
    account_id: int | None = None, owner_id: int | None = None,
) -> Invoice:
    issued_on = issued_on or utcnow().date()
    if due_date < issued_on:
        raise RuleViolation("an invoice cannot be due before it is issued")
    if order_id is not None:
        order = await get_or_404(session, Order, order_id)
        if order.status == OrderStatus.CANCELLED:
            raise RuleViolation(f"order {order_id} is cancelled: no invoice for it")
        await same_account(session, account_id, order=order)
        if opportunity_id is not None and order.opportunity_id not in (None, opportunity_id):
            raise RuleViolation(f"order {order_id} belongs to opportunity {order.opportunity_id}, "
                                f"not to opportunity {opportunity_id}")
        await _check_invoice_cap(session, order, amount)
        opportunity_id = opportunity_id or order.opportunity_id
        account_id = account_id or order.account_id
    if number and await session.scalar(select(Invoice.id).where(Invoice.number == number)):
        raise Conflict(f"invoice number {number} exists already")
    fields = await _defaults_from_opportunity(session, {
        "opportunity_id": opportunity_id, "account_id": account_id, "owner_id": owner_id,
        "amount": amount})
    invoice = Invoice(issued_on=issued_on, due_date=due_date, number=number, order_id=order_id,
                      **fields)
    session.add(invoice)
    await session.flush()
    if not number:
        invoice.number = f"INV-{issued_on.year}-{invoice.id:05d}"
        await session.flush()
    record_event(session, "invoice.created", {"id": invoice.id, "number": invoice.number,
                                              "amount": str(amount)},
                 subject=f"invoice/{invoice.id}")
    return invoice


async def update_invoice(
    session: AsyncSession, invoice_id: int, changes: Mapping[str, Any]
) -> Invoice:
    invoice = await get_or_404(session, Invoice, invoice_id)
    if changes.get("amount") is not None and invoice.order_id is not None:
        order = await get_or_404(session, Order, invoice.order_id)
        await _check_invoice_cap(session, order, changes["amount"], exclude=invoice.id)
    await _change(session, invoice, "invoice", invoice.status != InvoiceStatus.OPEN, changes,
                  ("amount", "due_date", "owner_id"))
    if invoice.due_date < invoice.issued_on:
        raise RuleViolation("an invoice cannot be due before it is issued")
    await session.flush()
    return invoice


async def pay_invoice(session: AsyncSession, invoice_id: int, paid_date: date) -> Invoice:
    invoice = await get_or_404(session, Invoice, invoice_id)
    if invoice.status == InvoiceStatus.PAID:
        raise Conflict(f"invoice {invoice_id} is paid already")
    if invoice.status != InvoiceStatus.OPEN:
        raise RuleViolation(f"invoice {invoice_id} is {invoice.status}: only an open invoice "
                            "can be paid")
    if paid_date < invoice.issued_on:
        raise RuleViolation("an invoice cannot be paid before it is issued")
    invoice.status = InvoiceStatus.PAID
    invoice.paid_date = paid_date
    await session.flush()
    record_event(session, "invoice.paid", {"id": invoice.id, "paid_date": paid_date.isoformat()},
                 subject=f"invoice/{invoice.id}")
    return invoice


async def cancel_invoice(session: AsyncSession, invoice_id: int) -> Invoice:
    invoice = await get_or_404(session, Invoice, invoice_id)
    if invoice.status == InvoiceStatus.CANCELLED:
        raise Conflict(f"invoice {invoice_id} is cancelled already")
    if invoice.status != InvoiceStatus.OPEN:
        raise RuleViolation(f"invoice {invoice_id} is {invoice.status} and cannot be cancelled")
    invoice.status = InvoiceStatus.CANCELLED
    await session.flush()
    record_event(session, "invoice.cancelled", {"id": invoice.id},
                 subject=f"invoice/{invoice.id}")
    return invoice
