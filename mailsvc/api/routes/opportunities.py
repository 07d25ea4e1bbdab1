"""Opportunities (leads and deals) and their actions."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from pydantic import Field
from sqlalchemy import func, select

from mailsvc.api import schemas as s
from mailsvc.api import views
from mailsvc.api.deps import Caller, LinkingConfig, Session
from mailsvc.api.listing import equality_filters, page
from mailsvc.api.routes.common import PathId, add_timeline, mine
from mailsvc.crmstore import services
from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import (
    Activity,
    LinkTarget,
    Opportunity,
    OpportunityKind,
    OpportunityStatus,
    OpportunitySubscriber,
    OpportunityTag,
    Tag,
)
from mailsvc.crmstore.services.common import get_or_404

router = APIRouter(tags=["opportunities"])


class OpportunityQuery(s.ListQuery):
    mine: bool | None = Field(None, description="Only the caller's own records (owner = me).")
    kind: OpportunityKind | None = None
    status: OpportunityStatus | None = None
    pipeline_id: s.Id | None = None
    stage_id: s.Id | None = None
    account_id: s.Id | None = None
    contact_id: s.Id | None = None
    owner_id: s.Id | None = None
    campaign_id: s.Id | None = None
    territory_id: s.Id | None = None
    team_id: s.Id | None = None
    priority: s.Str50 | None = None
    source: s.Str100 | None = None
    tag: s.Str100 | None = None
    subscriber_id: s.Id | None = None
    traffic_light: Literal["green", "yellow", "red"] | None = None
    close_from: s.Day | None = None
    close_to: s.Day | None = None


@router.get("/opportunities")
async def list_opportunities(
    query: Annotated[OpportunityQuery, Query()], session: Session, caller: Caller,
    linking: LinkingConfig,
) -> s.Page[s.OpportunityOut]:
    conditions = equality_filters(Opportunity, query)
    conditions += mine(Opportunity, query, caller)
    if query.tag:
        conditions.append(Opportunity.id.in_(
            select(OpportunityTag.opportunity_id).join(Tag)
            .where(func.lower(Tag.name) == query.tag.lower())))
    if query.subscriber_id:
        conditions.append(Opportunity.id.in_(
            select(OpportunitySubscriber.opportunity_id)
            .where(OpportunitySubscriber.user_id == query.subscriber_id)))
    if query.close_from:
        conditions.append(Opportunity.close_date >= query.close_from)
    if query.close_to:
        conditions.append(Opportunity.close_date <= query.close_to)
    now = utcnow()
    if query.traffic_light:
        last = func.coalesce(Opportunity.last_contact_at, Opportunity.created_at)
        stale = now - timedelta(days=linking.stale_contact_days)
        critical = now - timedelta(days=linking.critical_contact_days)
        conditions.append(Opportunity.status == OpportunityStatus.OPEN)
        conditions.append({"red": last <= critical,
                           "yellow": (last <= stale) & (last > critical),
                           "green": last > stale}[query.traffic_light])
    rows, total = await page(
        session, Opportunity, query, conditions=conditions,
        search=(Opportunity.title, Opportunity.source),
        sorts=("id", "title", "amount", "probability", "close_date", "created_at",
               "updated_at", "last_contact_at"),
    )
    return s.Page(items=[views.opportunity(r, linking, now) for r in rows], total=total,
                  limit=query.limit, offset=query.offset)


@router.post("/opportunities", status_code=201)
async def create_opportunity(
    body: s.OpportunityIn, session: Session, linking: LinkingConfig
) -> s.OpportunityOut:
    opportunity = await services.create_opportunity(session, **body.model_dump())
    return views.opportunity(opportunity, linking)


@router.get("/opportunities/{opportunity_id}")
async def get_opportunity(
    opportunity_id: PathId, session: Session, linking: LinkingConfig
) -> s.OpportunityOut:
    return views.opportunity(await get_or_404(session, Opportunity, opportunity_id), linking)


@router.patch("/opportunities/{opportunity_id}")
async def update_opportunity(
    opportunity_id: PathId, body: s.OpportunityPatch, session: Session, linking: LinkingConfig
) -> s.OpportunityOut:
    opportunity = await services.update_opportunity(session, opportunity_id,
                                                    body.model_dump(exclude_unset=True))
    return views.opportunity(opportunity, linking)


@router.delete("/opportunities/{opportunity_id}", status_code=204,
               summary="Delete an opportunity that is not won and has no order or invoice "
               "(409 otherwise); its quotes go with it, its e-mails are unlinked")
async def delete_opportunity(opportunity_id: PathId, session: Session) -> Response:
    await services.delete_opportunity(session, opportunity_id)
    return Response(status_code=204)


@router.post("/opportunities/{opportunity_id}/stage", summary="Move to another stage")
async def change_stage(
    opportunity_id: PathId, body: s.StageChangeIn, session: Session, linking: LinkingConfig
) -> s.OpportunityOut:
    opportunity = await services.change_stage(session, opportunity_id, body.stage_id,
                                              probability=body.probability)
    return views.opportunity(opportunity, linking)


@router.post("/opportunities/{opportunity_id}/convert-to-deal", summary="Turn a lead into a deal")
async def convert_to_deal(
    opportunity_id: PathId, body: s.ConvertToDealIn, session: Session, linking: LinkingConfig
) -> s.OpportunityOut:
    opportunity = await services.convert_to_deal(session, opportunity_id,
                                                 pipeline_id=body.pipeline_id,
                                                 stage_id=body.stage_id)
    return views.opportunity(opportunity, linking)


@router.post("/opportunities/{opportunity_id}/won", summary="Mark as won")
async def mark_won(
    opportunity_id: PathId, body: s.WonIn, session: Session, linking: LinkingConfig
) -> s.OpportunityOut:
    opportunity = await services.mark_won(session, opportunity_id, close_date=body.close_date)
    return views.opportunity(opportunity, linking)


@router.post("/opportunities/{opportunity_id}/lost", summary="Mark as lost (needs a reason)")
async def mark_lost(
    opportunity_id: PathId, body: s.LostIn, session: Session, linking: LinkingConfig
) -> s.OpportunityOut:
    opportunity = await services.mark_lost(session, opportunity_id, body.loss_reason_id,
                                           note=body.note, close_date=body.close_date)
    return views.opportunity(opportunity, linking)


@router.post("/opportunities/{opportunity_id}/subscribers", summary="Follow")
async def subscribe(
    opportunity_id: PathId, body: s.SubscriberIn, session: Session, linking: LinkingConfig
) -> s.OpportunityOut:
    opportunity = await services.subscribe(session, opportunity_id, body.user_id)
    return views.opportunity(opportunity, linking)


@router.delete("/opportunities/{opportunity_id}/subscribers/{user_id}", summary="Unfollow")
async def unsubscribe(
    opportunity_id: PathId, user_id: PathId, session: Session, linking: LinkingConfig
) -> s.OpportunityOut:
    opportunity = await services.unsubscribe(session, opportunity_id, user_id)
    return views.opportunity(opportunity, linking)


@router.get("/opportunities/{opportunity_id}/stage-history")
async def stage_history(opportunity_id: PathId, session: Session) -> list[s.StageChangeOut]:
    rows = await services.stage_history(session, opportunity_id)
    return [s.StageChangeOut.model_validate(r) for r in rows]


@router.post("/opportunities/{opportunity_id}/activity-plan", status_code=201,
             summary="Schedule the pipeline's activity plan from a start date")
async def schedule_plan(
    opportunity_id: PathId, body: s.ActivityPlanIn, session: Session
) -> list[s.ActivityOut]:
    rows = await services.schedule_activity_plan(session, opportunity_id, body.start_date,
                                                 owner_id=body.owner_id)
    return [views.activity(r) for r in rows]


@router.get("/opportunities/{opportunity_id}/activities")
async def opportunity_activities(
    opportunity_id: PathId, session: Session
) -> list[s.ActivityOut]:
    await get_or_404(session, Opportunity, opportunity_id)
    rows = await session.scalars(
        select(Activity).where(Activity.opportunity_id == opportunity_id)
        .order_by(Activity.due_at.is_(None), Activity.due_at, Activity.id).limit(500)
    )
    return [views.activity(r) for r in rows]


add_timeline(router, "/opportunities", LinkTarget.OPPORTUNITY, "opportunity")
