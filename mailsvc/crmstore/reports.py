"""Dashboard KPIs (DOMAIN.md), per period and per owner, computed in the database with aggregates.

Every function takes a half-open period [start, end) and an optional owner; "now"-style figures
(open, overdue) use ``now``. Days are averaged as fractional days; rates are percentages.
"""

from __future__ import annotations

import calendar
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, case, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.models import (
    Account,
    Activity,
    Budget,
    BudgetMonth,
    Contact,
    InboxLead,
    Invoice,
    InvoiceStatus,
    LineItem,
    LossReason,
    Opportunity,
    OpportunityKind,
    OpportunitySnapshot,
    OpportunityStatus,
    Order,
    OrderStatus,
    Pipeline,
    Product,
    Quote,
    QuoteStatus,
    SnapshotMonth,
    Stage,
    Ticket,
    TicketStatus,
    TicketUpdate,
    User,
)
from mailsvc.errors import NotFound

logger = logging.getLogger(__name__)

CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    end: datetime

    @classmethod
    def month(cls, year: int, month: int) -> Period:
        start = datetime(year, month, 1, tzinfo=UTC)
        days = calendar.monthrange(year, month)[1]
        return cls(start, start + timedelta(days=days))

    @classmethod
    def year(cls, year: int) -> Period:
        return cls(datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC))

    def contains(self, column: Any) -> ColumnElement[bool]:
        return and_(column >= self.start, column < self.end)

    def contains_date(self, column: Any) -> ColumnElement[bool]:
        return and_(column >= self.start.date(), column < self.end.date())


# ---------------------------------------------------------------- dialect-aware helpers
def _is_sqlite(session: AsyncSession) -> bool:
    bind = session.bind
    assert bind is not None, "reports need a session bound to an engine"
    return bind.dialect.name == "sqlite"


def days_between(session: AsyncSession, end: Any, start: Any) -> ColumnElement[Any]:
    """Fractional days from ``start`` to ``end`` (timestamps)."""
    if _is_sqlite(session):
        return func.julianday(end) - func.julianday(start)
    return func.extract("epoch", end - start) / 86400.0


def date_days_between(session: AsyncSession, end: Any, start: Any) -> ColumnElement[Any]:
    """Whole days from ``start`` to ``end`` (dates)."""
    if _is_sqlite(session):
        return func.julianday(end) - func.julianday(start)
    days: ColumnElement[Any] = end - start  # PostgreSQL: date - date is an integer of days
    return days


def month_of(session: AsyncSession, column: Any, is_date: bool = False) -> ColumnElement[str]:
    """'YYYY-MM' of a timestamp (in UTC) or a date."""
    if _is_sqlite(session):
        return func.strftime("%Y-%m", column)
    value = column if is_date else func.timezone("UTC", column)
    return func.to_char(value, "YYYY-MM")


def _money(value: Any) -> Decimal:
    return Decimal(str(value or 0)).quantize(CENT)


def _days(value: Any) -> float | None:
    return None if value is None else round(float(value), 2)


def _rate(part: int, whole: int) -> float | None:
    return None if not whole else round(100.0 * part / whole, 1)


async def _one(session: AsyncSession, stmt: Any) -> Any:
    return (await session.execute(stmt)).one()


def _owned(model: Any, owner_id: int | None) -> list[ColumnElement[bool]]:
    return [] if owner_id is None else [model.owner_id == owner_id]


def _credited(owner_id: int | None) -> list[ColumnElement[bool]]:
    """Won revenue belongs to the owner credited when it was won (a later owner change does not
    move it)."""
    if owner_id is None:
        return []
    return [func.coalesce(Opportunity.credited_owner_id, Opportunity.owner_id) == owner_id]


def _won_in(period: Period) -> ColumnElement[bool]:
    """Won, with its close date (the day it was won, never in the future) in the period."""
    return and_(Opportunity.status == OpportunityStatus.WON,
                period.contains_date(Opportunity.close_date))


async def check_owner(session: AsyncSession, owner_id: int | None) -> None:
    """A report for a user that does not exist is an error, not a page of zeros."""
    if owner_id is not None and await session.get(User, owner_id) is None:
        raise NotFound(f"user {owner_id} does not exist")


def _count_if(condition: Any) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _sum_if(condition: ColumnElement[bool], value: Any) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((condition, value), else_=0)), 0)


# ---------------------------------------------------------------- sections
async def inbox_kpis(session: AsyncSession, period: Period, owner_id: int | None = None
                     ) -> dict[str, Any]:
    created = period.contains(InboxLead.created_at)
    row = await _one(session, select(
        _count_if(created).label("total"),
        _count_if(and_(created, InboxLead.opportunity_id.is_not(None))).label("converted"),
        _count_if(period.contains(InboxLead.archived_at)).label("archived"),
        func.avg(case((period.contains(InboxLead.qualified_at),
                       days_between(session, InboxLead.qualified_at, InboxLead.created_at))))
        .label("qualification"),
    ).where(*_owned(InboxLead, owner_id)))
    return {"total": row.total, "converted": row.converted,
            "conversion_rate": _rate(row.converted, row.total), "archived": row.archived,
            "avg_qualification_days": _days(row.qualification)}


def _created_as_lead() -> ColumnElement[bool]:
    return or_(Opportunity.deal_at.is_(None), Opportunity.deal_at != Opportunity.created_at)


async def lead_kpis(session: AsyncSession, period: Period, owner_id: int | None = None
                    ) -> dict[str, Any]:
    is_lead = Opportunity.kind == OpportunityKind.LEAD
    as_lead = _created_as_lead()
    intake = and_(period.contains(Opportunity.created_at), as_lead)
    left_at = func.coalesce(Opportunity.deal_at, Opportunity.won_at, Opportunity.lost_at)
    no_activity = ~exists().where(Activity.opportunity_id == Opportunity.id)
    row = await _one(session, select(
        _count_if(and_(is_lead, Opportunity.status == OpportunityStatus.OPEN)).label("open"),
        _count_if(intake).label("intake"),
        _count_if(and_(intake, Opportunity.deal_at.is_not(None))).label("to_deal"),
        _count_if(and_(is_lead, period.contains(Opportunity.won_at))).label("won"),
        _count_if(and_(is_lead, period.contains(Opportunity.lost_at))).label("lost"),
        func.avg(case((and_(as_lead, period.contains(left_at)),
                       days_between(session, left_at, Opportunity.created_at)))).label("dwell"),
        _count_if(and_(is_lead, Opportunity.status == OpportunityStatus.OPEN, no_activity))
        .label("idle"),
    ).where(*_owned(Opportunity, owner_id)))
    return {"open": row.open, "intake": row.intake, "won": row.won, "lost": row.lost,
            "converted_to_deal": row.to_deal,
            "deal_conversion_rate": _rate(row.to_deal, row.intake),
            "avg_dwell_days": _days(row.dwell), "without_activity": row.idle,
            "loss_reasons": await loss_reasons(session, period, OpportunityKind.LEAD, owner_id)}


async def loss_reasons(
    session: AsyncSession, period: Period, kind: OpportunityKind | None = None,
    owner_id: int | None = None,
) -> list[dict[str, Any]]:
    conditions = [period.contains(Opportunity.lost_at), *_owned(Opportunity, owner_id)]
    if kind is not None:
        conditions.append(Opportunity.kind == kind)
    rows = await session.execute(
        select(LossReason.name, func.count(Opportunity.id).label("count"))
        .join(Opportunity, Opportunity.loss_reason_id == LossReason.id).where(*conditions)
        .group_by(LossReason.name).order_by(func.count(Opportunity.id).desc(), LossReason.name)
    )
    return [{"reason": name, "count": count} for name, count in rows]


async def deal_kpis(
    session: AsyncSession, period: Period, owner_id: int | None = None, *,
    now: datetime, inactive_days: int = 14,
) -> dict[str, Any]:
    is_deal = Opportunity.kind == OpportunityKind.DEAL
    is_open = and_(is_deal, Opportunity.status == OpportunityStatus.OPEN)
    closed_at = func.coalesce(Opportunity.won_at, Opportunity.lost_at)
    since = now - timedelta(days=inactive_days)
    recent = exists().where(Activity.opportunity_id == Opportunity.id,
                            func.coalesce(Activity.done_at, Activity.created_at) >= since)
    weighted = Opportunity.amount * Opportunity.probability / 100
    row = await _one(session, select(
        _count_if(is_open).label("open"),
        _count_if(period.contains(Opportunity.deal_at)).label("intake"),
        _count_if(and_(is_deal, period.contains(Opportunity.won_at))).label("won"),
        _count_if(and_(is_deal, period.contains(Opportunity.lost_at))).label("lost"),
        func.avg(case((and_(is_deal, period.contains(closed_at)),
                       days_between(session, closed_at, Opportunity.deal_at)))).label("dwell"),
        _sum_if(is_open, Opportunity.amount).label("pipeline"),
        _sum_if(is_open, weighted).label("weighted"),
        _count_if(and_(is_open, ~recent)).label("idle"),
    ).where(*_owned(Opportunity, owner_id)))
    return {"open": row.open, "intake": row.intake, "won": row.won, "lost": row.lost,
            "win_rate": _rate(row.won, row.won + row.lost), "avg_dwell_days": _days(row.dwell),
            "pipeline_value": _money(row.pipeline), "weighted_pipeline_value": _money(row.weighted),
            "without_activity": row.idle, "inactive_days": inactive_days,
            "forecast_by_stage": await forecast_by_stage(session, owner_id),
            "loss_reasons": await loss_reasons(session, period, OpportunityKind.DEAL, owner_id)}


async def forecast_by_stage(session: AsyncSession, owner_id: int | None = None
                            ) -> list[dict[str, Any]]:
    weighted = Opportunity.amount * Opportunity.probability / 100
    rows = await session.execute(
        select(Pipeline.name, Stage.name, Stage.position, func.count(Opportunity.id),
               func.coalesce(func.sum(Opportunity.amount), 0),
               func.coalesce(func.sum(weighted), 0))
        .join(Stage, Stage.id == Opportunity.stage_id)
        .join(Pipeline, Pipeline.id == Stage.pipeline_id)
        .where(Opportunity.status == OpportunityStatus.OPEN,
               Opportunity.kind == OpportunityKind.DEAL, *_owned(Opportunity, owner_id))
        .group_by(Pipeline.name, Stage.name, Stage.position)
        .order_by(Pipeline.name, Stage.position)
    )
    return [{"pipeline": p, "stage": st, "count": n, "amount": _money(a),
             "weighted": _money(w)} for p, st, _pos, n, a, w in rows]


async def activity_kpis(session: AsyncSession, period: Period, owner_id: int | None = None, *,
                        now: datetime) -> dict[str, Any]:
    is_open = Activity.done.is_(False)
    row = await _one(session, select(
        _count_if(is_open).label("open"),
        _count_if(and_(is_open, Activity.due_at < now)).label("overdue"),
        _count_if(period.contains(Activity.done_at)).label("done"),
    ).where(*_owned(Activity, owner_id)))
    by_type = await session.execute(
        select(Activity.type, func.count()).where(period.contains(Activity.created_at),
                                                  *_owned(Activity, owner_id))
        .group_by(Activity.type).order_by(Activity.type)
    )
    return {"open": row.open, "overdue": row.overdue, "done": row.done,
            "by_type": {str(t): n for t, n in by_type}}


async def quote_kpis(session: AsyncSession, period: Period, owner_id: int | None = None
                     ) -> dict[str, Any]:
    created = period.contains(Quote.created_at)
    submitted = Quote.status.in_([QuoteStatus.SENT, QuoteStatus.ACCEPTED, QuoteStatus.REJECTED])
    row = await _one(session, select(
        _count_if(created).label("count"),
        _sum_if(created, Quote.amount).label("volume"),
        func.avg(case((created, Quote.amount))).label("avg_amount"),
        _count_if(Quote.status.in_([QuoteStatus.OPEN, QuoteStatus.SENT])).label("open"),
        _count_if(period.contains(Quote.sent_at)).label("sent"),
        _count_if(and_(created, submitted)).label("submitted"),
        _count_if(and_(created, Quote.status == QuoteStatus.ACCEPTED)).label("accepted"),
        func.avg(case((period.contains(Quote.decided_at),
                       days_between(session, Quote.decided_at, Quote.created_at))))
        .label("duration"),
    ).where(*_owned(Quote, owner_id)))
    return {"count": row.count, "volume": _money(row.volume), "open": row.open, "sent": row.sent,
            "acceptance_rate": _rate(row.accepted, row.submitted),
            "avg_amount": _money(row.avg_amount) if row.avg_amount is not None else None,
            "avg_duration_days": _days(row.duration)}


async def order_kpis(session: AsyncSession, period: Period, owner_id: int | None = None
                     ) -> dict[str, Any]:
    created = and_(period.contains(Order.created_at), Order.status != OrderStatus.CANCELLED)
    row = await _one(session, select(
        _count_if(created).label("count"),
        _sum_if(created, Order.amount).label("volume"),
        func.avg(case((created, Order.amount))).label("avg_amount"),
        func.avg(case((period.contains(Order.delivered_at),
                       days_between(session, Order.delivered_at, Order.created_at))))
        .label("delivery"),
    ).where(*_owned(Order, owner_id)))
    return {"count": row.count, "volume": _money(row.volume),
            "avg_amount": _money(row.avg_amount) if row.avg_amount is not None else None,
            "avg_delivery_days": _days(row.delivery)}


async def invoice_kpis(session: AsyncSession, period: Period, owner_id: int | None = None, *,
                       today: date) -> dict[str, Any]:
    is_open = Invoice.status == InvoiceStatus.OPEN
    month_end = today.replace(day=calendar.monthrange(today.year, today.month)[1])
    due_soon = and_(is_open, Invoice.due_date >= today, Invoice.due_date <= month_end)
    overdue = and_(is_open, Invoice.due_date < today)
    paid = and_(Invoice.status == InvoiceStatus.PAID, period.contains_date(Invoice.paid_date))
    row = await _one(session, select(
        _count_if(due_soon).label("due"), _sum_if(due_soon, Invoice.amount).label("due_amount"),
        _count_if(overdue).label("overdue"),
        _sum_if(overdue, Invoice.amount).label("overdue_amount"),
        _count_if(paid).label("paid"),
        _count_if(and_(paid, Invoice.paid_date <= Invoice.due_date)).label("on_time"),
        func.avg(case((paid, date_days_between(session, Invoice.paid_date, Invoice.issued_on))))
        .label("days_to_pay"),
    ).where(*_owned(Invoice, owner_id)))
    return {"due_this_month": row.due, "due_this_month_amount": _money(row.due_amount),
            "overdue": row.overdue, "overdue_amount": _money(row.overdue_amount),
            "paid": row.paid, "avg_days_to_pay": _days(row.days_to_pay),
            "paid_on_time_rate": _rate(row.on_time, row.paid)}


async def contact_kpis(session: AsyncSession, period: Period, owner_id: int | None = None
                       ) -> dict[str, Any]:
    row = await _one(session, select(
        func.count(Contact.id).label("total"), _count_if(Contact.active).label("active"),
    ).where(*_owned(Contact, owner_id)))
    return {"total": row.total, "active": row.active,
            "top_customers": await top_customers(session, period, owner_id)}


def _responsible() -> ColumnElement[Any]:
    """Who an opportunity counts for: a won one for the owner credited when it was won (as its
    revenue), any other for its owner."""
    return case((Opportunity.status == OpportunityStatus.WON,
                 func.coalesce(Opportunity.credited_owner_id, Opportunity.owner_id)),
                else_=Opportunity.owner_id)


async def won_lost_contacts(session: AsyncSession, period: Period, owner_id: int | None = None
                            ) -> dict[str, Any]:
    """Contacts won and lost in the period, decided by their opportunities (leads and deals).

    A contact is *won* when at least one of its opportunities was won in the period (close date
    in the period, as the revenue); ``won_amount`` is what those opportunities brought. A contact
    is *lost* when opportunities of it were lost in the period (``lost_at``) and none was won
    in it: a contact who bought in the same period is not lost. ``lost_amount`` is the amount of
    those lost opportunities. Each contact counts once; opportunities without a contact count
    for nobody. For one owner, only the opportunities that count for that owner are seen (won:
    the credited owner, lost: the owner)."""
    won = _won_in(period)
    lost = and_(Opportunity.status == OpportunityStatus.LOST,
                period.contains(Opportunity.lost_at))
    narrowed = [] if owner_id is None else [_responsible() == owner_id]
    per_contact = (
        select(Opportunity.contact_id.label("contact_id"),
               _count_if(won).label("won"), _sum_if(won, Opportunity.amount).label("won_amount"),
               _sum_if(lost, Opportunity.amount).label("lost_amount"))
        .where(Opportunity.contact_id.is_not(None), or_(won, lost), *narrowed)
        .group_by(Opportunity.contact_id).subquery())
    was_won = per_contact.c.won > 0
    row = await _one(session, select(
        _count_if(was_won).label("won"), _sum_if(was_won, per_contact.c.won_amount)
        .label("won_amount"),
        _count_if(~was_won).label("lost"), _sum_if(~was_won, per_contact.c.lost_amount)
        .label("lost_amount"),
    ).select_from(per_contact))
    return {"won": int(row.won), "won_amount": _money(row.won_amount), "lost": int(row.lost),
            "lost_amount": _money(row.lost_amount)}


async def top_customers(session: AsyncSession, period: Period, owner_id: int | None = None,
                        limit: int = 10) -> list[dict[str, Any]]:
    revenue = func.sum(Opportunity.amount)
    rows = await session.execute(
        select(Account.id, Account.name, revenue.label("revenue"))
        .join(Opportunity, Opportunity.account_id == Account.id)
        .where(_won_in(period), *_credited(owner_id))
        .group_by(Account.id, Account.name).order_by(revenue.desc(), Account.id).limit(limit)
    )
    return [{"account_id": i, "name": n, "revenue": _money(r)} for i, n, r in rows]


async def ticket_kpis(session: AsyncSession, period: Period, owner_id: int | None = None
                      ) -> dict[str, Any]:
    row = await _one(session, select(
        _count_if(period.contains(Ticket.created_at)).label("created"),
        _count_if(Ticket.status.in_([TicketStatus.OPEN, TicketStatus.IN_PROGRESS]))
        .label("open"),
        func.avg(case((period.contains(Ticket.resolved_at),
                       days_between(session, Ticket.resolved_at, Ticket.created_at))))
        .label("dwell"),
    ).where(*_owned(Ticket, owner_id)))
    statuses = await session.execute(
        select(Ticket.status, func.count()).where(*_owned(Ticket, owner_id))
        .group_by(Ticket.status).order_by(Ticket.status)
    )
    service = await service_kpis(session, period, owner_id)
    return {"created": row.created, "open": row.open, "avg_dwell_days": _days(row.dwell),
            "by_status": {str(st): n for st, n in statuses}, **service}


async def service_kpis(session: AsyncSession, period: Period, owner_id: int | None = None
                       ) -> dict[str, Any]:
    """Of the tickets created in the period: days to the first response (the first update that
    is not an incoming mail), days to resolution, and the share reopened after being resolved
    or closed (of those resolved or closed at least once)."""
    first = (select(TicketUpdate.ticket_id, func.min(TicketUpdate.created_at).label("at"))
             .where(TicketUpdate.email_id.is_(None)).group_by(TicketUpdate.ticket_id)
             .subquery())
    closed = TicketUpdate.status_to.in_([TicketStatus.RESOLVED.value, TicketStatus.CLOSED.value])
    reopened = and_(TicketUpdate.status_to == TicketStatus.OPEN.value,
                    TicketUpdate.status_from.in_([TicketStatus.RESOLVED.value,
                                                  TicketStatus.CLOSED.value]))
    was_closed = or_(Ticket.resolved_at.is_not(None),
                     exists().where(TicketUpdate.ticket_id == Ticket.id, closed))
    was_reopened = exists().where(TicketUpdate.ticket_id == Ticket.id, reopened)
    created = period.contains(Ticket.created_at)
    row = await _one(session, select(
        func.avg(case((created, days_between(session, first.c.at, Ticket.created_at))))
        .label("response"),
        func.avg(case((and_(created, Ticket.resolved_at.is_not(None)),
                       days_between(session, Ticket.resolved_at, Ticket.created_at))))
        .label("resolution"),
        _count_if(and_(created, was_closed)).label("closed"),
        _count_if(and_(created, was_reopened)).label("reopened"),
    ).select_from(Ticket).outerjoin(first, first.c.ticket_id == Ticket.id)
        .where(*_owned(Ticket, owner_id)))
    return {"avg_first_response_days": _days(row.response),
            "avg_resolution_days": _days(row.resolution),
            "reopen_rate": _rate(row.reopened, row.closed)}


async def product_kpis(session: AsyncSession, period: Period, owner_id: int | None = None,
                       limit: int = 10) -> dict[str, Any]:
    """Top products: net revenue and quantity from the line items of the orders (not
    cancelled) placed in the period."""
    net = func.sum(LineItem.net)
    rows = await session.execute(
        select(Product.id, Product.name, net.label("revenue"),
               func.sum(LineItem.quantity).label("quantity"), func.count(Order.id.distinct()))
        .join(LineItem, LineItem.product_id == Product.id)
        .join(Order, Order.id == LineItem.order_id)
        .where(Order.status != OrderStatus.CANCELLED, period.contains(Order.created_at),
               *_owned(Order, owner_id))
        .group_by(Product.id, Product.name).order_by(net.desc(), Product.id).limit(limit)
    )
    return {"top": [{"product_id": i, "name": n, "revenue": _money(r),
                     "quantity": float(q or 0), "orders": c} for i, n, r, q, c in rows]}


async def sales_kpis(session: AsyncSession, period: Period, owner_id: int | None = None
                     ) -> dict[str, Any]:
    won = _won_in(period)
    row = await _one(session, select(
        _sum_if(won, Opportunity.amount).label("revenue"), _count_if(won).label("won"),
    ).where(*_credited(owner_id)))
    return {"revenue": _money(row.revenue), "won": row.won}


async def revenue_by_pipeline(session: AsyncSession, period: Period, owner_id: int | None = None
                              ) -> list[dict[str, Any]]:
    """Won revenue of the period per pipeline (the one the deal was won in); deals without a
    pipeline come last with ``pipeline_id`` null."""
    revenue = func.sum(Opportunity.amount)
    rows = await session.execute(
        select(Pipeline.id, Pipeline.name, func.count(Opportunity.id), revenue)
        .select_from(Opportunity).outerjoin(Pipeline, Pipeline.id == Opportunity.pipeline_id)
        .where(_won_in(period), *_credited(owner_id))
        .group_by(Pipeline.id, Pipeline.name)
    )
    found = [{"pipeline_id": i, "pipeline": n, "won": c, "revenue": _money(r)}
             for i, n, c, r in rows]
    return sorted(found, key=lambda r: (r["pipeline_id"] is None, -r["revenue"],
                                        r["pipeline_id"] or 0))


def period_months(period: Period) -> list[str]:
    """The 'YYYY-MM' keys of the months the period touches, in order."""
    keys: list[str] = []
    year, month = period.start.year, period.start.month
    while datetime(year, month, 1, tzinfo=UTC) < period.end:
        keys.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return keys


async def cashflow(session: AsyncSession, period: Period, owner_id: int | None = None
                   ) -> list[dict[str, Any]]:
    """Per month of the period: what falls due (invoices not cancelled, by due date), what came
    in (paid invoices, by paid date), and of what fell due in the month what is still unpaid."""
    live = Invoice.status != InvoiceStatus.CANCELLED
    is_paid = Invoice.status == InvoiceStatus.PAID
    due_month = month_of(session, Invoice.due_date, is_date=True)
    due: dict[str, Any] = {m: (a, o) for m, a, o in await session.execute(
        select(due_month, func.sum(Invoice.amount), _sum_if(~is_paid, Invoice.amount))
        .where(live, period.contains_date(Invoice.due_date), *_owned(Invoice, owner_id))
        .group_by(due_month))}
    paid_month = month_of(session, Invoice.paid_date, is_date=True)
    paid: dict[str, Any] = dict(list(await session.execute(
        select(paid_month, func.sum(Invoice.amount))
        .where(is_paid, period.contains_date(Invoice.paid_date), *_owned(Invoice, owner_id))
        .group_by(paid_month))))
    months_ = []
    for key in period_months(period):
        due_amount, unpaid = due.get(key, (0, 0))
        months_.append({"month": key, "due": _money(due_amount), "paid": _money(paid.get(key)),
                        "unpaid_of_due": _money(unpaid)})
    return months_


async def quote_conversion(session: AsyncSession, period: Period, owner_id: int | None = None
                           ) -> dict[str, Any]:
    """Quote → won: of the opportunities that got a quote in the period (counted once however
    many quotes), how many are won by now."""
    quoted = (select(Quote.opportunity_id).where(period.contains(Quote.created_at),
                                                 Quote.opportunity_id.is_not(None),
                                                 *_owned(Quote, owner_id))
              .distinct().subquery())
    row = await _one(session, select(
        func.count(Opportunity.id).label("quoted"),
        _count_if(Opportunity.status == OpportunityStatus.WON).label("won"),
    ).join(quoted, quoted.c.opportunity_id == Opportunity.id))
    return {"quoted_opportunities": row.quoted, "won": row.won,
            "rate": _rate(row.won, row.quoted)}


async def deals_ending(session: AsyncSession, owner_id: int | None = None, *, today: date
                       ) -> dict[str, Any]:
    """Open deals whose expected close date is in the current month (``today``'s)."""
    month = Period.month(today.year, today.month)
    ending = and_(Opportunity.kind == OpportunityKind.DEAL,
                  Opportunity.status == OpportunityStatus.OPEN,
                  month.contains_date(Opportunity.close_date))
    row = await _one(session, select(
        func.count(Opportunity.id).label("count"),
        func.coalesce(func.sum(Opportunity.amount), 0).label("amount"),
        func.coalesce(func.sum(Opportunity.amount * Opportunity.probability / 100), 0)
        .label("weighted"),
        _count_if(Opportunity.close_date < today).label("overdue"),
    ).where(ending, *_owned(Opportunity, owner_id)))
    return {"month": f"{today.year:04d}-{today.month:02d}", "count": row.count,
            "amount": _money(row.amount), "weighted": _money(row.weighted),
            "past_close_date": row.overdue}


# Age buckets of the last interaction: (label, at most so many days ago).
INTERACTION_BUCKETS: tuple[tuple[str, int], ...] = (
    ("30_days", 30), ("90_days", 90), ("365_days", 365))


async def contacts_by_interaction(session: AsyncSession, owner_id: int | None = None, *,
                                  now: datetime) -> dict[str, int]:
    """Active contacts by the age of their last interaction: the newest done activity on them
    (calls, meetings, tasks and every logged e-mail, which the intake records as a done e-mail
    activity); bucket "older" beyond a year, "never" without any."""
    last = (select(Activity.contact_id.label("contact_id"),
                   func.max(func.coalesce(Activity.done_at, Activity.created_at)).label("at"))
            .where(Activity.done.is_(True), Activity.contact_id.is_not(None))
            .group_by(Activity.contact_id).subquery())
    columns = [_count_if(last.c.at >= now - timedelta(days=days)).label(label)
               for label, days in INTERACTION_BUCKETS]
    row = await _one(session, select(
        *columns, _count_if(last.c.at.is_(None)).label("never"),
        func.count(Contact.id).label("total"),
    ).select_from(Contact).outerjoin(last, last.c.contact_id == Contact.id)
        .where(Contact.active.is_(True), *_owned(Contact, owner_id)))
    counts = {label: int(getattr(row, label)) for label, _ in INTERACTION_BUCKETS}
    # Cumulative in SQL (within 90 days includes within 30): made disjoint here.
    buckets: dict[str, int] = {}
    below = 0
    for label, _ in INTERACTION_BUCKETS:
        buckets[label] = counts[label] - below
        below = counts[label]
    buckets["older"] = int(row.total) - below - int(row.never)
    buckets["never"] = int(row.never)
    return buckets


async def dashboard(
    session: AsyncSession, period: Period, owner_id: int | None = None, *,
    now: datetime, inactive_days: int = 14,
) -> dict[str, Any]:
    """Every dashboard KPI of DOMAIN.md for the period (and owner)."""
    await check_owner(session, owner_id)
    return {
        "period": {"start": period.start.isoformat(), "end": period.end.isoformat()},
        "owner_id": owner_id,
        "sales": {**await sales_kpis(session, period, owner_id),
                  "revenue_by_pipeline": await revenue_by_pipeline(session, period, owner_id)},
        "cashflow": await cashflow(session, period, owner_id),
        "inbox": await inbox_kpis(session, period, owner_id),
        "leads": await lead_kpis(session, period, owner_id),
        "deals": {**await deal_kpis(session, period, owner_id, now=now,
                                    inactive_days=inactive_days),
                  "ending_this_month": await deals_ending(session, owner_id, today=now.date())},
        "activities": await activity_kpis(session, period, owner_id, now=now),
        "quotes": {**await quote_kpis(session, period, owner_id),
                   "won_conversion": await quote_conversion(session, period, owner_id)},
        "orders": await order_kpis(session, period, owner_id),
        "invoices": await invoice_kpis(session, period, owner_id, today=now.date()),
        "contacts": {**await contact_kpis(session, period, owner_id),
                     "by_last_interaction": await contacts_by_interaction(session, owner_id,
                                                                          now=now),
                     "won_and_lost": await won_lost_contacts(session, period, owner_id)},
        "tickets": await ticket_kpis(session, period, owner_id),
        "products": await product_kpis(session, period, owner_id),
    }


def _month_index(moment: datetime) -> int:
    return moment.year * 12 + moment.month - 1


async def user_targets(session: AsyncSession, period: Period) -> dict[int, Decimal]:
    """Per user with a budget: the sum of the user's monthly targets over the months the
    period touches (a month the period covers only in part counts whole: targets are per
    month). Users without a budget for any of those months are absent."""
    first = _month_index(period.start)
    last = _month_index(period.end - timedelta(microseconds=1))
    index = Budget.year * 12 + BudgetMonth.month - 1
    rows = await session.execute(
        select(Budget.user_id, func.sum(BudgetMonth.target))
        .join(BudgetMonth, BudgetMonth.budget_id == Budget.id)
        .where(Budget.user_id.is_not(None), index >= first, index <= last)
        .group_by(Budget.user_id))
    return {user_id: _money(total) for user_id, total in rows if user_id is not None}


def _attainment(revenue: Decimal, target: Decimal | None) -> float | None:
    """Revenue as a percentage of the target; none without a target (or a zero one)."""
    return None if not target else round(float(100 * revenue / target), 1)


async def team(session: AsyncSession, period: Period) -> list[dict[str, Any]]:
    """Per user: deals won / lost in the period, deals owned (open), revenue in the period, and
    the user's own budget target for the period with the share of it reached.

    Won deals (and their revenue) count for the owner credited when they were won; lost and open
    ones for their owner. A user appears with an opportunity or with a budget for the period (a
    target and nothing won yet is exactly what the view must show); ``target`` is null for a
    user without a budget for the period."""
    won = _won_in(period)
    rows = await session.execute(
        select(User.id.label("id"),
               _count_if(won).label("won"),
               _count_if(and_(Opportunity.status == OpportunityStatus.LOST,
                              period.contains(Opportunity.lost_at))).label("lost"),
               _count_if(Opportunity.status == OpportunityStatus.OPEN).label("owned_open"),
               _sum_if(won, Opportunity.amount).label("revenue"))
        .join(Opportunity, _responsible() == User.id)
        .group_by(User.id)
    )
    figures = {r.id: {"won": r.won, "lost": r.lost, "owned_open": r.owned_open,
                      "revenue": _money(r.revenue)} for r in rows}
    targets = await user_targets(session, period)
    ids = set(figures) | set(targets)
    names = {i: n for i, n in await session.execute(
        select(User.id, User.name).where(User.id.in_(ids)))} if ids else {}
    nothing = {"won": 0, "lost": 0, "owned_open": 0, "revenue": _money(0)}
    result = []
    for user_id in sorted(ids, key=lambda i: (names[i], i)):
        row = figures.get(user_id, nothing)
        target = targets.get(user_id)
        result.append({"owner_id": user_id, "name": names[user_id], **row, "target": target,
                       "target_attainment": _attainment(row["revenue"], target)})
    return result


async def months(session: AsyncSession, year: int, owner_id: int | None = None
                 ) -> list[dict[str, Any]]:
    """Per month of ``year``: revenue won (by close date), budget target, the weighted forecast
    of open opportunities by their close date, and the open pipeline at the month's start (from
    the monthly snapshots) with the change against the month before.

    The target is the company's budget; a user's view (``owner_id``) has that user's own budget,
    and no target when the user has none (never the whole company's)."""
    await check_owner(session, owner_id)
    period = Period.year(year)
    won_month = month_of(session, Opportunity.close_date, is_date=True)
    revenue: dict[str, Any] = dict(list(await session.execute(
        select(won_month, func.sum(Opportunity.amount))
        .where(_won_in(period), *_credited(owner_id)).group_by(won_month)
    )))
    close_month = month_of(session, Opportunity.close_date, is_date=True)
    forecast: dict[str, Any] = dict(list(await session.execute(
        select(close_month, func.sum(Opportunity.amount * Opportunity.probability / 100))
        .where(Opportunity.status == OpportunityStatus.OPEN,
               period.contains_date(Opportunity.close_date), *_owned(Opportunity, owner_id))
        .group_by(close_month)
    )))
    whose = Budget.user_id.is_(None) if owner_id is None else Budget.user_id == owner_id
    targets: dict[int, Any] = dict(list(await session.execute(
        select(BudgetMonth.month, BudgetMonth.target).join(Budget)
        .where(Budget.year == year, whose)
    )))
    snapshots = await _snapshots(session, year, owner_id)
    result = []
    previous: dict[str, Any] | None = None
    for month in range(1, 13):
        key = f"{year:04d}-{month:02d}"
        start = snapshots.get(date(year, month, 1))
        row = {"month": key, "revenue": _money(revenue.get(key)),
               "target": _money(targets.get(month)) if month in targets else None,
               "target_scope": "user" if owner_id is not None else "company",
               "forecast": _money(forecast.get(key)), "pipeline_at_start": start,
               "pipeline_change": _change(start, previous)}
        previous = start
        result.append(row)
    return result


def _change(now: dict[str, Any] | None, before: dict[str, Any] | None) -> dict[str, Any] | None:
    if now is None or before is None:
        return None
    return {"open": now["open"] - before["open"], "amount": now["amount"] - before["amount"],
            "weighted": now["weighted"] - before["weighted"]}


async def _snapshots(session: AsyncSession, year: int, owner_id: int | None
                     ) -> dict[date, dict[str, Any]]:
    """The open pipeline at the start of each month of the year that has a snapshot."""
    taken = set(await session.scalars(
        select(SnapshotMonth.month).where(SnapshotMonth.month >= date(year, 1, 1),
                                          SnapshotMonth.month < date(year + 1, 1, 1))))
    if not taken:
        return {}
    weighted = OpportunitySnapshot.amount * OpportunitySnapshot.probability / 100
    rows = await session.execute(
        select(OpportunitySnapshot.month, func.count(OpportunitySnapshot.id),
               func.coalesce(func.sum(OpportunitySnapshot.amount), 0),
               func.coalesce(func.sum(weighted), 0))
        .where(OpportunitySnapshot.month.in_(taken), *_owned(OpportunitySnapshot, owner_id))
        .group_by(OpportunitySnapshot.month)
    )
    found = {m: {"open": n, "amount": _money(a), "weighted": _money(w)} for m, n, a, w in rows}
    empty = {"open": 0, "amount": _money(0), "weighted": _money(0)}
    return {m: found.get(m, dict(empty)) for m in taken}
