"""The inbox of inbound leads and its actions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import Field

from mailsvc.api import schemas as s
from mailsvc.api import views
from mailsvc.api.deps import Caller, LinkingConfig, Session
from mailsvc.api.listing import equality_filters, page
from mailsvc.api.routes.common import PathId, add_timeline, mine
from mailsvc.crmstore import services
from mailsvc.crmstore.models import InboxLead, LeadStatus, LinkTarget
from mailsvc.crmstore.services.common import get_or_404

router = APIRouter(tags=["inbox"])


class InboxQuery(s.ListQuery):
    mine: bool | None = Field(None, description="Only the caller's own records (owner = me).")
    status: LeadStatus | None = None
    source: s.Str100 | None = None
    priority: s.Str50 | None = None
    owner_id: s.Id | None = None
    archived: bool | None = None
    qualified: bool | None = None
    campaign_id: s.Id | None = None


@router.get("/inbox-leads")
async def list_inbox_leads(
    query: Annotated[InboxQuery, Query()], session: Session, caller: Caller
) -> s.Page[s.InboxLeadOut]:
    conditions = equality_filters(InboxLead, query, skip=("qualified",))
    conditions += mine(InboxLead, query, caller)
    if query.qualified is not None:
        conditions.append(InboxLead.opportunity_id.is_not(None) if query.qualified
                          else InboxLead.opportunity_id.is_(None))
    rows, total = await page(
        session, InboxLead, query, conditions=conditions,
        search=(InboxLead.title, InboxLead.company, InboxLead.email, InboxLead.last_name),
        sorts=("id", "title", "created_at", "qualified_at", "budget"),
    )
    return s.Page(items=[views.inbox_lead(r) for r in rows], total=total, limit=query.limit,
                  offset=query.offset)


@router.post("/inbox-leads", status_code=201)
async def create_inbox_lead(body: s.InboxLeadIn, session: Session) -> s.InboxLeadOut:
    lead = await services.create_inbox_lead(session, **body.model_dump())
    return views.inbox_lead(lead)


@router.get("/inbox-leads/{lead_id}")
async def get_inbox_lead(lead_id: PathId, session: Session) -> s.InboxLeadOut:
    return views.inbox_lead(await get_or_404(session, InboxLead, lead_id, "inbox lead"))


@router.patch("/inbox-leads/{lead_id}")
async def update_inbox_lead(
    lead_id: PathId, body: s.InboxLeadPatch, session: Session
) -> s.InboxLeadOut:
    lead = await services.update_inbox_lead(session, lead_id, body.model_dump(exclude_unset=True))
    return views.inbox_lead(lead)


@router.post("/inbox-leads/{lead_id}/archive")
async def archive(lead_id: PathId, session: Session) -> s.InboxLeadOut:
    return views.inbox_lead(await services.archive_inbox_lead(session, lead_id))


@router.delete("/inbox-leads/{lead_id}", status_code=204,
               summary="Delete = archive: the lead and its mail stay")
async def delete_inbox_lead(lead_id: PathId, session: Session) -> Response:
    await services.archive_inbox_lead(session, lead_id)
    return Response(status_code=204)


@router.post("/inbox-leads/{lead_id}/create-company",
             summary="Create the company (or link the existing one, with a warning)")
async def create_company(lead_id: PathId, session: Session) -> s.CreatedFromLeadOut:
    outcome = await services.create_company_from_lead(session, lead_id)
    lead = await get_or_404(session, InboxLead, lead_id)
    return s.CreatedFromLeadOut(id=outcome.record.id, created=outcome.created,
                                warning=outcome.warning, inbox_lead=views.inbox_lead(lead))


@router.post("/inbox-leads/{lead_id}/create-person",
             summary="Create the person (or link the existing one, with a warning)")
async def create_person(lead_id: PathId, session: Session) -> s.CreatedFromLeadOut:
    outcome = await services.create_person_from_lead(session, lead_id)
    lead = await get_or_404(session, InboxLead, lead_id)
    return s.CreatedFromLeadOut(id=outcome.record.id, created=outcome.created,
                                warning=outcome.warning, inbox_lead=views.inbox_lead(lead))


@router.post("/inbox-leads/{lead_id}/convert", status_code=201,
             summary="Convert into an opportunity (title, budget, contact data carried over)")
async def convert(
    lead_id: PathId, body: s.ConvertLeadIn, session: Session, linking: LinkingConfig
) -> s.ConvertLeadOut:
    opportunity, warnings = await services.convert_inbox_lead(session, lead_id,
                                                              **body.model_dump())
    lead = await get_or_404(session, InboxLead, lead_id)
    return s.ConvertLeadOut(opportunity=views.opportunity(opportunity, linking),
                            inbox_lead=views.inbox_lead(lead), warnings=warnings)


add_timeline(router, "/inbox-leads", LinkTarget.INBOX_LEAD, "inbox lead")
