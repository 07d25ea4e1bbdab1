"""Dashboard reports, computed in the database (see crmstore.reports)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from mailsvc.api import schemas as s
from mailsvc.api.deps import Caller, LinkingConfig, Session
from mailsvc.api.routes.common import my_id
from mailsvc.crmstore import reports
from mailsvc.crmstore.base import utcnow
from mailsvc.errors import RuleViolation

router = APIRouter(tags=["reports"])
Year = Annotated[int, Query(ge=2000, le=2100)]
Mine = Annotated[bool, Query(description="For the caller (owner = me) instead of owner_id.")]


def _period(date_from: date | None, date_to: date | None) -> reports.Period:
    """From/to are inclusive days; the default is the current month."""
    now = utcnow()
    if date_from is None and date_to is None:
        return reports.Period.month(now.year, now.month)
    start = datetime.combine(date_from or date(now.year, 1, 1), time(0), tzinfo=UTC)
    end_day = date_to or now.date()
    end = datetime.combine(end_day, time(0), tzinfo=UTC) + timedelta(days=1)
    if end <= start:
        raise RuleViolation("date_to must not be before date_from")
    return reports.Period(start, end)


@router.get("/reports/dashboard", summary="Every dashboard KPI for a period (default: this "
            "month), optionally for one owner")
async def dashboard(
    session: Session, linking: LinkingConfig, caller: Caller,
    date_from: Annotated[s.Day | None, Query()] = None,
    date_to: Annotated[s.Day | None, Query()] = None,
    owner_id: Annotated[int | None, Query(ge=1, le=s.MAX_ID)] = None,
    inactive_days: Annotated[int | None, Query(ge=1, le=3650)] = None,
    mine: Mine = False,
) -> dict[str, Any]:
    return await reports.dashboard(
        session, _period(date_from, date_to), my_id(caller) if mine else owner_id, now=utcnow(),
        inactive_days=inactive_days or linking.stale_contact_days,
    )


@router.get("/reports/team", summary="Won / lost / owned deals, revenue and budget target "
            "per user")
async def team(
    session: Session, date_from: Annotated[s.Day | None, Query()] = None,
    date_to: Annotated[s.Day | None, Query()] = None,
) -> list[dict[str, Any]]:
    return await reports.team(session, _period(date_from, date_to))


@router.get("/reports/months", summary="Revenue, budget target and forecast per month of a year")
async def months(
    session: Session, year: Year, caller: Caller,
    owner_id: Annotated[int | None, Query(ge=1, le=s.MAX_ID)] = None, mine: Mine = False,
) -> list[dict[str, Any]]:
    return await reports.months(session, year, my_id(caller) if mine else owner_id)
