"""Service tickets, their updates and status changes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import Field
from sqlalchemy import select

from mailsvc.api import schemas as s
from mailsvc.api import views
from mailsvc.api.deps import Caller, LinkingConfig, Session
from mailsvc.api.listing import equality_filters, page
from mailsvc.api.routes.common import PathId, add_timeline, mine
from mailsvc.crmstore import services
from mailsvc.crmstore.models import LinkTarget, Ticket, TicketStatus, TicketUpdate
from mailsvc.crmstore.services.common import get_or_404

router = APIRouter(tags=["tickets"])


class TicketQuery(s.ListQuery):
    mine: bool | None = Field(None, description="Only the caller's own records (owner = me).")
    status: TicketStatus | None = None
    type: s.Str50 | None = None
    priority: s.Str50 | None = None
    account_id: s.Id | None = None
    contact_id: s.Id | None = None
    owner_id: s.Id | None = None
    order_id: s.Id | None = None
    invoice_id: s.Id | None = None


@router.get("/tickets")
async def list_tickets(
    query: Annotated[TicketQuery, Query()], session: Session, caller: Caller,
    linking: LinkingConfig,
) -> s.Page[s.TicketOut]:
    conditions = [*equality_filters(Ticket, query), *mine(Ticket, query, caller)]
    rows, total = await page(
        session, Ticket, query, conditions=conditions,
        search=(Ticket.subject, Ticket.requester_email, Ticket.requester_name),
        sorts=("id", "subject", "created_at", "updated_at", "value_eur", "priority"),
    )
    return s.Page(items=[views.ticket(r, linking) for r in rows], total=total,
                  limit=query.limit, offset=query.offset)


@router.post("/tickets", status_code=201)
async def create_ticket(body: s.TicketIn, session: Session, linking: LinkingConfig) -> s.TicketOut:
    ticket = await services.create_ticket(session, **body.model_dump())
    return views.ticket(ticket, linking)


@router.get("/tickets/{ticket_id}")
async def get_ticket(ticket_id: PathId, session: Session, linking: LinkingConfig) -> s.TicketOut:
    return views.ticket(await get_or_404(session, Ticket, ticket_id), linking)


@router.patch("/tickets/{ticket_id}")
async def update_ticket(
    ticket_id: PathId, body: s.TicketPatch, session: Session, linking: LinkingConfig
) -> s.TicketOut:
    ticket = await services.update_ticket(session, ticket_id, body.model_dump(exclude_unset=True))
    return views.ticket(ticket, linking)


@router.get("/tickets/{ticket_id}/updates")
async def list_updates(ticket_id: PathId, session: Session) -> list[s.TicketUpdateOut]:
    await get_or_404(session, Ticket, ticket_id)
    rows = await session.scalars(
        select(TicketUpdate).where(TicketUpdate.ticket_id == ticket_id)
        .order_by(TicketUpdate.id).limit(1000)
    )
    return [s.TicketUpdateOut.model_validate(r) for r in rows]


@router.post("/tickets/{ticket_id}/updates", status_code=201,
             summary="Add a progress entry, optionally changing the status")
async def add_update(
    ticket_id: PathId, body: s.TicketUpdateIn, session: Session
) -> s.TicketUpdateOut:
    update = await services.add_ticket_update(session, ticket_id, body.body, author=body.author,
                                              status=body.status)
    return s.TicketUpdateOut.model_validate(update)


add_timeline(router, "/tickets", LinkTarget.TICKET, "ticket")
