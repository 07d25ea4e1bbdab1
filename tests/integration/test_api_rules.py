"""The CRM rules that used to break, each replayed through the API on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from typing import Any

import httpx
from sqlalchemy import select

from mailsvc.bootstrap import Services
from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import OutboxEvent
from tests.support.api import ok


def problem(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    for word in words:
        assert word in (body["detail"] or ""), body
    return body


async def last_event(services: Services, event_type: str) -> dict[str, Any]:
    async with services.sessions() as session:
        data = await session.scalar(
            select(OutboxEvent.data).where(OutboxEvent.type == event_type)
            .order_by(OutboxEvent.seq.desc()).limit(1))
    assert data is not None, f"no {event_type} event"
    return data


async def deal_pipeline(client: httpx.AsyncClient, name: str = "Sales") -> dict[str, Any]:
    pipeline: dict[str, Any] = ok(await client.post("/pipelines", json={
        "name": name, "kind": "deal", "position": 0,
        "stages": [{"name": "Qualified", "probability": 20},
                   {"name": "Proposal", "probability": 60},
                   {"name": "Negotiation", "probability": 80}]}), 201)
    return pipeline


# ---------------------------------------------------------------- rule 1: duplicates
async def test_a_second_contact_with_the_same_address_is_a_409_naming_the_first(
    client: httpx.AsyncClient, services: Services,
) -> None:
    first = ok(await client.post("/contacts", json={
        "last_name": "Mai", "email": "Eva.Mai@Acme.example"}), 201)
    body = problem(await client.post("/contacts", json={
        "last_name": "Mai", "first_name": "Eva", "email": "eva.mai@ACME.example"}), 409,
        f"contact {first['id']}")
    assert body["existing_id"] == first["id"] and body["existing_type"] == "contact"
    problem(await client.post("/contacts", json={
        "last_name": "Other", "email": "x@y.example", "aliases": ["EVA.MAI@acme.example"]}), 409)
    other = ok(await client.post("/contacts", json={"last_name": "Roe", "email": "r@y.example"}),
               201)
    problem(await client.patch(f"/contacts/{other['id']}", json={"email": "Eva.mai@acme.example"}),
            409, f"contact {first['id']}")
    assert ok(await client.get("/contacts"))["total"] == 2

    forced = ok(await client.post("/contacts", params={"allow_duplicate": "true"}, json={
        "last_name": "Mai", "email": "eva.mai@acme.example"}), 201)
    assert forced["duplicate_of"] == first["id"]
    event = await last_event(services, "contact.created")
    assert event["id"] == forced["id"] and event["duplicate_of"] == first["id"]
    assert event["override"] is True
    assert ok(await client.get(f"/contacts/{first['id']}"))["duplicate_of"] is None


async def test_accounts_are_unique_by_name_modulo_legal_form_and_by_domain(
    client: httpx.AsyncClient, services: Services,
) -> None:
    acme = ok(await client.post("/accounts", json={"name": "Acme GmbH",
                                                    "domains": ["acme.example"]}), 201)
    for name in ("ACME AG", "acme, gmbh.", "Acme"):
        body = problem(await client.post("/accounts", json={"name": name}), 409, "same name")
        assert body["existing_id"] == acme["id"]
    body = problem(await client.post("/accounts", json={
        "name": "Roadrunner Ltd", "domains": ["https://www.ACME.example/"]}), 409, "acme.example")
    assert body["existing_id"] == acme["id"]
    road = ok(await client.post("/accounts", json={"name": "Roadrunner Ltd"}), 201)
    problem(await client.patch(f"/accounts/{road['id']}", json={"domains": ["acme.example"]}),
            409, f"account {acme['id']}")
    problem(await client.patch(f"/accounts/{road['id']}", json={"name": "ACME KG"}), 409)
    assert ok(await client.get("/accounts"))["total"] == 2
    forced = ok(await client.post("/accounts", json={
        "name": "Acme AG", "allow_duplicate": True}), 201)
    assert forced["duplicate_of"] == acme["id"]
    event = await last_event(services, "account.created")
    assert (event["duplicate_of"], event["override"]) == (acme["id"], True)


# ---------------------------------------------------------------- rule 2: orders and invoices
async def test_one_accepted_quote_makes_one_order_and_invoices_stay_within_it(
    client: httpx.AsyncClient,
) -> None:
    quote = ok(await client.post("/quotes", json={"title": "Q", "amount": "50000"}), 201)
    ok(await client.post(f"/quotes/{quote['id']}/status", json={"status": "accepted"}))
    order = ok(await client.post("/orders", json={"title": "O", "amount": "50000",
                                                  "quote_id": quote["id"]}), 201)
    body = problem(await client.post("/orders", json={"title": "O2", "amount": "50000",
                                                      "quote_id": quote["id"]}), 409,
                   f"order {order['id']}")
    assert body["existing_id"] == order["id"]
    problem(await client.post("/invoices", json={
        "amount": "999999", "due_date": "2030-01-31", "issued_on": "2030-01-01",
        "order_id": order["id"]}), 422, "exceeds")
    ok(await client.post("/invoices", json={
        "amount": "30000", "due_date": "2030-01-31", "issued_on": "2030-01-01",
        "order_id": order["id"]}), 201)
    second = ok(await client.post("/invoices", json={
        "amount": "20000", "due_date": "2030-02-28", "issued_on": "2030-02-01",
        "order_id": order["id"]}), 201)
    problem(await client.post("/invoices", json={
        "amount": "0.01", "due_date": "2030-02-28", "issued_on": "2030-02-01",
        "order_id": order["id"]}), 422, "0.00 left")
    problem(await client.patch(f"/invoices/{second['id']}", json={"amount": "20000.01"}), 422,
            "exceeds")
    ok(await client.post(f"/invoices/{second['id']}/cancel"))
    ok(await client.post("/invoices", json={
        "amount": "20000", "due_date": "2030-02-28", "issued_on": "2030-02-01",
        "order_id": order["id"]}), 201)
    ok(await client.post(f"/orders/{order['id']}/status", json={"status": "cancelled"}))
    ok(await client.post("/orders", json={"title": "O3", "amount": "50000",
                                          "quote_id": quote["id"]}), 201)


# ---------------------------------------------------------------- rule 3: positions
async def test_stage_and_pipeline_positions_stay_a_gapless_order(
    client: httpx.AsyncClient,
) -> None:
    first = await deal_pipeline(client, "First")
    qualified, proposal, negotiation = (st["id"] for st in first["stages"])
    moved = ok(await client.patch(f"/stages/{negotiation}", json={"position": 0}))
    assert moved["position"] == 0
    stages = ok(await client.get(f"/pipelines/{first['id']}"))["stages"]
    assert [(st["id"], st["position"]) for st in stages] == [
        (negotiation, 0), (qualified, 1), (proposal, 2)]
    added = ok(await client.post(f"/pipelines/{first['id']}/stages",
                                 json={"name": "Intro", "probability": 5, "position": 0}), 201)
    ok(await client.delete(f"/stages/{qualified}"), 204)
    stages = ok(await client.get(f"/pipelines/{first['id']}"))["stages"]
    assert [(st["id"], st["position"]) for st in stages] == [
        (added["id"], 0), (negotiation, 1), (proposal, 2)]

    second = ok(await client.post("/pipelines", json={
        "name": "Second", "kind": "deal", "stages": [{"name": "Start", "probability": 10}]}),
        201)
    ok(await client.patch(f"/pipelines/{second['id']}", json={"position": 0}))
    pipelines = ok(await client.get("/pipelines", params={"limit": 200}))["items"]
    positions = [p["position"] for p in pipelines]
    assert positions == list(range(len(pipelines)))
    assert pipelines[0]["id"] == second["id"]
    deals = [p for p in pipelines if p["kind"] == "deal"]
    assert deals[0]["id"] == second["id"]
    lead = ok(await client.post("/opportunities", json={"title": "L"}), 201)
    deal = ok(await client.post(f"/opportunities/{lead['id']}/convert-to-deal", json={}))
    assert deal["pipeline_id"] == second["id"]


# ---------------------------------------------------------------- rule 4: one account
async def test_tickets_quotes_and_activities_refuse_records_of_another_account(
    client: httpx.AsyncClient,
) -> None:
    acme = ok(await client.post("/accounts", json={"name": "Acme"}), 201)
    globex = ok(await client.post("/accounts", json={"name": "Globex"}), 201)
    stranger = ok(await client.post("/contacts", json={
        "last_name": "Stranger", "email": "s@globex.example", "account_id": globex["id"]}), 201)
    order = ok(await client.post("/orders", json={"title": "O", "amount": "10",
                                                  "account_id": globex["id"]}), 201)
    invoice = ok(await client.post("/invoices", json={
        "amount": "10", "due_date": "2030-01-31", "issued_on": "2030-01-01",
        "account_id": globex["id"]}), 201)
    opp = ok(await client.post("/opportunities", json={"title": "G",
                                                       "account_id": globex["id"]}), 201)
    for extra in ({"contact_id": stranger["id"]}, {"order_id": order["id"]},
                  {"invoice_id": invoice["id"]}):
        problem(await client.post("/tickets", json={
            "subject": "x", "account_id": acme["id"], **extra}), 422, "belongs to account")
    ticket = ok(await client.post("/tickets", json={"subject": "x", "account_id": acme["id"]}),
                201)
    problem(await client.patch(f"/tickets/{ticket['id']}", json={"order_id": order["id"]}), 422,
            "belongs to account")
    problem(await client.post("/quotes", json={
        "title": "Q", "amount": "1", "account_id": acme["id"], "contact_id": stranger["id"]}),
        422, "belongs to account")
    problem(await client.post("/quotes", json={
        "title": "Q", "amount": "1", "account_id": acme["id"], "opportunity_id": opp["id"]}),
        422, "belongs to account")
    problem(await client.post("/activities", json={
        "type": "call", "subject": "c", "account_id": acme["id"],
        "contact_id": stranger["id"]}), 422, "belongs to account")
    problem(await client.post("/activities", json={
        "type": "call", "subject": "c", "opportunity_id": opp["id"],
        "contact_id": ok(await client.post("/contacts", json={
            "last_name": "A", "email": "a@acme.example", "account_id": acme["id"]}),
            201)["id"]}), 422, "belongs to account")


# ---------------------------------------------------------------- rule 5: activities
async def test_activity_plan_once_never_on_a_won_deal_activities_deletable_and_in_history(
    client: httpx.AsyncClient,
) -> None:
    pipeline = await deal_pipeline(client)
    ok(await client.put(f"/pipelines/{pipeline['id']}/activity-plan", json=[
        {"subject": "Call", "offset_days": 0, "type": "call"},
        {"subject": "Send quote", "offset_days": 3}]))
    acme = ok(await client.post("/accounts", json={"name": "Acme"}), 201)
    eva = ok(await client.post("/contacts", json={
        "last_name": "Mai", "email": "eva@acme.example", "account_id": acme["id"]}), 201)
    opp = ok(await client.post("/opportunities", json={
        "title": "D", "kind": "deal", "pipeline_id": pipeline["id"], "account_id": acme["id"],
        "contact_id": eva["id"]}), 201)
    planned = ok(await client.post(f"/opportunities/{opp['id']}/activity-plan",
                                   json={"start_date": "2030-01-06"}), 201)
    assert len(planned) == 2
    problem(await client.post(f"/opportunities/{opp['id']}/activity-plan",
                              json={"start_date": "2030-01-06"}), 409, "scheduled already")
    manual = ok(await client.post("/activities", json={
        "type": "meeting", "subject": "Workshop", "opportunity_id": opp["id"]}), 201)
    assert (manual["account_id"], manual["contact_id"]) == (acme["id"], eva["id"])
    history = ok(await client.get("/activities", params={"contact_id": eva["id"]}))
    assert manual["id"] in [a["id"] for a in history["items"]]
    ok(await client.delete(f"/activities/{manual['id']}"), 204)
    problem(await client.get(f"/activities/{manual['id']}"), 404)
    for activity in planned:
        ok(await client.delete(f"/activities/{activity['id']}"), 204)
    ok(await client.post(f"/opportunities/{opp['id']}/won", json={}))
    problem(await client.post(f"/opportunities/{opp['id']}/activity-plan",
                              json={"start_date": "2030-01-06"}), 422, "is won")


# ---------------------------------------------------------------- rule 6: won and lost
async def test_won_and_lost_keep_revenue_weights_customers_and_owners_right(
    client: httpx.AsyncClient,
) -> None:
    ann = ok(await client.post("/users", json={"email": "ann@corp.example", "name": "Ann"}), 201)
    bob = ok(await client.post("/users", json={"email": "bob@corp.example", "name": "Bob"}), 201)
    acme = ok(await client.post("/accounts", json={"name": "Acme"}), 201)
    opp = ok(await client.post("/opportunities", json={
        "title": "Big", "amount": "20000", "account_id": acme["id"], "owner_id": ann["id"]}),
        201)
    today = utcnow().date()
    problem(await client.post(f"/opportunities/{opp['id']}/won",
                              json={"close_date": (today + timedelta(days=3)).isoformat()}),
            422, "in the future")
    closed = date(today.year - 1, 6, 15)
    won = ok(await client.post(f"/opportunities/{opp['id']}/won",
                               json={"close_date": closed.isoformat()}))
    assert won["close_date"] == closed.isoformat()
    problem(await client.post(f"/opportunities/{opp['id']}/won", json={}), 409, "won already")
    months = {m["month"]: m for m in ok(await client.get(
        "/reports/months", params={"year": closed.year}))}
    assert months[f"{closed.year}-06"]["revenue"] == "20000.00"
    this_month = ok(await client.get("/reports/dashboard"))
    assert this_month["sales"]["revenue"] == "0.00"

    customer = ok(await client.get(f"/accounts/{acme['id']}"))
    assert customer["status"] == "customer" and customer["customer_since"]
    problem(await client.patch(f"/accounts/{acme['id']}", json={"status": "prospect"}), 422,
            "cannot go back to prospect")

    ok(await client.patch(f"/opportunities/{opp['id']}", json={"owner_id": bob["id"]}))
    team = ok(await client.get("/reports/team", params={
        "date_from": f"{closed.year}-01-01", "date_to": f"{closed.year}-12-31"}))
    assert [(row["owner_id"], row["revenue"]) for row in team if row["won"]] == [
        (ann["id"], "20000.00")]
    ok(await client.post("/budgets", json={"year": closed.year, "annual_total": "120000"}), 201)
    ann_months = ok(await client.get("/reports/months", params={
        "year": closed.year, "owner_id": ann["id"]}))
    assert {m["target"] for m in ann_months} == {None}
    assert ann_months[5]["revenue"] == "20000.00"
    bob_months = ok(await client.get("/reports/months", params={
        "year": closed.year, "owner_id": bob["id"]}))
    assert bob_months[5]["revenue"] == "0.00"

    reason = ok(await client.get("/loss-reasons"))["items"] or [ok(await client.post(
        "/loss-reasons", json={"name": "Budget cut"}), 201)]
    lost = ok(await client.post("/opportunities", json={"title": "Small", "amount": "1000",
                                                        "probability": 50}), 201)
    assert lost["weighted_value"] == "500.00"
    lost = ok(await client.post(f"/opportunities/{lost['id']}/lost",
                                json={"loss_reason_id": reason[0]["id"]}))
    assert lost["weighted_value"] == "0.00"
    assert ok(await client.get(f"/opportunities/{lost['id']}"))["weighted_value"] == "0.00"


# ---------------------------------------------------------------- rule 7: snapshots
async def test_the_first_change_of_a_month_snapshots_the_open_pipeline(
    client: httpx.AsyncClient,
) -> None:
    ok(await client.post("/opportunities", json={"title": "A", "amount": "1000",
                                                 "probability": 50}), 201)
    ok(await client.post("/opportunities", json={"title": "B", "amount": "3000",
                                                 "probability": 10}), 201)
    today = utcnow().date()
    months = ok(await client.get("/reports/months", params={"year": today.year}))
    start = months[today.month - 1]["pipeline_at_start"]
    assert start == {"open": 0, "amount": "0.00", "weighted": "0.00"}


# ---------------------------------------------------------------- rule 9: smaller ones
async def test_problems_name_fields_amounts_have_cents_and_status_codes_are_consistent(
    client: httpx.AsyncClient,
) -> None:
    body = problem(await client.post("/contacts", json=["not", "an", "object"]), 422)
    assert all("(" not in e["field"] for e in body["errors"]), body
    body = problem(await client.post("/contacts", content=b"", headers={
        "content-type": "application/json"}), 422)
    assert all("(" not in e["field"] for e in body["errors"]), body
    opp = ok(await client.post("/opportunities", json={"title": "X", "amount": "20000"}), 201)
    assert opp["amount"] == "20000.00"
    assert ok(await client.get(f"/opportunities/{opp['id']}"))["amount"] == "20000.00"
    quote = ok(await client.post("/quotes", json={"title": "Q", "amount": "20000"}), 201)
    assert quote["amount"] == "20000.00"
    body = problem(await client.patch(f"/opportunities/{opp['id']}", json={"kind": "lead"}), 422)
    assert "OpportunityKind" not in body["detail"] and "deal" in body["detail"]
    problem(await client.get("/reports/dashboard", params={"owner_id": 4242}), 404, "4242")
    problem(await client.get("/reports/months", params={"year": 2030, "owner_id": 4242}), 404)

    # The same transition again is a conflict (409); a transition the rules forbid is 422.
    ok(await client.post(f"/quotes/{quote['id']}/status", json={"status": "sent"}))
    problem(await client.post(f"/quotes/{quote['id']}/status", json={"status": "sent"}), 409,
            "sent already")
    ok(await client.post(f"/quotes/{quote['id']}/status", json={"status": "rejected"}))
    problem(await client.post(f"/quotes/{quote['id']}/status", json={"status": "accepted"}),
            422, "cannot go from rejected")

    territory = ok(await client.post("/territories", json={"name": "North"}), 201)
    assert ok(await client.get(f"/territories/{territory['id']}"))["name"] == "North"
    renamed = ok(await client.patch(f"/territories/{territory['id']}", json={"name": "Nord"}))
    assert renamed["name"] == "Nord"
    team = ok(await client.post("/teams", json={"name": "Hunters"}), 201)
    assert ok(await client.get(f"/teams/{team['id']}"))["name"] == "Hunters"
    moved = ok(await client.patch(f"/teams/{team['id']}", json={
        "name": "Farmers", "territory_id": territory["id"]}))
    assert (moved["name"], moved["territory_id"]) == ("Farmers", territory["id"])
    other = ok(await client.post("/teams", json={"name": "Other"}), 201)
    problem(await client.patch(f"/teams/{other['id']}", json={"name": "Farmers"}), 409)

    account = ok(await client.post("/accounts", json={"name": "Old Corp"}), 201)
    archived = ok(await client.post(f"/accounts/{account['id']}/archive"))
    assert archived["archived"] is True
    problem(await client.post(f"/accounts/{account['id']}/archive"), 409)
    assert ok(await client.get("/accounts", params={"archived": "false"}))["total"] == 0
    contact = ok(await client.post("/contacts", json={"last_name": "Gone"}), 201)
    assert ok(await client.post(f"/contacts/{contact['id']}/archive"))["active"] is False
    other = ok(await client.post("/contacts", json={"last_name": "Left"}), 201)
    ok(await client.delete(f"/contacts/{other['id']}"), 204)
    assert ok(await client.get(f"/contacts/{other['id']}"))["active"] is False
    body = problem(await client.post("/contacts", content=b'{"last_name": ', headers={
        "content-type": "application/json"}), 422)
    assert [e["field"] for e in body["errors"]] == ["body"]


# ---------------------------------------------------------------- a fresh install is usable
async def test_a_fresh_install_has_pipelines_loss_reasons_and_lists_that_an_admin_edits(
    client: httpx.AsyncClient,
) -> None:
    pipelines = ok(await client.get("/pipelines"))["items"]
    kinds = [p["kind"] for p in pipelines]
    assert kinds[:2] == ["lead", "deal"]
    for pipeline in pipelines:
        probabilities = [st["probability"] for st in pipeline["stages"]]
        assert len(probabilities) >= 3 and probabilities == sorted(probabilities)
    deal_pipeline = pipelines[1]
    assert ok(await client.get(f"/pipelines/{deal_pipeline['id']}/activity-plan"))
    reasons = ok(await client.get("/loss-reasons"))["items"]
    assert len(reasons) >= 5

    # Lead -> deal -> lost works out of the box.
    lead = ok(await client.post("/opportunities", json={"title": "Fresh", "amount": "100"}), 201)
    assert lead["pipeline_id"] == pipelines[0]["id"] and lead["stage_id"]
    deal = ok(await client.post(f"/opportunities/{lead['id']}/convert-to-deal", json={}))
    assert deal["pipeline_id"] == deal_pipeline["id"]
    assert deal["probability"] == deal_pipeline["stages"][0]["probability"]
    lost = ok(await client.post(f"/opportunities/{lead['id']}/lost",
                                json={"loss_reason_id": reasons[0]["id"]}))
    assert lost["status"] == "lost"

    # Everything is editable.
    stage = deal_pipeline["stages"][0]
    edited = ok(await client.patch(f"/stages/{stage['id']}", json={
        "name": "Qualified lead", "probability": 25}))
    assert (edited["name"], edited["probability"]) == ("Qualified lead", 25)
    ok(await client.patch(f"/pipelines/{deal_pipeline['id']}", json={"name": "Our deals"}))
    ok(await client.patch(f"/loss-reasons/{reasons[0]['id']}", json={"active": False}))
    types = ok(await client.get("/lists/ticket_type"))
    assert {"question", "incident"} <= set(types)
    assert "high" in ok(await client.get("/lists/priority"))
    types = ok(await client.patch("/lists/ticket_type/complaint", json={"active": False}))
    assert "complaint" not in types
    problem(await client.post("/tickets", json={"subject": "x", "type": "complaint"}), 422,
            "unknown ticket type")
    types = ok(await client.patch("/lists/ticket_type/incident", json={"name": "Outage"}))
    assert "Outage" in types and "incident" not in types
    assert ok(await client.post("/lists/ticket_type", json={"name": "complaint"}), 201)[-1] == \
        "complaint"
    ok(await client.post("/tickets", json={"subject": "y", "type": "outage"}), 201)


# ---------------------------------------------------------------- export
async def test_every_list_and_report_exports_csv(client: httpx.AsyncClient) -> None:
    ok(await client.post("/opportunities", json={"title": "=cmd|' /C calc'!A0",
                                                 "amount": "1500", "tags": ["a", "b"]}), 201)
    ok(await client.post("/opportunities", json={"title": "Plain", "amount": "20"}), 201)
    response = await client.get("/opportunities", params={"format": "csv", "sort": "id"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert 'filename="opportunities.csv"' in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["title"], r["amount"], r["tags"]) for r in rows] == [
        ("'=cmd|' /C calc'!A0", "1500.00", "a;b"), ("Plain", "20.00", "")]
    by_accept = await client.get("/opportunities", params={"q": "plain"},
                                 headers={"Accept": "text/csv"})
    assert [r["title"] for r in csv.DictReader(io.StringIO(by_accept.text))] == ["Plain"]
    report = await client.get("/reports/dashboard", headers={"Accept": "text/csv"})
    figures = {r["figure"]: r["value"] for r in csv.DictReader(io.StringIO(report.text))}
    assert figures["deals.open"] == "0" and "sales.revenue" in figures
    months = await client.get("/reports/months", params={"year": 2030, "format": "csv"})
    assert len(list(csv.DictReader(io.StringIO(months.text)))) == 12
    problem(await client.get("/opportunities", params={"format": "csv", "sort": "nope"}), 422)
    assert (await client.get("/opportunities")).headers["content-type"] == "application/json"


# ---------------------------------------------------------------- service KPIs
async def test_service_kpis_first_response_resolution_and_reopen_rate(
    client: httpx.AsyncClient,
) -> None:
    first = ok(await client.post("/tickets", json={"subject": "Login fails"}), 201)
    second = ok(await client.post("/tickets", json={"subject": "Slow"}), 201)
    ok(await client.post(f"/tickets/{first['id']}/updates", json={"body": "Looking into it"}),
       201)
    for ticket in (first, second):
        ok(await client.patch(f"/tickets/{ticket['id']}", json={"status": "resolved"}))
    ok(await client.patch(f"/tickets/{first['id']}", json={"status": "open"}))
    tickets = ok(await client.get("/reports/dashboard"))["tickets"]
    assert tickets["reopen_rate"] == 50.0
    assert tickets["avg_first_response_days"] is not None
    assert tickets["avg_first_response_days"] >= 0
    assert tickets["avg_resolution_days"] is not None


# ---------------------------------------------------------------- products and line items
async def test_line_items_derive_the_amounts_and_feed_top_products(
    client: httpx.AsyncClient,
) -> None:
    seats = ok(await client.post("/products", json={
        "name": "CRM seat", "sku": "SEAT", "unit_price": "600", "tax_rate": "19"}), 201)
    setup = ok(await client.post("/products", json={"name": "Setup", "unit_price": "1500"}), 201)
    problem(await client.post("/products", json={"name": "crm SEAT", "unit_price": "1"}), 409)
    quote = ok(await client.post("/quotes", json={"title": "Q", "amount": "0"}), 201)
    items = ok(await client.put(f"/quotes/{quote['id']}/items", json=[
        {"product_id": seats["id"], "quantity": "40", "discount_percent": "10"},
        {"product_id": setup["id"], "quantity": "1", "tax_rate": "19"},
        {"description": "Training day", "quantity": "2", "unit_price": "800.5"}]))
    assert [i["net"] for i in items["items"]] == ["21600.00", "1500.00", "1601.00"]
    assert items["items"][0]["unit_price"] == "600.00"
    assert (items["net_total"], items["tax_total"], items["gross_total"]) == (
        "24701.00", "4389.00", "29090.00")
    assert ok(await client.get(f"/quotes/{quote['id']}"))["amount"] == "24701.00"
    problem(await client.put(f"/quotes/{quote['id']}/items", json=[
        {"description": "No price", "quantity": "1"}]), 422, "unit price")
    ok(await client.post(f"/quotes/{quote['id']}/status", json={"status": "accepted"}))
    problem(await client.put(f"/quotes/{quote['id']}/items", json=[]), 422,
            "can no longer change")
    order = ok(await client.post("/orders", json={"title": "O", "amount": "21600",
                                                  "quote_id": quote["id"]}), 201)
    ok(await client.put(f"/orders/{order['id']}/items", json=[
        {"product_id": seats["id"], "quantity": "40", "discount_percent": "10"}]))
    invoice = ok(await client.post("/invoices", json={
        "amount": "100", "order_id": order["id"], "issued_on": "2030-01-01",
        "due_date": "2030-01-31"}), 201)
    problem(await client.put(f"/invoices/{invoice['id']}/items", json=[
        {"product_id": seats["id"], "quantity": "41"}]), 422, "exceeds")
    ok(await client.put(f"/invoices/{invoice['id']}/items", json=[
        {"product_id": seats["id"], "quantity": "20", "discount_percent": "10"}]))
    assert ok(await client.get(f"/invoices/{invoice['id']}"))["amount"] == "10800.00"
    top = ok(await client.get("/reports/dashboard"))["products"]["top"]
    assert [(p["name"], p["revenue"], p["quantity"]) for p in top] == [
        ("CRM seat", "21600.00", 40.0)]


async def test_notes_and_categories_on_leads_descriptions_on_opportunities_and_tickets(
    client: httpx.AsyncClient,
) -> None:
    pain = "Spreadsheets break at 50 users; wants SSO; decides in Q3"
    lead = ok(await client.post("/inbox-leads", json={
        "title": "Seats for Acme", "notes": pain, "category": "mql"}), 201)
    assert (lead["notes"], lead["category"]) == (pain, "mql")
    problem(await client.post("/inbox-leads", json={"title": "X", "category": "hot"}), 422)
    problem(await client.patch(f"/inbox-leads/{lead['id']}", json={"category": "warm"}), 422)
    lead = ok(await client.patch(f"/inbox-leads/{lead['id']}", json={"category": "sql"}))
    assert ok(await client.get(f"/inbox-leads/{lead['id']}"))["category"] == "sql"
    converted = ok(await client.post(f"/inbox-leads/{lead['id']}/convert", json={}), 201)
    opportunity = converted["opportunity"]
    assert opportunity["description"] == pain
    changed = ok(await client.patch(f"/opportunities/{opportunity['id']}",
                                    json={"description": "Needs: SSO, 60 seats"}))
    assert changed["description"] == "Needs: SSO, 60 seats"
    ticket = ok(await client.post("/tickets", json={"subject": "Login fails",
                                                    "description": "Since the update"}), 201)
    assert ticket["description"] == "Since the update"
    ticket = ok(await client.patch(f"/tickets/{ticket['id']}",
                                   json={"description": "Since 2.3; only with SSO"}))
    assert ok(await client.get(f"/tickets/{ticket['id']}"))["description"] == \
        "Since 2.3; only with SSO"
