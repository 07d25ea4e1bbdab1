"""Reference data an admin maintains: pipelines and stages, activity plans, loss reasons,
territories, sales teams, campaigns, tags, extensible lists, budgets."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Path, Query, Response
from sqlalchemy import select

from mailsvc.api import schemas as s
from mailsvc.api.deps import Session
from mailsvc.api.listing import equality_filters, page
from mailsvc.api.routes.common import PathId
from mailsvc.crmstore import services
from mailsvc.crmstore.models import (
    Budget,
    Campaign,
    LossReason,
    OpportunityKind,
    Pipeline,
    SalesTeam,
    Tag,
    Territory,
)
from mailsvc.crmstore.services.common import get_or_404

router = APIRouter()
ListKind = Literal["lead_source", "priority", "ticket_type"]


class PipelineQuery(s.ListQuery):
    kind: OpportunityKind | None = None


@router.get("/pipelines", tags=["pipelines"])
async def list_pipelines(
    query: Annotated[PipelineQuery, Query()], session: Session
) -> s.Page[s.PipelineOut]:
    rows, total = await page(session, Pipeline, query,
                             conditions=equality_filters(Pipeline, query),
                             search=(Pipeline.name,), sorts=("id", "name", "position"),
                             default_sort="position")
    return s.Page(items=[s.PipelineOut.model_validate(r) for r in rows], total=total,
                  limit=query.limit, offset=query.offset)


@router.post("/pipelines", tags=["pipelines"], status_code=201)
async def create_pipeline(body: s.PipelineIn, session: Session) -> s.PipelineOut:
    pipeline = await services.create_pipeline(
        session, body.name, body.kind,
        [services.StageSpec(st.name, st.probability) for st in body.stages], body.position,
    )
    return s.PipelineOut.model_validate(pipeline)


@router.get("/pipelines/{pipeline_id}", tags=["pipelines"])
async def get_pipeline(pipeline_id: PathId, session: Session) -> s.PipelineOut:
    return s.PipelineOut.model_validate(await get_or_404(session, Pipeline, pipeline_id))


@router.patch("/pipelines/{pipeline_id}", tags=["pipelines"])
async def update_pipeline(
    pipeline_id: PathId, body: s.PipelinePatch, session: Session
) -> s.PipelineOut:
    pipeline = await services.update_pipeline(session, pipeline_id,
                                              body.model_dump(exclude_unset=True))
    return s.PipelineOut.model_validate(pipeline)


@router.post("/pipelines/{pipeline_id}/stages", tags=["pipelines"], status_code=201)
async def add_stage(pipeline_id: PathId, body: s.StageIn, session: Session) -> s.StageOut:
    stage = await services.add_stage(session, pipeline_id, body.name, body.probability,
                                     body.position)
    return s.StageOut.model_validate(stage)


@router.patch("/stages/{stage_id}", tags=["pipelines"])
async def update_stage(stage_id: PathId, body: s.StagePatch, session: Session) -> s.StageOut:
    stage = await services.update_stage(session, stage_id, body.model_dump(exclude_unset=True))
    return s.StageOut.model_validate(stage)


@router.delete("/stages/{stage_id}", tags=["pipelines"], status_code=204)
async def delete_stage(stage_id: PathId, session: Session) -> Response:
    await services.delete_stage(session, stage_id)
    return Response(status_code=204)


@router.get("/pipelines/{pipeline_id}/activity-plan", tags=["pipelines"])
async def get_plan(pipeline_id: PathId, session: Session) -> list[s.PlanStepOut]:
    return [s.PlanStepOut.model_validate(r)
            for r in await services.activity_plan(session, pipeline_id)]


@router.put("/pipelines/{pipeline_id}/activity-plan", tags=["pipelines"])
async def set_plan(
    pipeline_id: PathId, body: Annotated[list[s.PlanStepIn], Body(max_length=100)],
    session: Session,
) -> list[s.PlanStepOut]:
    steps = [services.PlanStepSpec(st.subject, st.offset_days, st.type) for st in body]
    return [s.PlanStepOut.model_validate(r)
            for r in await services.set_activity_plan(session, pipeline_id, steps)]


@router.get("/loss-reasons", tags=["settings"])
async def list_loss_reasons(
    query: Annotated[s.ListQuery, Query()], session: Session
) -> s.Page[s.LossReasonOut]:
    rows, total = await page(session, LossReason, query, search=(LossReason.name,),
                             sorts=("id", "name"), default_sort="name")
    return s.Page(items=[s.LossReasonOut.model_validate(r) for r in rows], total=total,
                  limit=query.limit, offset=query.offset)


@router.post("/loss-reasons", tags=["settings"], status_code=201)
async def create_loss_reason(body: s.NamedIn, session: Session) -> s.LossReasonOut:
    return s.LossReasonOut.model_validate(await services.create_loss_reason(session, body.name))


@router.patch("/loss-reasons/{reason_id}", tags=["settings"])
async def update_loss_reason(
    reason_id: PathId, body: s.LossReasonPatch, session: Session
) -> s.LossReasonOut:
    reason = await services.update_loss_reason(session, reason_id,
                                               body.model_dump(exclude_unset=True))
    return s.LossReasonOut.model_validate(reason)


@router.get("/territories", tags=["settings"])
async def list_territories(
    query: Annotated[s.ListQuery, Query()], session: Session
) -> s.Page[s.TerritoryOut]:
    rows, total = await page(session, Territory, query, search=(Territory.name,),
                             sorts=("id", "name"), default_sort="name")
    return s.Page(items=[s.TerritoryOut.model_validate(r) for r in rows], total=total,
                  limit=query.limit, offset=query.offset)


@router.post("/territories", tags=["settings"], status_code=201)
async def create_territory(body: s.TerritoryIn, session: Session) -> s.TerritoryOut:
    territory = await services.create_territory(session, body.name, body.description)
    return s.TerritoryOut.model_validate(territory)


@router.get("/territories/{territory_id}", tags=["settings"])
async def get_territory(territory_id: PathId, session: Session) -> s.TerritoryOut:
    return s.TerritoryOut.model_validate(
        await get_or_404(session, Territory, territory_id, "territory"))


@router.patch("/territories/{territory_id}", tags=["settings"], summary="Rename or describe")
async def update_territory(
    territory_id: PathId, body: s.TerritoryPatch, session: Session
) -> s.TerritoryOut:
    territory = await services.update_named(
        session, Territory, territory_id, body.model_dump(exclude_unset=True),
        ("name", "description"), "territory")
    return s.TerritoryOut.model_validate(territory)


@router.get("/teams", tags=["settings"])
async def list_teams(
    query: Annotated[s.ListQuery, Query()], session: Session
) -> s.Page[s.TeamOut]:
    rows, total = await page(session, SalesTeam, query, search=(SalesTeam.name,),
                             sorts=("id", "name"), default_sort="name")
    return s.Page(items=[s.TeamOut.model_validate(r) for r in rows], total=total,
                  limit=query.limit, offset=query.offset)


@router.post("/teams", tags=["settings"], status_code=201)
async def create_team(body: s.TeamIn, session: Session) -> s.TeamOut:
    return s.TeamOut.model_validate(
        await services.create_team(session, body.name, body.territory_id))


@router.get("/teams/{team_id}", tags=["settings"])
async def get_team(team_id: PathId, session: Session) -> s.TeamOut:
    return s.TeamOut.model_validate(await get_or_404(session, SalesTeam, team_id, "sales team"))


@router.patch("/teams/{team_id}", tags=["settings"], summary="Rename or move to a territory")
async def update_team(team_id: PathId, body: s.TeamPatch, session: Session) -> s.TeamOut:
    team = await services.update_named(
        session, SalesTeam, team_id, body.model_dump(exclude_unset=True),
        ("name", "territory_id"), "sales team")
    return s.TeamOut.model_validate(team)


@router.get("/campaigns", tags=["settings"])
async def list_campaigns(
    query: Annotated[s.ListQuery, Query()], session: Session
) -> s.Page[s.CampaignOut]:
    rows, total = await page(session, Campaign, query, search=(Campaign.name,),
                             sorts=("id", "name", "start_date"), default_sort="name")
    return s.Page(items=[s.CampaignOut.model_validate(r) for r in rows], total=total,
                  limit=query.limit, offset=query.offset)


@router.post("/campaigns", tags=["settings"], status_code=201)
async def create_campaign(body: s.CampaignIn, session: Session) -> s.CampaignOut:
    campaign = await services.create_campaign(session, body.name, start_date=body.start_date,
                                              end_date=body.end_date, budget=body.budget)
    return s.CampaignOut.model_validate(campaign)


@router.get("/campaigns/{campaign_id}", tags=["settings"])
async def get_campaign(campaign_id: PathId, session: Session) -> s.CampaignOut:
    return s.CampaignOut.model_validate(
        await get_or_404(session, Campaign, campaign_id, "campaign"))


@router.patch("/campaigns/{campaign_id}", tags=["settings"])
async def update_campaign(
    campaign_id: PathId, body: s.CampaignPatch, session: Session
) -> s.CampaignOut:
    campaign = await services.update_named(
        session, Campaign, campaign_id, body.model_dump(exclude_unset=True),
        ("name", "start_date", "end_date", "budget", "active"), "campaign")
    return s.CampaignOut.model_validate(campaign)


@router.get("/tags", tags=["settings"])
async def list_tags(
    query: Annotated[s.ListQuery, Query()], session: Session
) -> s.Page[s.TagOut]:
    rows, total = await page(session, Tag, query, search=(Tag.name,), sorts=("id", "name"),
                             default_sort="name")
    return s.Page(items=[s.TagOut.model_validate(r) for r in rows], total=total,
                  limit=query.limit, offset=query.offset)


@router.get("/lists/{kind}", tags=["settings"], summary="Values of an extensible list")
async def list_choices(kind: ListKind, session: Session) -> list[str]:
    return await services.allowed_choices(session, kind)


@router.post("/lists/{kind}", tags=["settings"], status_code=201,
             summary="Add a value to an extensible list")
async def add_choice(kind: ListKind, body: s.ChoiceIn, session: Session) -> list[str]:
    await services.add_choice(session, kind, body.name, body.position)
    return await services.allowed_choices(session, kind)


@router.patch("/lists/{kind}/{value}", tags=["settings"],
              summary="Rename, move or retire a value of an extensible list")
async def update_choice(
    kind: ListKind, value: Annotated[str, Path(max_length=100)], body: s.ChoicePatch,
    session: Session,
) -> list[str]:
    await services.update_choice(session, kind, value, body.model_dump(exclude_unset=True))
    return await services.allowed_choices(session, kind)


@router.get("/budgets", tags=["budgets"])
async def list_budgets(session: Session) -> list[s.BudgetOut]:
    rows = await session.scalars(select(Budget).order_by(Budget.year, Budget.user_id.is_not(None),
                                                         Budget.user_id))
    return [s.BudgetOut.model_validate(r) for r in rows]


@router.post("/budgets", tags=["budgets"], status_code=201,
             summary="Create a year's budget; its 12 months are created with it")
async def create_budget(body: s.BudgetIn, session: Session) -> s.BudgetOut:
    budget = await services.create_budget(session, body.year, body.targets, body.name,
                                          body.annual_total, body.user_id)
    return s.BudgetOut.model_validate(budget)


@router.get("/budgets/{budget_id}", tags=["budgets"])
async def get_budget(budget_id: PathId, session: Session) -> s.BudgetOut:
    return s.BudgetOut.model_validate(await get_or_404(session, Budget, budget_id))


@router.put("/budgets/{budget_id}/months/{month}", tags=["budgets"])
async def set_target(
    budget_id: PathId, month: Annotated[int, Path(ge=1, le=12)], body: s.BudgetTargetIn,
    session: Session,
) -> s.BudgetOut:
    budget = await services.set_budget_target(session, budget_id, month, body.target)
    return s.BudgetOut.model_validate(budget)
