"""The dashboard KPIs added last, through the API on SQLite and PostgreSQL, against numbers worked
out by hand: cashflow, quote → won conversion, revenue by pipeline (period January–February
2025), deals ending this month and active contacts by last interaction (relative to today)."""

from __future__ import annotations

import calendar
import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from mailsvc.bootstrap import Services
from mailsvc.crmstore import services as crm
from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import (
    Activity,
    ActivityType,
    Contact,
    Invoice,
    InvoiceStatus,
    Opportunity,
    OpportunityKind,
    OpportunitySnapshot,
    OpportunityStatus,
    Quote,
    SnapshotMonth,
)
from tests.support.api import ok

PERIOD = {"date_from": "2025-01-01", "date_to": "2025-02-28"}
DEAL, LEAD = OpportunityKind.DEAL, OpportunityKind.LEAD
WON, LOST, OPEN = OpportunityStatus.WON, OpportunityStatus.LOST, OpportunityStatus.OPEN




def at(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, 9, tzinfo=UTC)


async def build(services: Services) -> dict[str, int]:
    async with services.sessions() as session, session.begin():
        ann = await crm.create_user(session, "ann@corp.example", "Ann")
        bob = await crm.create_user(session, "bob@corp.example", "Bob")
        sales = await crm.create_pipeline(session, "Sales", DEAL, [crm.StageSpec("Won", 90)])
        projects = await crm.create_pipeline(session, "Projects", DEAL,
                                             [crm.StageSpec("Won", 90)])

        def opp(title: str, owner: int, status: OpportunityStatus, amount: int,
                close: date | None, pipeline: int | None = None, kind: OpportunityKind = DEAL,
                probability: int = 100) -> Opportunity:
            row = Opportunity(title=title, owner_id=owner, kind=kind, status=status,
                              amount=Decimal(amount), close_date=close, pipeline_id=pipeline,
                              probability=probability, created_at=at(2024, 11, 1),
                              deal_at=at(2024, 11, 1) if kind == DEAL else None,
                              tags=[], subscribers=[])
            session.add(row)
            return row

        # Won in the period: A (Sales 1000), D (Projects 2500), E (no pipeline 300), F (Sales
        # 500); G is won after it.
        a = opp("A", ann.id, WON, 1000, date(2025, 2, 10), sales.id)
        b = opp("B", bob.id, LOST, 700, date(2025, 2, 12), sales.id)
        c = opp("C", bob.id, OPEN, 900, date(2025, 6, 1), sales.id, probability=20)
        d = opp("D", bob.id, WON, 2500, date(2025, 1, 15), projects.id)
        opp("E", ann.id, WON, 300, date(2025, 1, 20))
        opp("F", bob.id, WON, 500, date(2025, 1, 5), sales.id)
        opp("G", ann.id, WON, 800, date(2025, 3, 1), sales.id)
        await session.flush()
        # Quotes in the period on A (twice), B and C; D's is from December; one has no deal.
        for opportunity, created in ((a, at(2025, 1, 3)), (a, at(2025, 1, 20)),
                                     (b, at(2025, 2, 1)), (c, at(2025, 2, 2)),
                                     (d, at(2024, 12, 1)), (None, at(2025, 1, 9))):
            session.add(Quote(title="Q", amount=Decimal(100), created_at=created,
                              opportunity_id=opportunity.id if opportunity else None,
                              owner_id=ann.id))
        # Invoices: amount, due, paid on, status, owner.
        for amount, issued, due, paid, status, owner in (
            (100, date(2025, 1, 1), date(2025, 1, 10), date(2025, 1, 8), "paid", ann),
            (200, date(2025, 1, 1), date(2025, 1, 20), date(2025, 2, 3), "paid", ann),
            (300, date(2025, 1, 1), date(2025, 2, 15), None, "open", bob),
            (400, date(2025, 1, 1), date(2025, 2, 20), None, "cancelled", bob),
            (50, date(2024, 12, 1), date(2024, 12, 20), date(2025, 1, 5), "paid", bob),
            (70, date(2025, 2, 1), date(2025, 3, 5), None, "open", bob),
        ):
            session.add(Invoice(amount=Decimal(amount), issued_on=issued, due_date=due,
                                paid_date=paid, status=InvoiceStatus(status), owner_id=owner.id))
    return {"ann": ann.id, "bob": bob.id, "sales": sales.id, "projects": projects.id}


async def test_cashflow_per_month_paid_against_due(
    client: httpx.AsyncClient, services: Services,
) -> None:
    ids = await build(services)
    board = ok(await client.get("/reports/dashboard", params=PERIOD))
    # January: due 100 + 200 (both paid, so nothing unpaid); in: 100 + 50 (December's, paid
    # 5 January). February: due 300 (the cancelled 400 does not count), in: 200.
    assert board["cashflow"] == [
        {"month": "2025-01", "due": "300.00", "paid": "150.00", "unpaid_of_due": "0.00"},
        {"month": "2025-02", "due": "300.00", "paid": "200.00", "unpaid_of_due": "300.00"},
    ]
    exported = await client.get("/reports/dashboard", params={**PERIOD, "format": "csv"})
    figures = {r["figure"]: r["value"] for r in csv.DictReader(io.StringIO(exported.text))}
    assert (figures["cashflow.1.month"], figures["cashflow.1.unpaid_of_due"]) == (
        "2025-02", "300.00")
    mine = ok(await client.get("/reports/dashboard", params={**PERIOD, "owner_id": ids["ann"]}))
    assert mine["cashflow"] == [
        {"month": "2025-01", "due": "300.00", "paid": "100.00", "unpaid_of_due": "0.00"},
        {"month": "2025-02", "due": "0.00", "paid": "200.00", "unpaid_of_due": "0.00"},
    ]


async def test_quote_to_won_conversion_counts_each_quoted_opportunity_once(
    client: httpx.AsyncClient, services: Services,
) -> None:
    await build(services)
    board = ok(await client.get("/reports/dashboard", params=PERIOD))
    # Quoted in the period: A (two quotes), B, C -> 3; won: A -> 33.3 %.
    assert board["quotes"]["won_conversion"] == {"quoted_opportunities": 3, "won": 1,
                                                 "rate": 33.3}
    assert board["quotes"]["count"] == 5  # the existing figure is unchanged: quotes, not deals


async def test_revenue_by_pipeline(client: httpx.AsyncClient, services: Services) -> None:
    ids = await build(services)
    board = ok(await client.get("/reports/dashboard", params=PERIOD))
    assert board["sales"]["revenue"] == "4300.00"  # 1000 + 2500 + 300 + 500
    assert board["sales"]["revenue_by_pipeline"] == [
        {"pipeline_id": ids["projects"], "pipeline": "Projects", "won": 1, "revenue": "2500.00"},
        {"pipeline_id": ids["sales"], "pipeline": "Sales", "won": 2, "revenue": "1500.00"},
        {"pipeline_id": None, "pipeline": None, "won": 1, "revenue": "300.00"},
    ]
    bob = ok(await client.get("/reports/dashboard", params={**PERIOD, "owner_id": ids["bob"]}))
    assert [(r["pipeline"], r["revenue"]) for r in bob["sales"]["revenue_by_pipeline"]] == [
        ("Projects", "2500.00"), ("Sales", "500.00")]


async def test_deals_ending_this_month(client: httpx.AsyncClient, services: Services) -> None:
    today = utcnow().date()
    first = today.replace(day=1)
    last = today.replace(day=calendar.monthrange(today.year, today.month)[1])
    after = last + timedelta(days=1)
    async with services.sessions() as session, session.begin():
        ann = await crm.create_user(session, "ann@corp.example", "Ann")
        for title, kind, status, amount, probability, close in (
            ("ends first", DEAL, OPEN, 1000, 50, first),  # weighted 500
            ("ends last", DEAL, OPEN, 2000, 25, last),  # weighted 500
            ("a lead", LEAD, OPEN, 5000, 10, last),
            ("lost", DEAL, LOST, 5000, 0, first),
            ("next month", DEAL, OPEN, 5000, 50, after),
        ):
            session.add(Opportunity(title=title, kind=kind, status=status, owner_id=ann.id,
                                    amount=Decimal(amount), probability=probability,
                                    close_date=close, tags=[], subscribers=[]))
    board = ok(await client.get("/reports/dashboard"))
    assert board["deals"]["ending_this_month"] == {
        "month": f"{today.year:04d}-{today.month:02d}", "count": 2, "amount": "3000.00",
        "weighted": "1000.00", "past_close_date": (first < today) + (last < today)}


async def test_active_contacts_by_last_interaction(
    client: httpx.AsyncClient, services: Services,
) -> None:
    now = utcnow()
    async with services.sessions() as session, session.begin():
        contacts = [Contact(last_name=f"C{n}", active=n != 6) for n in range(1, 7)]
        session.add_all(contacts)
        await session.flush()
        c1, c2, c3, c4, _c5, c6 = contacts

        def done(contact: Contact, days: int) -> Activity:
            when = now - timedelta(days=days)
            return Activity(type=ActivityType.CALL, subject="s", contact_id=contact.id,
                            done=True, done_at=when, created_at=when)

        session.add_all([
            done(c1, 5), done(c1, 100),  # the newest counts: within 30 days
            done(c2, 60),  # within 90
            Activity(type=ActivityType.TASK, subject="planned", contact_id=c2.id,
                     due_at=now - timedelta(days=1)),  # not done: no interaction
            done(c3, 200),  # within a year
            done(c4, 400),  # older
            done(c6, 1),  # inactive: not counted
        ])  # C5: never
    board = ok(await client.get("/reports/dashboard"))
    assert board["contacts"]["by_last_interaction"] == {
        "30_days": 1, "90_days": 1, "365_days": 1, "older": 1, "never": 1}
    assert board["contacts"]["active"] == 5


async def build_contacts(services: Services) -> dict[str, int]:
    """Opportunities decided around January–February 2025 for contacts C1..C6 (see the tests for
    what each one is meant to show)."""
    async with services.sessions() as session, session.begin():
        users = {n: await crm.create_user(session, f"{n}@corp.example", n.title())
                 for n in ("ann", "bob", "cid", "dan")}
        contacts = [Contact(last_name=f"C{n}") for n in range(1, 7)]
        session.add_all(contacts)
        await session.flush()
        c1, c2, c3, c4, c5, c6 = contacts
        ann, bob, dan = users["ann"].id, users["bob"].id, users["dan"].id

        def opp(contact: Contact | None, owner: int, status: OpportunityStatus, amount: int,
                close: date | None = None, lost: datetime | None = None,
                credited: int | None = None, kind: OpportunityKind = DEAL) -> None:
            session.add(Opportunity(
                title="o", kind=kind, status=status, owner_id=owner, credited_owner_id=credited,
                contact_id=contact.id if contact else None, amount=Decimal(amount),
                close_date=close, lost_at=lost, probability=0 if status == LOST else 100,
                tags=[], subscribers=[]))

        # C1: won twice in the period; the first was Ann's when won, Bob owns it now.
        opp(c1, bob, WON, 1000, date(2025, 1, 10), credited=ann)
        opp(c1, bob, WON, 500, date(2025, 2, 1), credited=bob)
        # C2: won and lost in the period: won (the loss does not make it a lost contact).
        opp(c2, bob, WON, 2000, date(2025, 2, 20), credited=bob)
        opp(c2, bob, LOST, 300, date(2025, 2, 5), lost=at(2025, 2, 5))
        # C3: lost twice (a lead of Ann's and a deal of Bob's).
        opp(c3, ann, LOST, 700, date(2025, 1, 12), lost=at(2025, 1, 12), kind=LEAD)
        opp(c3, bob, LOST, 100, date(2025, 2, 2), lost=at(2025, 2, 2))
        # C4: decided only outside the period (won in March, lost in December).
        opp(c4, bob, WON, 900, date(2025, 3, 1), credited=bob)
        opp(c4, bob, LOST, 50, date(2024, 12, 3), lost=at(2024, 12, 3))
        # C5: lost in the period; won in December, which does not count for this period.
        opp(c5, ann, LOST, 400, date(2025, 2, 10), lost=at(2025, 2, 10))
        opp(c5, ann, WON, 600, date(2024, 12, 15), credited=ann)
        # C6: open; and a deal won without a contact counts for no contact.
        opp(c6, dan, OPEN, 5000, date(2025, 6, 1))
        opp(None, bob, WON, 10000, date(2025, 1, 25), credited=bob)
    return {n: u.id for n, u in users.items()}


async def test_won_and_lost_contacts(client: httpx.AsyncClient, services: Services) -> None:
    ids = await build_contacts(services)
    board = ok(await client.get("/reports/dashboard", params=PERIOD))
    # Won: C1 (1000 + 500), C2 (2000). Lost: C3 (700 + 100), C5 (400); C2 was won, C4 and C6
    # were not decided in the period, the deal without a contact counts for nobody.
    assert board["contacts"]["won_and_lost"] == {
        "won": 2, "won_amount": "3500.00", "lost": 2, "lost_amount": "1200.00"}
    # Ann: C1's first deal (credited to her, though Bob owns it now); C3's lead and C5 lost.
    anns = ok(await client.get("/reports/dashboard", params={**PERIOD, "owner_id": ids["ann"]}))
    assert anns["contacts"]["won_and_lost"] == {
        "won": 1, "won_amount": "1000.00", "lost": 2, "lost_amount": "1100.00"}
    # Bob: C1 (500) and C2 (2000) won, C2's loss hidden by the win; C3's deal lost.
    bobs = ok(await client.get("/reports/dashboard", params={**PERIOD, "owner_id": ids["bob"]}))
    assert bobs["contacts"]["won_and_lost"] == {
        "won": 2, "won_amount": "2500.00", "lost": 1, "lost_amount": "100.00"}
    # March alone: only C4's win.
    march = ok(await client.get("/reports/dashboard",
                                params={"date_from": "2025-03-01", "date_to": "2025-03-31"}))
    assert march["contacts"]["won_and_lost"] == {
        "won": 1, "won_amount": "900.00", "lost": 0, "lost_amount": "0.00"}
    exported = await client.get("/reports/dashboard", params={**PERIOD, "format": "csv"})
    figures = {r["figure"]: r["value"] for r in csv.DictReader(io.StringIO(exported.text))}
    assert figures["contacts.won_and_lost.won_amount"] == "3500.00"


async def test_the_team_view_shows_each_users_own_target(
    client: httpx.AsyncClient, services: Services,
) -> None:
    ids = await build_contacts(services)

    async def budget(body: dict[str, Any]) -> int:
        response = await client.post("/budgets", json=body)
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    anns = await budget({"year": 2025, "annual_total": "12000", "user_id": ids["ann"]})
    for month, target in ((2, "1500"), (3, "5000")):
        ok(await client.put(f"/budgets/{anns}/months/{month}", json={"target": target}))
    await budget({"year": 2024, "annual_total": "99000", "user_id": ids["ann"]})  # other year
    await budget({"year": 2025, "annual_total": "24000", "user_id": ids["cid"]})
    await budget({"year": 2025, "annual_total": "120000"})  # the company's: no user's row

    team = ok(await client.get("/reports/team", params=PERIOD))
    # Ann: January 1000 + February 1500 = 2500, won 1000 (C1's first deal) -> 40 %. Bob: no
    # budget. Cid: a budget, nothing else (shown). Dan: an open deal, no budget.
    assert team == [
        {"owner_id": ids["ann"], "name": "Ann", "won": 1, "lost": 2, "owned_open": 0,
         "revenue": "1000.00", "target": "2500.00", "target_attainment": 40.0},
        {"owner_id": ids["bob"], "name": "Bob", "won": 3, "lost": 2, "owned_open": 0,
         "revenue": "12500.00", "target": None, "target_attainment": None},
        {"owner_id": ids["cid"], "name": "Cid", "won": 0, "lost": 0, "owned_open": 0,
         "revenue": "0.00", "target": "4000.00", "target_attainment": 0.0},
        {"owner_id": ids["dan"], "name": "Dan", "won": 0, "lost": 0, "owned_open": 1,
         "revenue": "0.00", "target": None, "target_attainment": None},
    ]
    # A period touching February and March counts both months whole: 1500 + 5000.
    partial = ok(await client.get("/reports/team",
                                  params={"date_from": "2025-02-10", "date_to": "2025-03-05"}))
    assert [(r["name"], r["target"]) for r in partial] == [
        ("Ann", "6500.00"), ("Bob", None), ("Cid", "4000.00"), ("Dan", None)]


async def test_monthly_snapshots_feed_the_month_over_month_view(
    client: httpx.AsyncClient, services: Services,
) -> None:
    async with services.sessions() as session, session.begin():
        ann = await crm.create_user(session, "ann@corp.example", "Ann")
        bob = await crm.create_user(session, "bob@corp.example", "Bob")
        o1 = Opportunity(title="o1", owner_id=ann.id, amount=Decimal(1000), tags=[],
                         subscribers=[])
        o2 = Opportunity(title="o2", owner_id=bob.id, amount=Decimal(2000), tags=[],
                         subscribers=[])
        session.add_all([o1, o2])
        await session.flush()
        for month in (date(2025, 1, 1), date(2025, 2, 1), date(2025, 3, 1)):
            session.add(SnapshotMonth(month=month))
        for month, opportunity, probability in ((date(2025, 1, 1), o1, 50),
                                                (date(2025, 1, 1), o2, 20),
                                                (date(2025, 2, 1), o1, 75)):
            session.add(OpportunitySnapshot(
                month=month, opportunity_id=opportunity.id, kind="deal",
                owner_id=opportunity.owner_id, amount=opportunity.amount,
                probability=probability))
    view = {m["month"]: m for m in ok(await client.get("/reports/months",
                                                       params={"year": 2025}))}
    # January: 1000 @ 50 % + 2000 @ 20 %; February: o1 alone at 75 %; March: taken, nothing open;
    # April: no snapshot.
    assert [(view[m]["pipeline_at_start"], view[m]["pipeline_change"])
            for m in ("2025-01", "2025-02", "2025-03", "2025-04")] == [
        ({"open": 2, "amount": "3000.00", "weighted": "900.00"}, None),
        ({"open": 1, "amount": "1000.00", "weighted": "750.00"},
         {"open": -1, "amount": "-2000.00", "weighted": "-150.00"}),
        ({"open": 0, "amount": "0.00", "weighted": "0.00"},
         {"open": -1, "amount": "-1000.00", "weighted": "-750.00"}),
        (None, None)]
    anns = {m["month"]: m for m in ok(await client.get(
        "/reports/months", params={"year": 2025, "owner_id": ann.id}))}
    assert anns["2025-02"]["pipeline_change"] == {"open": 0, "amount": "0.00",
                                                  "weighted": "250.00"}
