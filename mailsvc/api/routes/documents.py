"""Quotes, orders and invoices."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Response

from mailsvc.api import schemas as s
from mailsvc.api import views
from mailsvc.api.deps import Session
from mailsvc.api.listing import equality_filters, page
from mailsvc.api.routes.common import PathId
from mailsvc.crmstore import services
from mailsvc.crmstore.base import utcnow
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
from mailsvc.crmstore.services import products
from mailsvc.crmstore.services.common import get_or_404

router = APIRouter()


class ProductQuery(s.ListQuery):
    active: bool | None = None


class QuoteQuery(s.ListQuery):
    status: QuoteStatus | None = None
    opportunity_id: s.Id | None = None
    account_id: s.Id | None = None
    owner_id: s.Id | None = None


@router.get("/quotes", tags=["quotes"])
async def list_quotes(
    query: Annotated[QuoteQuery, Query()], session: Session
) -> s.Page[s.QuoteOut]:
    rows, total = await page(session, Quote, query, conditions=equality_filters(Quote, query),
                             search=(Quote.title,),
                             sorts=("id", "amount", "valid_until", "created_at"))
    return s.Page(items=[s.QuoteOut.model_validate(r) for r in rows], total=total,
                  limit=query.limit, offset=query.offset)


@router.post("/quotes", tags=["quotes"], status_code=201)
async def create_quote(body: s.QuoteIn, session: Session) -> s.QuoteOut:
    data = body.model_dump()
    quote = await services.create_quote(session, data.pop("title"), data.pop("amount"), **data)
    return s.QuoteOut.model_validate(quote)


@router.get("/quotes/{quote_id}", tags=["quotes"])
async def get_quote(quote_id: PathId, session: Session) -> s.QuoteOut:
    return s.QuoteOut.model_validate(await get_or_404(session, Quote, quote_id))


@router.patch("/quotes/{quote_id}", tags=["quotes"])
async def update_quote(quote_id: PathId, body: s.QuotePatch, session: Session) -> s.QuoteOut:
    quote = await services.update_quote(session, quote_id, body.model_dump(exclude_unset=True))
    return s.QuoteOut.model_validate(quote)


@router.post("/quotes/{quote_id}/status", tags=["quotes"],
             summary="Send, accept or reject a quote")
async def set_quote_status(
    quote_id: PathId, body: s.QuoteStatusIn, session: Session
) -> s.QuoteOut:
    return s.QuoteOut.model_validate(
        await services.set_quote_status(session, quote_id, body.status))


class OrderQuery(s.ListQuery):
    status: OrderStatus | None = None
    opportunity_id: s.Id | None = None
    account_id: s.Id | None = None
    owner_id: s.Id | None = None


@router.get("/orders", tags=["orders"])
async def list_orders(
    query: Annotated[OrderQuery, Query()], session: Session
) -> s.Page[s.OrderOut]:
    rows, total = await page(session, Order, query, conditions=equality_filters(Order, query),
                             search=(Order.title,),
                             sorts=("id", "amount", "delivery_date", "created_at"))
    return s.Page(items=[s.OrderOut.model_validate(r) for r in rows], total=total,
                  limit=query.limit, offset=query.offset)


@router.post("/orders", tags=["orders"], status_code=201)
async def create_order(body: s.OrderIn, session: Session) -> s.OrderOut:
    data = body.model_dump()
    order = await services.create_order(session, data.pop("title"), data.pop("amount"), **data)
    return s.OrderOut.model_validate(order)


@router.get("/orders/{order_id}", tags=["orders"])
async def get_order(order_id: PathId, session: Session) -> s.OrderOut:
    return s.OrderOut.model_validate(await get_or_404(session, Order, order_id))


@router.patch("/orders/{order_id}", tags=["orders"])
async def update_order(order_id: PathId, body: s.OrderPatch, session: Session) -> s.OrderOut:
    order = await services.update_order(session, order_id, body.model_dump(exclude_unset=True))
    return s.OrderOut.model_validate(order)


@router.post("/orders/{order_id}/status", tags=["orders"],
             summary="Confirm, deliver or cancel an order")
async def set_order_status(
    order_id: PathId, body: s.OrderStatusIn, session: Session
) -> s.OrderOut:
    return s.OrderOut.model_validate(
        await services.set_order_status(session, order_id, body.status))


class InvoiceQuery(s.ListQuery):
    status: Literal["open", "paid", "cancelled", "overdue"] | None = None
    opportunity_id: s.Id | None = None
    account_id: s.Id | None = None
    order_id: s.Id | None = None
    owner_id: s.Id | None = None
    due_from: s.Day | None = None
    due_to: s.Day | None = None


@router.get("/invoices", tags=["invoices"])
async def list_invoices(
    query: Annotated[InvoiceQuery, Query()], session: Session
) -> s.Page[s.InvoiceOut]:
    today: date = utcnow().date()
    conditions = equality_filters(Invoice, query, skip=("status",))
    if query.status == "overdue":
        conditions += [Invoice.status == InvoiceStatus.OPEN, Invoice.due_date < today]
    elif query.status == "open":
        conditions += [Invoice.status == InvoiceStatus.OPEN, Invoice.due_date >= today]
    elif query.status:
        conditions.append(Invoice.status == InvoiceStatus(query.status))
    if query.due_from:
        conditions.append(Invoice.due_date >= query.due_from)
    if query.due_to:
        conditions.append(Invoice.due_date <= query.due_to)
    rows, total = await page(session, Invoice, query, conditions=conditions,
                             search=(Invoice.number,),
                             sorts=("id", "amount", "due_date", "issued_on", "created_at"))
    return s.Page(items=[views.invoice(r) for r in rows], total=total, limit=query.limit,
                  offset=query.offset)


@router.post("/invoices", tags=["invoices"], status_code=201)
async def create_invoice(body: s.InvoiceIn, session: Session) -> s.InvoiceOut:
    data = body.model_dump()
    invoice = await services.create_invoice(session, data.pop("amount"), data.pop("due_date"),
                                            **data)
    return views.invoice(invoice)


@router.get("/invoices/{invoice_id}", tags=["invoices"])
async def get_invoice(invoice_id: PathId, session: Session) -> s.InvoiceOut:
    return views.invoice(await get_or_404(session, Invoice, invoice_id))


@router.patch("/invoices/{invoice_id}", tags=["invoices"])
async def update_invoice(
    invoice_id: PathId, body: s.InvoicePatch, session: Session
) -> s.InvoiceOut:
    changes = body.model_dump(exclude_unset=True)
    return views.invoice(await services.update_invoice(session, invoice_id, changes))


@router.post("/invoices/{invoice_id}/pay", tags=["invoices"], summary="Record the payment")
async def pay(invoice_id: PathId, body: s.PaymentIn, session: Session) -> s.InvoiceOut:
    return views.invoice(await services.pay_invoice(session, invoice_id, body.paid_date))


@router.post("/invoices/{invoice_id}/cancel", tags=["invoices"])
async def cancel(invoice_id: PathId, session: Session) -> s.InvoiceOut:
    return views.invoice(await services.cancel_invoice(session, invoice_id))


# ---------------------------------------------------------------- products and line items
@router.get("/products", tags=["products"])
async def list_products(
    query: Annotated[ProductQuery, Query()], session: Session
) -> s.Page[s.ProductOut]:
    rows, total = await page(session, Product, query,
                             conditions=equality_filters(Product, query),
                             search=(Product.name, Product.sku),
                             sorts=("id", "name", "unit_price"), default_sort="name")
    return s.Page(items=[s.ProductOut.model_validate(r) for r in rows], total=total,
                  limit=query.limit, offset=query.offset)


@router.post("/products", tags=["products"], status_code=201)
async def create_product(body: s.ProductIn, session: Session) -> s.ProductOut:
    product = await products.create_product(session, body.name, body.unit_price, sku=body.sku,
                                            tax_rate=body.tax_rate)
    return s.ProductOut.model_validate(product)


@router.get("/products/{product_id}", tags=["products"])
async def get_product(product_id: PathId, session: Session) -> s.ProductOut:
    return s.ProductOut.model_validate(await get_or_404(session, Product, product_id, "product"))


@router.patch("/products/{product_id}", tags=["products"])
async def update_product(
    product_id: PathId, body: s.ProductPatch, session: Session
) -> s.ProductOut:
    product = await products.update_product(session, product_id,
                                            body.model_dump(exclude_unset=True))
    return s.ProductOut.model_validate(product)


def _items_out(rows: list[LineItem]) -> s.LineItemsOut:
    total = products.totals(rows)
    return s.LineItemsOut(items=[s.LineItemOut.model_validate(r) for r in rows],
                          net_total=total.net, tax_total=total.tax, gross_total=total.gross)


def _add_items(kind: products.DocumentKind, prefix: str) -> None:
    @router.get(f"{prefix}/{{document_id}}/items", tags=[f"{kind}s"],
                summary=f"The {kind}'s line items with net, tax and gross totals",
                operation_id=f"list_{kind}_items")
    async def get_items(document_id: PathId, session: Session) -> s.LineItemsOut:
        return _items_out(await products.line_items(session, kind, document_id))

    @router.put(f"{prefix}/{{document_id}}/items", tags=[f"{kind}s"],
                summary=f"Replace the {kind}'s line items; its amount becomes their net total",
                operation_id=f"set_{kind}_items")
    async def set_items(
        document_id: PathId, body: Annotated[list[s.LineItemIn], Body(max_length=500)],
        session: Session,
    ) -> s.LineItemsOut:
        specs = [products.LineSpec(
            quantity=i.quantity, description=i.description, product_id=i.product_id,
            unit_price=i.unit_price, discount_percent=i.discount_percent, tax_rate=i.tax_rate)
            for i in body]
        return _items_out(await products.set_line_items(session, kind, document_id, specs))


_add_items("quote", "/quotes")
_add_items("order", "/orders")
_add_items("invoice", "/invoices")



@router.delete("/quotes/{quote_id}", tags=["quotes"], status_code=204,
               summary="Delete a quote no order was made from (409 otherwise)")
async def delete_quote(quote_id: PathId, session: Session) -> Response:
    await services.delete_quote(session, quote_id)
    return Response(status_code=204)


@router.delete("/orders/{order_id}", tags=["orders"], status_code=204,
               summary="Delete an order that is not delivered and has no invoice or ticket "
               "(409 otherwise)")
async def delete_order(order_id: PathId, session: Session) -> Response:
    await services.delete_order(session, order_id)
    return Response(status_code=204)


@router.delete("/invoices/{invoice_id}", tags=["invoices"], status_code=204,
               summary="Delete an invoice that is not paid and no ticket concerns (409 otherwise)")
async def delete_invoice(invoice_id: PathId, session: Session) -> Response:
    await services.delete_invoice(session, invoice_id)
    return Response(status_code=204)
