"""Plain reference entities: territories, sales teams, campaigns, tags, budgets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.models import Budget, BudgetMonth, Campaign, SalesTeam, Territory, User
from mailsvc.crmstore.outbox import record_event
from mailsvc.crmstore.services.common import apply_changes, ensure_exists, get_or_404
from mailsvc.errors import Conflict, RuleViolation


async def _unique_name(session: AsyncSession, model: Any, name: str, what: str) -> str:
    name = name.strip()
    if not name:
        raise RuleViolation(f"a {what} needs a name")
    if await session.scalar(select(model.id).where(model.name == name)):
        raise Conflict(f"a {what} named {name!r} exists already")
    return name


async def create_territory(
    session: AsyncSession, name: str, description: str | None = None
) -> Territory:
    territory = Territory(name=await _unique_name(session, Territory, name, "territory"),
                          description=description)
    session.add(territory)
    await session.flush()
    return territory


async def create_team(
    session: AsyncSession, name: str, territory_id: int | None = None
) -> SalesTeam:
    await ensure_exists(session, Territory, territory_id, "territory")
    team = SalesTeam(name=await _unique_name(session, SalesTeam, name, "sales team"),
                     territory_id=territory_id)
    session.add(team)
    await session.flush()
    return team


async def create_campaign(
    session: AsyncSession, name: str, *, start_date: date | None = None,
    end_date: date | None = None, budget: Decimal | None = None,
) -> Campaign:
    if start_date and end_date and end_date < start_date:
        raise RuleViolation("a campaign cannot end before it starts")
    if budget is not None and budget < 0:
        raise RuleViolation("a budget cannot be negative")
    campaign = Campaign(name=await _unique_name(session, Campaign, name, "campaign"),
                        start_date=start_date, end_date=end_date, budget=budget)
    session.add(campaign)
    await session.flush()
    return campaign


async def update_named(
    session: AsyncSession, model: Any, ident: int, changes: Mapping[str, Any],
    allowed: Sequence[str], what: str,
) -> Any:
    obj = await get_or_404(session, model, ident, what)
    if changes.get("name") is not None and changes["name"] != obj.name:
        changes = {**changes, "name": await _unique_name(session, model, changes["name"], what)}
    if "territory_id" in changes:
        await ensure_exists(session, Territory, changes["territory_id"], "territory")
    apply_changes(obj, changes, allowed)
    start, end = getattr(obj, "start_date", None), getattr(obj, "end_date", None)
    if start and end and end < start:
        raise RuleViolation("a campaign cannot end before it starts")
    await session.flush()
    return obj


async def create_budget(
    session: AsyncSession, year: int, targets: Sequence[Decimal] | None = None,
    name: str | None = None, annual_total: Decimal | None = None, user_id: int | None = None,
) -> Budget:
    """A year's budget with its 12 monthly targets (given, an annual total spread evenly, or 0):
    the company's, or with ``user_id`` that user's own targets. One of each per year."""
    if not 2000 <= year <= 2100:
        raise RuleViolation(f"{year} is not a plausible budget year")
    await ensure_exists(session, User, user_id, "user")
    existing = await session.scalar(select(Budget.id).where(
        Budget.year == year,
        Budget.user_id.is_(None) if user_id is None else Budget.user_id == user_id))
    if existing:
        whose = "the company" if user_id is None else f"user {user_id}"
        raise Conflict(f"a budget for {year} of {whose} exists already (budget {existing})")
    if targets is not None and len(targets) != 12:
        raise RuleViolation(f"a budget has 12 monthly targets, not {len(targets)}")
    if targets is None:
        total = annual_total or Decimal("0")
        share = (total / 12).quantize(Decimal("0.01"))
        targets = [share] * 11 + [total - share * 11]
    if any(t < 0 for t in targets):
        raise RuleViolation("a revenue target cannot be negative")
    budget = Budget(year=year, name=name, user_id=user_id,
                    months=[BudgetMonth(month=i + 1, target=t) for i, t in enumerate(targets)])
    session.add(budget)
    await session.flush()
    record_event(session, "budget.created", {"id": budget.id, "year": year, "user_id": user_id},
                 subject=f"budget/{budget.id}")
    return budget


async def set_budget_target(
    session: AsyncSession, budget_id: int, month: int, target: Decimal
) -> Budget:
    budget = await get_or_404(session, Budget, budget_id)
    if not 1 <= month <= 12:
        raise RuleViolation(f"month {month} is not between 1 and 12")
    if target < 0:
        raise RuleViolation("a revenue target cannot be negative")
    for row in budget.months:
        if row.month == month:
            row.target = target
    await session.flush()
    return budget
