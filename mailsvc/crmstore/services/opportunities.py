"""Opportunities (leads and deals): stages with history, won / lost, subscribers, traffic light."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import (
    Account,
    AccountStatus,
    Campaign,
    Contact,
    LossReason,
    Opportunity,
    OpportunityKind,
    OpportunitySnapshot,
    OpportunityStatus,
    OpportunitySubscriber,
    Pipeline,
    SalesTeam,
    SnapshotMonth,
    Stage,
    StageChange,
    Territory,
    User,
)
from mailsvc.crmstore.outbox import record_event
from mailsvc.crmstore.services.common import (
    actor_id as acting,  # the parameters here are called actor_id
)
from mailsvc.crmstore.services.common import (
    apply_changes,
    check_choice,
    ensure_exists,
    get_or_404,
    guard_system_fields,
    resolve_tags,
)
from mailsvc.crmstore.services.pipelines import default_pipeline
from mailsvc.errors import Conflict, RuleViolation

TrafficLight = Literal["green", "yellow", "red"]

# Business data: frozen once the opportunity is won or lost (seed 004, "Status ändern").
BUSINESS_FIELDS = ("title", "description", "amount", "probability", "source", "priority",
                   "delivery_date", "start_date", "close_date", "account_id", "contact_id",
                   "campaign_id", "territory_id", "team_id")
# What may still change on a closed opportunity: who looks after it.
CLOSED_FIELDS = ("owner_id",)


def _subject(opportunity: Opportunity) -> str:
    return f"opportunity/{opportunity.id}"


def weighted_value(opportunity: Opportunity) -> Decimal | None:
    """Amount × probability; a lost opportunity is worth nothing any more."""
    if opportunity.amount is None:
        return None
    if opportunity.status == OpportunityStatus.LOST:
        return Decimal("0.00")
    return (opportunity.amount * opportunity.probability / 100).quantize(Decimal("0.01"))


def traffic_light(
    opportunity: Opportunity, now: datetime, stale_days: int, critical_days: int
) -> TrafficLight | None:
    """Green, yellow after ``stale_days`` without contact, red after ``critical_days``.

    Closed opportunities have no light. Without any contact the creation counts as the first.
    """
    if opportunity.status != OpportunityStatus.OPEN:
        return None
    last = opportunity.last_contact_at or opportunity.created_at
    idle = now - last
    if idle >= timedelta(days=critical_days):
        return "red"
    if idle >= timedelta(days=stale_days):
        return "yellow"
    return "green"


def ensure_open(opportunity: Opportunity) -> None:
    if opportunity.status != OpportunityStatus.OPEN:
        raise RuleViolation(
            f"opportunity {opportunity.id} is {opportunity.status}: its business data and stage "
            "can no longer change"
        )


async def _check_references(session: AsyncSession, fields: Mapping[str, Any]) -> None:
    await ensure_exists(session, Account, fields.get("account_id"), "account")
    await ensure_exists(session, User, fields.get("owner_id"), "user")
    await ensure_exists(session, Campaign, fields.get("campaign_id"), "campaign")
    await ensure_exists(session, Territory, fields.get("territory_id"), "territory")
    await ensure_exists(session, SalesTeam, fields.get("team_id"), "sales team")
    contact_id = fields.get("contact_id")
    if contact_id is not None:
        contact = await get_or_404(session, Contact, contact_id)
        account_id = fields.get("account_id")
        if account_id is not None and contact.account_id not in (None, account_id):
            raise RuleViolation(
                f"contact {contact_id} belongs to account {contact.account_id}, "
                f"not to account {account_id}"
            )
    if fields.get("amount") is not None and fields["amount"] < 0:
        raise RuleViolation("an amount cannot be negative")
    probability = fields.get("probability")
    if probability is not None and not 0 <= probability <= 100:
        raise RuleViolation(f"a probability is a percentage from 0 to 100, not {probability}")


async def _placement(
    session: AsyncSession, kind: OpportunityKind, pipeline_id: int | None, stage_id: int | None
) -> tuple[Pipeline | None, Stage | None]:
    """The pipeline and stage for an opportunity of ``kind`` (defaults: first pipeline/stage)."""
    stage = await get_or_404(session, Stage, stage_id) if stage_id is not None else None
    if pipeline_id is None and stage is not None:
        pipeline_id = stage.pipeline_id
    pipeline = (await get_or_404(session, Pipeline, pipeline_id) if pipeline_id is not None
                else await default_pipeline(session, kind))
    if pipeline is None:
        return None, None
    if pipeline.kind != kind:
        raise RuleViolation(
            f"pipeline {pipeline.name!r} is for {pipeline.kind}s, not for {kind}s"
        )
    if stage is None:
        stage = pipeline.stages[0] if pipeline.stages else None
    elif stage.pipeline_id != pipeline.id:
        raise RuleViolation(f"stage {stage.id} is not a stage of pipeline {pipeline.name!r}")
    return pipeline, stage


async def create_opportunity(
    session: AsyncSession, title: str, *, account_id: int | None = None,
    contact_id: int | None = None, owner_id: int | None = None, amount: Decimal | None = None,
    probability: int | None = None, kind: OpportunityKind = OpportunityKind.LEAD,
    pipeline_id: int | None = None, stage_id: int | None = None, source: str | None = None,
    priority: str | None = None, tags: Iterable[str] = (), subscriber_ids: Iterable[int] = (),
    delivery_date: date | None = None, start_date: date | None = None,
    close_date: date | None = None, campaign_id: int | None = None,
    territory_id: int | None = None, team_id: int | None = None,
    actor_id: int | None = None, description: str | None = None,
) -> Opportunity:
    if not title.strip():
        raise RuleViolation("an opportunity needs a title")
    await ensure_month_snapshot(session, utcnow().date())
    fields = {"account_id": account_id, "contact_id": contact_id, "owner_id": owner_id,
              "amount": amount, "probability": probability, "campaign_id": campaign_id,
              "territory_id": territory_id, "team_id": team_id}
    await _check_references(session, fields)
    if contact_id is not None and account_id is None:
        account_id = (await get_or_404(session, Contact, contact_id)).account_id
    pipeline, stage = await _placement(session, kind, pipeline_id, stage_id)
    if probability is None:
        probability = stage.probability if stage is not None else 0
    now = utcnow()
    subscribers = list(dict.fromkeys(subscriber_ids))
    for user_id in subscribers:
        await ensure_exists(session, User, user_id, "user")
    opportunity = Opportunity(
        title=title.strip(), description=description, kind=kind, account_id=account_id,
        contact_id=contact_id, owner_id=owner_id, amount=amount, probability=probability,
        pipeline_id=pipeline.id if pipeline else None, stage_id=stage.id if stage else None,
        source=await check_choice(session, "lead_source", source),
        priority=await check_choice(session, "priority", priority),
        delivery_date=delivery_date, start_date=start_date, close_date=close_date,
        campaign_id=campaign_id, territory_id=territory_id, team_id=team_id,
        created_at=now, deal_at=now if kind == OpportunityKind.DEAL else None,
        stage_changed_at=now if stage else None,
        tags=await resolve_tags(session, tags),
        subscribers=[OpportunitySubscriber(user_id=u) for u in subscribers],
    )
    session.add(opportunity)
    await session.flush()
    if stage is not None:
        session.add(StageChange(opportunity_id=opportunity.id, to_stage_id=stage.id,
                                probability=probability,
                                changed_by_id=acting(session, actor_id), changed_at=now))
    record_event(
        session, "opportunity.created",
        {"id": opportunity.id, "title": opportunity.title, "kind": str(kind),
         "account_id": account_id, "contact_id": contact_id, "owner_id": owner_id},
        subject=_subject(opportunity),
    )
    return opportunity


async def update_opportunity(
    session: AsyncSession, opportunity_id: int, changes: Mapping[str, Any],
    actor_id: int | None = None,
) -> Opportunity:
    """Edit fields; a stage or kind in ``changes`` goes through its own rule."""
    opportunity = await get_or_404(session, Opportunity, opportunity_id)
    guard_system_fields(changes)
    await ensure_month_snapshot(session, utcnow().date())
    changes = dict(changes)
    tags = changes.pop("tags", None)
    stage_id = changes.pop("stage_id", None)
    pipeline_id = changes.pop("pipeline_id", None)
    kind = changes.pop("kind", None)
    changes.pop("status", None) if changes.get("status") == opportunity.status else None
    if "status" in changes:
        raise RuleViolation("the status changes only by the won / lost actions")
    business = set(changes) - set(CLOSED_FIELDS)
    if opportunity.status != OpportunityStatus.OPEN and (
        business or tags is not None or stage_id or pipeline_id or kind
    ):
        ensure_open(opportunity)
    merged = {name: getattr(opportunity, name) for name in ("account_id", "contact_id")}
    merged.update(changes)
    await _check_references(session, merged)
    for name in ("source", "priority"):
        if changes.get(name) is not None:
            changes[name] = await check_choice(
                session, "lead_source" if name == "source" else "priority", changes[name]
            )
    if "title" in changes and not (changes["title"] or "").strip():
        raise RuleViolation("an opportunity needs a title")
    changed = apply_changes(opportunity, changes, BUSINESS_FIELDS + CLOSED_FIELDS)
    if tags is not None:
        new_tags = await resolve_tags(session, tags)
        if [t.id for t in new_tags] != [t.id for t in opportunity.tags]:
            opportunity.tags = new_tags
            changed["tags"] = [t.name for t in new_tags]
    if kind is not None and kind != opportunity.kind:
        await convert_to_deal(session, opportunity_id, pipeline_id=pipeline_id, actor_id=actor_id)
        changed["kind"] = str(kind)
    elif stage_id is not None or (pipeline_id is not None
                                  and pipeline_id != opportunity.pipeline_id):
        await change_stage(session, opportunity_id, stage_id, pipeline_id=pipeline_id,
                           actor_id=actor_id)
    if changed:
        await session.flush()
        record_event(session, "opportunity.updated",
                     {"id": opportunity.id, "changed": sorted(changed)},
                     subject=_subject(opportunity))
    return opportunity


async def change_stage(
    session: AsyncSession, opportunity_id: int, stage_id: int | None, *,
    pipeline_id: int | None = None, probability: int | None = None,
    actor_id: int | None = None,
) -> Opportunity:
    """Move to a stage (of the current pipeline, or of ``pipeline_id``); history is recorded.

    The stage's default probability is taken unless ``probability`` overrides it.
    """
    opportunity = await get_or_404(session, Opportunity, opportunity_id)
    ensure_open(opportunity)
    await ensure_month_snapshot(session, utcnow().date())
    target_pipeline = pipeline_id if pipeline_id is not None else (
        None if stage_id is not None else opportunity.pipeline_id)
    if stage_id is None and target_pipeline is None:
        raise RuleViolation("a stage change needs a stage or a pipeline")
    pipeline, stage = await _placement(session, opportunity.kind, target_pipeline, stage_id)
    if stage is None:
        raise RuleViolation(f"pipeline {pipeline.name if pipeline else ''!r} has no stages")
    if probability is not None and not 0 <= probability <= 100:
        raise RuleViolation(f"a probability is a percentage from 0 to 100, not {probability}")
    new_probability = stage.probability if probability is None else probability
    if stage.id == opportunity.stage_id and new_probability == opportunity.probability:
        return opportunity
    previous = opportunity.stage_id
    now = utcnow()
    opportunity.pipeline_id = stage.pipeline_id
    opportunity.stage_id = stage.id
    opportunity.probability = new_probability
    if previous != stage.id:
        opportunity.stage_changed_at = now
        session.add(StageChange(opportunity_id=opportunity.id, from_stage_id=previous,
                                to_stage_id=stage.id, probability=new_probability,
                                changed_by_id=acting(session, actor_id), changed_at=now))
    await session.flush()
    record_event(
        session, "opportunity.stage_changed",
        {"id": opportunity.id, "from_stage_id": previous, "to_stage_id": stage.id,
         "stage": stage.name, "pipeline_id": stage.pipeline_id, "probability": new_probability},
        subject=_subject(opportunity),
    )
    return opportunity


async def convert_to_deal(
    session: AsyncSession, opportunity_id: int, *, pipeline_id: int | None = None,
    stage_id: int | None = None, actor_id: int | None = None,
) -> Opportunity:
    opportunity = await get_or_404(session, Opportunity, opportunity_id)
    ensure_open(opportunity)
    if opportunity.kind == OpportunityKind.DEAL:
        raise Conflict(f"opportunity {opportunity.id} is a deal already")
    pipeline, stage = await _placement(session, OpportunityKind.DEAL, pipeline_id, stage_id)
    now = utcnow()
    previous = opportunity.stage_id
    opportunity.kind = OpportunityKind.DEAL
    opportunity.deal_at = now
    opportunity.pipeline_id = pipeline.id if pipeline else None
    opportunity.stage_id = stage.id if stage else None
    if stage is not None:
        opportunity.probability = stage.probability
    if previous != opportunity.stage_id:
        opportunity.stage_changed_at = now
        session.add(StageChange(opportunity_id=opportunity.id, from_stage_id=previous,
                                to_stage_id=opportunity.stage_id,
                                probability=opportunity.probability,
                                changed_by_id=acting(session, actor_id), changed_at=now))
    await session.flush()
    record_event(session, "opportunity.converted_to_deal",
                 {"id": opportunity.id, "pipeline_id": opportunity.pipeline_id,
                  "stage_id": opportunity.stage_id}, subject=_subject(opportunity))
    return opportunity


def _close_date(given: date | None, today: date) -> date:
    """The day it closed: given, else today. Not in the future: revenue is booked in its month."""
    if given is not None and given > today:
        raise RuleViolation(f"the close date {given.isoformat()} is in the future: an opportunity "
                            "is won or lost on the day it happens or before")
    return given or today


async def mark_won(
    session: AsyncSession, opportunity_id: int, *, close_date: date | None = None,
) -> Opportunity:
    """Won: the account becomes a customer; the business data is frozen from now on. The
    revenue is booked in the close date's month and credited to the owner of this moment."""
    opportunity = await get_or_404(session, Opportunity, opportunity_id)
    if opportunity.status == OpportunityStatus.WON:
        raise Conflict(f"opportunity {opportunity_id} is won already")
    ensure_open(opportunity)
    now = utcnow()
    closed = _close_date(close_date, now.date())
    await ensure_month_snapshot(session, now.date())
    opportunity.status = OpportunityStatus.WON
    opportunity.won_at = now
    opportunity.probability = 100
    opportunity.close_date = closed
    opportunity.credited_owner_id = opportunity.owner_id
    became_customer = False
    if opportunity.account_id is not None:
        account = await get_or_404(session, Account, opportunity.account_id)
        if account.status != AccountStatus.CUSTOMER or account.customer_since is None:
            became_customer = account.status != AccountStatus.CUSTOMER
            account.status = AccountStatus.CUSTOMER
            account.customer_since = account.customer_since or now
    await session.flush()
    record_event(
        session, "opportunity.won",
        {"id": opportunity.id, "amount": str(opportunity.amount) if opportunity.amount else None,
         "account_id": opportunity.account_id, "owner_id": opportunity.owner_id,
         "close_date": closed.isoformat()},
        subject=_subject(opportunity),
    )
    if became_customer:
        record_event(session, "account.became_customer",
                     {"id": opportunity.account_id, "opportunity_id": opportunity.id},
                     subject=f"account/{opportunity.account_id}")
    return opportunity


async def mark_lost(
    session: AsyncSession, opportunity_id: int, loss_reason_id: int | None, *,
    note: str | None = None, close_date: date | None = None,
) -> Opportunity:
    """Lost: needs a loss reason from the (admin-extensible) list."""
    opportunity = await get_or_404(session, Opportunity, opportunity_id)
    if opportunity.status == OpportunityStatus.LOST:
        raise Conflict(f"opportunity {opportunity_id} is lost already")
    ensure_open(opportunity)
    if loss_reason_id is None:
        raise RuleViolation("lost needs a loss reason")
    reason = await session.get(LossReason, loss_reason_id)
    if reason is None or not reason.active:
        raise RuleViolation(f"loss reason {loss_reason_id} does not exist or is retired")
    now = utcnow()
    closed = _close_date(close_date, now.date())
    await ensure_month_snapshot(session, now.date())
    opportunity.status = OpportunityStatus.LOST
    opportunity.lost_at = now
    opportunity.loss_reason_id = reason.id
    opportunity.loss_note = note
    opportunity.close_date = closed
    opportunity.probability = 0  # lost: no weighted value in any forecast
    await session.flush()
    record_event(session, "opportunity.lost",
                 {"id": opportunity.id, "loss_reason_id": reason.id, "loss_reason": reason.name},
                 subject=_subject(opportunity))
    return opportunity


async def subscribe(session: AsyncSession, opportunity_id: int, user_id: int) -> Opportunity:
    opportunity = await get_or_404(session, Opportunity, opportunity_id)
    await ensure_exists(session, User, user_id, "user")
    if any(s.user_id == user_id for s in opportunity.subscribers):
        raise Conflict(f"user {user_id} follows opportunity {opportunity_id} already")
    opportunity.subscribers.append(OpportunitySubscriber(user_id=user_id))
    await session.flush()
    record_event(session, "opportunity.subscribed", {"id": opportunity_id, "user_id": user_id},
                 subject=_subject(opportunity))
    return opportunity


async def unsubscribe(session: AsyncSession, opportunity_id: int, user_id: int) -> Opportunity:
    opportunity = await get_or_404(session, Opportunity, opportunity_id)
    keep = [s for s in opportunity.subscribers if s.user_id != user_id]
    if len(keep) == len(opportunity.subscribers):
        raise RuleViolation(f"user {user_id} does not follow opportunity {opportunity_id}")
    opportunity.subscribers = keep
    await session.flush()
    record_event(session, "opportunity.unsubscribed", {"id": opportunity_id, "user_id": user_id},
                 subject=_subject(opportunity))
    return opportunity


async def stage_history(session: AsyncSession, opportunity_id: int) -> list[StageChange]:
    await get_or_404(session, Opportunity, opportunity_id)
    rows = await session.scalars(
        select(StageChange).where(StageChange.opportunity_id == opportunity_id)
        .order_by(StageChange.changed_at, StageChange.id)
    )
    return list(rows)


async def ensure_month_snapshot(session: AsyncSession, today: date) -> None:
    """Before the first change of a month, record the open opportunities as they stood at its
    start (the month-over-month reports read these)."""
    month = today.replace(day=1)
    if await session.get(SnapshotMonth, month) is None:
        await snapshot_open_opportunities(session, month)


async def snapshot_open_opportunities(session: AsyncSession, month: date) -> int:
    """Record the open opportunities for ``month`` (its first day); safe to run twice."""
    month = month.replace(day=1)
    done = set(await session.scalars(
        select(OpportunitySnapshot.opportunity_id).where(OpportunitySnapshot.month == month)
    ))
    rows = await session.execute(
        select(Opportunity.id, Opportunity.kind, Opportunity.pipeline_id, Opportunity.stage_id,
               Opportunity.owner_id, Opportunity.amount, Opportunity.probability)
        .where(Opportunity.status == OpportunityStatus.OPEN)
    )
    added = 0
    for row in rows:
        if row.id in done:
            continue
        session.add(OpportunitySnapshot(
            month=month, opportunity_id=row.id, kind=str(row.kind), pipeline_id=row.pipeline_id,
            stage_id=row.stage_id, owner_id=row.owner_id, amount=row.amount,
            probability=row.probability,
        ))
        added += 1
    if await session.get(SnapshotMonth, month) is None:
        session.add(SnapshotMonth(month=month, taken_at=utcnow()))
    await session.flush()
    return added
