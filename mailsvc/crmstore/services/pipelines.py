"""Pipelines (sales funnels) with their stages and activity plans; loss reasons."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.models import (
    ActivityPlanStep,
    ActivityType,
    LossReason,
    Opportunity,
    OpportunityKind,
    Pipeline,
    Stage,
    StageChange,
)
from mailsvc.crmstore.outbox import record_event
from mailsvc.crmstore.services.common import apply_changes, get_or_404
from mailsvc.errors import Conflict, RuleViolation


@dataclass(frozen=True, slots=True)
class StageSpec:
    name: str
    probability: int


@dataclass(frozen=True, slots=True)
class PlanStepSpec:
    subject: str
    offset_days: int = 0
    type: ActivityType = ActivityType.TASK


def _check_probability(value: int) -> None:
    if not 0 <= value <= 100:
        raise RuleViolation(f"a probability is a percentage from 0 to 100, not {value}")


async def create_pipeline(
    session: AsyncSession, name: str, kind: OpportunityKind = OpportunityKind.DEAL,
    stages: Sequence[StageSpec] = (), position: int = 0,
) -> Pipeline:
    if not name.strip():
        raise RuleViolation("a pipeline needs a name")
    if await session.scalar(select(Pipeline.id).where(Pipeline.name == name.strip())):
        raise Conflict(f"a pipeline named {name.strip()!r} exists already")
    names = [s.name.strip() for s in stages]
    if len(set(map(str.lower, names))) != len(names):
        raise RuleViolation("stage names must be unique within a pipeline")
    for spec in stages:
        _check_probability(spec.probability)
    pipeline = Pipeline(
        name=name.strip(), kind=kind, position=position,
        stages=[Stage(name=s.name.strip(), probability=s.probability, position=i)
                for i, s in enumerate(stages)],
    )
    session.add(pipeline)
    await session.flush()
    record_event(session, "pipeline.created", {"id": pipeline.id, "name": pipeline.name},
                 subject=f"pipeline/{pipeline.id}")
    return pipeline


async def update_pipeline(
    session: AsyncSession, pipeline_id: int, changes: Mapping[str, Any]
) -> Pipeline:
    pipeline = await get_or_404(session, Pipeline, pipeline_id)
    if changes.get("kind") is not None and changes["kind"] != pipeline.kind:
        used = await session.scalar(
            select(func.count()).select_from(Opportunity)
            .where(Opportunity.pipeline_id == pipeline_id)
        )
        if used:
            raise RuleViolation("the kind of a pipeline in use cannot change")
    if changes.get("name") and changes["name"] != pipeline.name and await session.scalar(
        select(Pipeline.id).where(Pipeline.name == changes["name"])
    ):
        raise Conflict(f"a pipeline named {changes['name']!r} exists already")
    apply_changes(pipeline, changes, ("name", "kind", "position"))
    await session.flush()
    return pipeline


async def add_stage(
    session: AsyncSession, pipeline_id: int, name: str, probability: int,
    position: int | None = None,
) -> Stage:
    pipeline = await get_or_404(session, Pipeline, pipeline_id)
    _check_probability(probability)
    if any(s.name.lower() == name.strip().lower() for s in pipeline.stages):
        raise Conflict(f"pipeline {pipeline.name!r} has a stage {name.strip()!r} already")
    stage = Stage(pipeline_id=pipeline_id, name=name.strip(), probability=probability,
                  position=len(pipeline.stages) if position is None else position)
    pipeline.stages.append(stage)
    await session.flush()
    return stage


async def update_stage(
    session: AsyncSession, stage_id: int, changes: Mapping[str, Any]
) -> Stage:
    stage = await get_or_404(session, Stage, stage_id)
    if changes.get("probability") is not None:
        _check_probability(changes["probability"])
    apply_changes(stage, changes, ("name", "probability", "position"))
    await session.flush()
    return stage


async def delete_stage(session: AsyncSession, stage_id: int) -> None:
    stage = await get_or_404(session, Stage, stage_id)
    used = await session.scalar(
        select(func.count()).select_from(Opportunity).where(Opportunity.stage_id == stage_id)
    ) or await session.scalar(
        select(func.count()).select_from(StageChange).where(
            (StageChange.to_stage_id == stage_id) | (StageChange.from_stage_id == stage_id)
        )
    )
    if used:
        raise Conflict(f"stage {stage.name!r} is used by opportunities and cannot be deleted")
    await session.delete(stage)
    await session.flush()


async def set_activity_plan(
    session: AsyncSession, pipeline_id: int, steps: Sequence[PlanStepSpec]
) -> list[ActivityPlanStep]:
    """Replace the pipeline's activity plan (the standard tasks of seed 004)."""
    await get_or_404(session, Pipeline, pipeline_id)
    for spec in steps:
        if spec.offset_days < 0:
            raise RuleViolation("a plan step cannot be due before the start date")
        if not spec.subject.strip():
            raise RuleViolation("a plan step needs a subject")
    old = await session.scalars(
        select(ActivityPlanStep).where(ActivityPlanStep.pipeline_id == pipeline_id)
    )
    for step in old:
        await session.delete(step)
    await session.flush()
    created = [
        ActivityPlanStep(pipeline_id=pipeline_id, position=i, subject=s.subject.strip(),
                         offset_days=s.offset_days, type=s.type)
        for i, s in enumerate(steps)
    ]
    session.add_all(created)
    await session.flush()
    return created


async def activity_plan(session: AsyncSession, pipeline_id: int) -> list[ActivityPlanStep]:
    await get_or_404(session, Pipeline, pipeline_id)
    rows = await session.scalars(
        select(ActivityPlanStep).where(ActivityPlanStep.pipeline_id == pipeline_id)
        .order_by(ActivityPlanStep.offset_days, ActivityPlanStep.position)
    )
    return list(rows)


async def default_pipeline(session: AsyncSession, kind: OpportunityKind) -> Pipeline | None:
    return await session.scalar(
        select(Pipeline).where(Pipeline.kind == kind).order_by(Pipeline.position, Pipeline.id)
        .limit(1)
    )


async def create_loss_reason(session: AsyncSession, name: str) -> LossReason:
    if not name.strip():
        raise RuleViolation("a loss reason needs a name")
    if await session.scalar(select(LossReason.id).where(LossReason.name == name.strip())):
        raise Conflict(f"the loss reason {name.strip()!r} exists already")
    reason = LossReason(name=name.strip())
    session.add(reason)
    await session.flush()
    return reason


async def update_loss_reason(
    session: AsyncSession, reason_id: int, changes: Mapping[str, Any]
) -> LossReason:
    reason = await get_or_404(session, LossReason, reason_id, "loss reason")
    apply_changes(reason, changes, ("name", "active"))
    await session.flush()
    return reason
