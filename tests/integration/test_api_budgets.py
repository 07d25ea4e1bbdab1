"""Per-user budget targets through the API, on SQLite and PostgreSQL: one company budget and one
per user and year; a user's month view compares with the user's own targets."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select

from mailsvc.bootstrap import Services
from mailsvc.crmstore.models import OutboxEvent
from tests.support.api import ok


async def test_company_and_user_budgets_and_the_month_view_of_each(
    client: httpx.AsyncClient, services: Services,
) -> None:
    ann = ok(await client.post("/users", json={"email": "ann@corp.example", "name": "Ann"}), 201)
    bob = ok(await client.post("/users", json={"email": "bob@corp.example", "name": "Bob"}), 201)
    mine = ok(await client.post("/budgets", json={
        "year": 2026, "annual_total": "24000", "user_id": ann["id"]}), 201)
    company = ok(await client.post("/budgets", json={"year": 2026, "annual_total": "120000"}),
                 201)
    assert (company["user_id"], mine["user_id"]) == (None, ann["id"])
    assert {m["target"] for m in mine["months"]} == {"2000.00"}

    for body, words in (({"year": 2026}, "the company"),
                        ({"year": 2026, "user_id": ann["id"]}, f"user {ann['id']}")):
        problem = await client.post("/budgets", json=body)
        assert problem.status_code == 409, problem.text
        assert words in problem.json()["detail"]
    assert (await client.post("/budgets", json={"year": 2026, "user_id": 4242})).status_code \
        == 404
    ok(await client.post("/budgets", json={"year": 2027, "user_id": ann["id"]}), 201)
    ok(await client.put(f"/budgets/{mine['id']}/months/3", json={"target": "5000"}))

    listed = ok(await client.get("/budgets"))
    assert [(b["year"], b["user_id"]) for b in listed] == [
        (2026, None), (2026, ann["id"]), (2027, ann["id"])]

    def targets(months: list[dict[str, Any]]) -> list[tuple[str | None, str]]:
        return [(m["target"], m["target_scope"]) for m in months[:3]]

    whole = ok(await client.get("/reports/months", params={"year": 2026}))
    assert targets(whole) == [("10000.00", "company")] * 3
    anns = ok(await client.get("/reports/months", params={"year": 2026, "owner_id": ann["id"]}))
    assert targets(anns) == [("2000.00", "user"), ("2000.00", "user"), ("5000.00", "user")]
    bobs = ok(await client.get("/reports/months", params={"year": 2026, "owner_id": bob["id"]}))
    assert targets(bobs) == [(None, "user")] * 3

    async with services.sessions() as session:
        created = [dict(d) for d in await session.scalars(
            select(OutboxEvent.data).where(OutboxEvent.type == "budget.created")
            .order_by(OutboxEvent.seq))]
    assert [(e["year"], e["user_id"]) for e in created] == [
        (2026, ann["id"]), (2026, None), (2027, ann["id"])]
