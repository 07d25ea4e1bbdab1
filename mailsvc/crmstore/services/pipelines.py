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
from mailsvc.crmstore.services.common import DuplicateRecord, apply_changes, get_or_404
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


def place(items: Sequence[Any], moved: Any, position: int | None) -> None:
    """Put ``moved`` at ``position`` (None or beyond the end: last) among ``items`` and number
    them 0, 1, 2, ... in that order, so positions stay a gapless order without ties."""
    others = sorted((i for i in items if i is not moved), key=lambda i: (i.position, i.id or 0))
    at = len(others) if position is None else max(0, min(position, len(others)))
    others.insert(at, moved)
    for index, item in enumerate(others):
        if item.position != index:
            item.position = index


async def _all_pipelines(session: AsyncSession) -> list[Pipeline]:
    return list(await session.scalars(select(Pipeline).order_by(Pipeline.position, Pipeline.id)))


def _check_probability(value: int) -> None:
    if not 0 <= value <= 100:
        raise RuleViolation(f"a probability is a percentage from 0 to 100, not {value}")


async def create_pipeline(
    session: AsyncSession, name: str, kind: OpportunityKind = OpportunityKind.DEAL,
    stages: Sequence[StageSpec] = (), position: int | None = None,
) -> Pipeline:
    """A new pipeline at ``position`` among all pipelines (default: last); the first pipeline of
    a kind is where new opportunities of that kind start."""
    if not name.strip():
        raise RuleViolation("a pipeline needs a name")
    if await session.scalar(select(Pipeline.id).where(Pipeline.name == name.strip())):
        raise Conflict(f"a pipeline named {name.strip()!r} exists already")
    names = [s.name.strip() for s in stages]
    if len(set(map(str.lower, names))) != len(names):
        raise RuleViolation("stage names must be unique within a pipeline")
    for spec in stages:
        _check_probability(spec.probability)
    existing = await _all_pipelines(session)
    pipeline = Pipeline(
        name=name.strip(), kind=kind, position=len(existing),
        stages=[Stage(name=s.name.strip(), probability=s.probability, position=i)
                for i, s in enumerate(stages)],
    )
    session.add(pipeline)
    place(existing, pipeline, position)
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
    changes = dict(changes)
    position = changes.pop("position", None)
    if "name" in changes and not (changes["name"] or "").strip():
        raise RuleViolation("a pipeline needs a name")
    changed = apply_changes(pipeline, changes, ("name", "kind"))
    if position is not None and position != pipeline.position:
        place(await _all_pipelines(session), pipeline, position)
        changed["position"] = pipeline.position
    await session.flush()
    if changed:
        record_event(session, "pipeline.updated", {"id": pipeline.id, "changed": sorted(changed)},
                     subject=f"pipeline/{pipeline.id}")
    return pipeline


async def add_stage(
    session: AsyncSession, pipeline_id: int, name: str, probability: int,
    position: int | None = None,
) -> Stage:
    pipeline = await get_or_404(session, Pipeline, pipeline_id)
    _check_probability(probability)
    same = [s for s in pipeline.stages if s.name.lower() == name.strip().lower()]
    if same:
        raise DuplicateRecord(f"pipeline {pipeline.name!r} has a stage {name.strip()!r} already",
                              "stage", same[0].id)
    if not name.strip():
        raise RuleViolation("a stage needs a name")
    stage = Stage(pipeline_id=pipeline_id, name=name.strip(), probability=probability,
                  position=len(pipeline.stages))
    place(list(pipeline.stages), stage, position)
    pipeline.stages.append(stage)
    await session.flush()
    await session.refresh(pipeline, ["stages"])
    return stage


async def update_stage(
    session: AsyncSession, stage_id: int, changes: Mapping[str, Any]
) -> Stage:
    stage = await get_or_404(session, Stage, stage_id)
    changes = dict(changes)
    position = changes.pop("position", None)
    if changes.get("probability") is not None:
        _check_probability(changes["probability"])
    if "name" in changes:
        name = (changes["name"] or "").strip()
        if not name:
            raise RuleViolation("a stage needs a name")
        clash = await session.scalar(select(Stage.id).where(
            Stage.pipeline_id == stage.pipeline_id, func.lower(Stage.name) == name.lower(),
            Stage.id != stage.id))
        if clash is not None:
            raise DuplicateRecord(f"the pipeline has a stage {name!r} already (stage {clash})",
                                  "stage", clash)
        changes["name"] = name
    apply_changes(stage, changes, ("name", "probability"))
    if position is not None and position != stage.position:
        siblings = await session.scalars(select(Stage).where(
            Stage.pipeline_id == stage.pipeline_id))
        place(list(siblings), stage, position)
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
    pipeline_id = stage.pipeline_id
    await session.delete(stage)
    await session.flush()
    rest = list(await session.scalars(select(Stage).where(Stage.pipeline_id == pipeline_id)))
    for index, other in enumerate(sorted(rest, key=lambda x: (x.position, x.id))):
        other.position = index
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
