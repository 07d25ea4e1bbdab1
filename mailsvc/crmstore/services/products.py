"""Products and the line items of quotes, orders and invoices; a document's amount is derived."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.models import (
    Invoice,
    InvoiceStatus,
    LineItem,
    Order,
    OrderStatus,
    Product,
    Quote,
    QuoteStatus,
)
from mailsvc.crmstore.outbox import record_event
from mailsvc.crmstore.services.common import DuplicateRecord, apply_changes, get_or_404
from mailsvc.crmstore.services.documents import check_amount
from mailsvc.errors import RuleViolation

CENT = Decimal("0.01")
DocumentKind = Literal["quote", "order", "invoice"]
_MODELS: dict[str, type[Quote] | type[Order] | type[Invoice]] = {
    "quote": Quote, "order": Order, "invoice": Invoice}
# While a document may still change (its lines with it).
_OPEN: dict[str, frozenset[str]] = {
    "quote": frozenset({QuoteStatus.OPEN.value, QuoteStatus.SENT.value}),
    "order": frozenset({OrderStatus.OPEN.value, OrderStatus.CONFIRMED.value}),
    "invoice": frozenset({InvoiceStatus.OPEN.value})}


@dataclass(frozen=True, slots=True)
class LineSpec:
    quantity: Decimal
    description: str | None = None
    product_id: int | None = None
    unit_price: Decimal | None = None  # default: the product's price
    discount_percent: Decimal = Decimal("0")
    tax_rate: Decimal | None = None  # default: the product's rate, else 0


@dataclass(frozen=True, slots=True)
class Totals:
    net: Decimal
    tax: Decimal
    gross: Decimal


def line_net(quantity: Decimal, unit_price: Decimal, discount_percent: Decimal) -> Decimal:
    gross = quantity * unit_price * (Decimal(100) - discount_percent) / Decimal(100)
    return gross.quantize(CENT, rounding=ROUND_HALF_UP)


def line_tax(net: Decimal, tax_rate: Decimal) -> Decimal:
    return (net * tax_rate / Decimal(100)).quantize(CENT, rounding=ROUND_HALF_UP)


def totals(items: Sequence[LineItem]) -> Totals:
    net = sum((i.net for i in items), Decimal("0")).quantize(CENT)
    tax = sum((line_tax(i.net, i.tax_rate) for i in items), Decimal("0")).quantize(CENT)
    return Totals(net, tax, net + tax)


def _check_rate(value: Decimal, what: str) -> None:
    if not Decimal(0) <= value <= Decimal(100):
        raise RuleViolation(f"a {what} is a percentage from 0 to 100, not {value}")


async def create_product(
    session: AsyncSession, name: str, unit_price: Decimal, *, sku: str | None = None,
    tax_rate: Decimal = Decimal("0"),
) -> Product:
    name = name.strip()
    if not name:
        raise RuleViolation("a product needs a name")
    if unit_price < 0:
        raise RuleViolation("a price cannot be negative")
    _check_rate(tax_rate, "tax rate")
    await _unique(session, name, sku)
    product = Product(name=name, sku=(sku or "").strip() or None, unit_price=unit_price,
                      tax_rate=tax_rate)
    session.add(product)
    await session.flush()
    record_event(session, "product.created", {"id": product.id, "name": product.name},
                 subject=f"product/{product.id}")
    return product


async def _unique(session: AsyncSession, name: str | None, sku: str | None,
                  exclude: int | None = None) -> None:
    for column, value in ((Product.name, name), (Product.sku, sku)):
        if not value:
            continue
        query = select(Product.id).where(func.lower(column) == value.strip().lower())
        if exclude is not None:
            query = query.where(Product.id != exclude)
        found = await session.scalar(query)
        if found is not None:
            raise DuplicateRecord(f"product {found} has the {column.key} {value.strip()!r} "
                                  "already", "product", found)


async def update_product(
    session: AsyncSession, product_id: int, changes: Mapping[str, Any]
) -> Product:
    product = await get_or_404(session, Product, product_id, "product")
    await _unique(session, changes.get("name"), changes.get("sku"), exclude=product.id)
    if changes.get("unit_price") is not None and changes["unit_price"] < 0:
        raise RuleViolation("a price cannot be negative")
    if changes.get("tax_rate") is not None:
        _check_rate(changes["tax_rate"], "tax rate")
    changed = apply_changes(product, changes, ("name", "sku", "unit_price", "tax_rate", "active"))
    await session.flush()
    if changed:
        record_event(session, "product.updated", {"id": product.id, "changed": sorted(changed)},
                     subject=f"product/{product.id}")
    return product


async def line_items(session: AsyncSession, kind: DocumentKind, document_id: int
                     ) -> list[LineItem]:
    await get_or_404(session, _MODELS[kind], document_id, kind)
    column = getattr(LineItem, f"{kind}_id")
    return list(await session.scalars(
        select(LineItem).where(column == document_id).order_by(LineItem.position, LineItem.id)))


async def set_line_items(
    session: AsyncSession, kind: DocumentKind, document_id: int, specs: Sequence[LineSpec],
) -> list[LineItem]:
    """Replace the document's lines; its amount becomes their net total. Only while the
    document can still change; an invoice stays within its order, an order above what is
    invoiced."""
    document = await get_or_404(session, _MODELS[kind], document_id, kind)
    if str(document.status) not in _OPEN[kind]:
        raise RuleViolation(f"{kind} {document_id} is {document.status} and can no longer "
                            "change")
    lines: list[LineItem] = []
    for position, spec in enumerate(specs):
        product = (await get_or_404(session, Product, spec.product_id, "product")
                   if spec.product_id is not None else None)
        description = (spec.description or (product.name if product else "")).strip()
        if not description:
            raise RuleViolation(f"line {position + 1} needs a product or a description")
        if spec.quantity <= 0:
            raise RuleViolation(f"line {position + 1}: the quantity must be positive")
        price = spec.unit_price if spec.unit_price is not None else (
            product.unit_price if product else None)
        if price is None:
            raise RuleViolation(f"line {position + 1} needs a unit price")
        if price < 0:
            raise RuleViolation(f"line {position + 1}: a price cannot be negative")
        _check_rate(spec.discount_percent, "discount")
        rate = spec.tax_rate if spec.tax_rate is not None else (
            product.tax_rate if product else Decimal("0"))
        _check_rate(rate, "tax rate")
        lines.append(LineItem(
            **{f"{kind}_id": document_id}, position=position,
            product_id=product.id if product else None, description=description[:500],
            quantity=spec.quantity, unit_price=price, discount_percent=spec.discount_percent,
            tax_rate=rate, net=line_net(spec.quantity, price, spec.discount_percent)))
    amount = totals(lines).net
    await check_amount(session, kind, document_id, amount)
    await session.execute(delete(LineItem).where(getattr(LineItem, f"{kind}_id") == document_id))
    session.add_all(lines)
    document.amount = amount
    await session.flush()
    record_event(session, f"{kind}.updated", {"id": document_id, "changed": ["amount", "items"]},
                 subject=f"{kind}/{document_id}")
    return lines
