"""The REST API through a real HTTP client (httpx on the ASGI app), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx

from mailsvc.api.app import create_app
from mailsvc.bootstrap import Services
from mailsvc.crmstore import services as crm
from mailsvc.crmstore.models import Email, EmailLink, LinkTarget, OutboxEvent
from tests.support.api import ok


def problem(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"]
    for word in words:
        assert word in (body["detail"] or ""), body
    return body


async def test_create_read_update_list_an_account(client: httpx.AsyncClient) -> None:
    user = ok(await client.post("/users", json={"email": "Ann@Corp.example", "name": "Ann"}), 201)
    assert user["email"] == "ann@corp.example"
    created = ok(await client.post("/accounts", json={
        "name": "Acme GmbH", "domains": ["acme.example"], "owner_id": user["id"],
        "city": "Berlin"}), 201)
    assert created["id"] and created["domains"] == ["acme.example"]
    ok(await client.post("/accounts", json={"name": "Beta AG", "city": "Bonn"}), 201)
    patched = ok(await client.patch(f"/accounts/{created['id']}", json={"industry": "62.01"}))
    assert patched["industry"] == "62.01" and patched["city"] == "Berlin"
    assert ok(await client.get(f"/accounts/{created['id']}"))["industry"] == "62.01"
    page = ok(await client.get("/accounts", params={"q": "acm"}))
    assert page["total"] == 1 and page["items"][0]["name"] == "Acme GmbH"
    page = ok(await client.get("/accounts", params={"sort": "name", "limit": 1, "offset": 1}))
    assert page["total"] == 2 and [a["name"] for a in page["items"]] == ["Beta AG"]
    page = ok(await client.get("/accounts", params={"domain": "acme.example"}))
    assert page["total"] == 1
    page = ok(await client.get("/accounts", params={"city": "Bonn"}))
    assert [a["name"] for a in page["items"]] == ["Beta AG"]


async def test_opportunity_lifecycle_over_http(client: httpx.AsyncClient) -> None:
    pipeline = ok(await client.post("/pipelines", json={
        "name": "Deals", "kind": "deal", "position": 0,
        "stages": [{"name": "Qualified", "probability": 20},
                   {"name": "Proposal", "probability": 60}]}), 201)
    account = ok(await client.post("/accounts", json={"name": "Acme"}), 201)
    lead = ok(await client.post("/opportunities", json={
        "title": "20 seats", "amount": "1000.00", "account_id": account["id"],
        "tags": ["web", "q3"]}), 201)
    assert lead["number"] == f"OPP-{lead['id']}" and lead["kind"] == "lead"
    assert lead["traffic_light"] == "green" and sorted(lead["tags"]) == ["q3", "web"]
    deal = ok(await client.post(f"/opportunities/{lead['id']}/convert-to-deal", json={}))
    assert deal["kind"] == "deal" and deal["pipeline_id"] == pipeline["id"]
    assert deal["probability"] == 20 and deal["weighted_value"] == "200.00"
    proposal = pipeline["stages"][1]["id"]
    moved = ok(await client.post(f"/opportunities/{lead['id']}/stage",
                                 json={"stage_id": proposal}))
    assert moved["probability"] == 60
    history = ok(await client.get(f"/opportunities/{lead['id']}/stage-history"))
    # It started in the default lead pipeline's first stage, then moved into the deal pipeline.
    assert [h["to_stage_id"] for h in history][1:] == [pipeline["stages"][0]["id"], proposal]
    assert history[0]["to_stage_id"] == lead["stage_id"] is not None
    problem(await client.post(f"/opportunities/{lead['id']}/lost", json={}), 422,
            "lost needs a loss reason")
    won = ok(await client.post(f"/opportunities/{lead['id']}/won", json={}))
    assert won["status"] == "won" and won["traffic_light"] is None
    assert ok(await client.get(f"/accounts/{account['id']}"))["status"] == "customer"
    problem(await client.patch(f"/opportunities/{lead['id']}", json={"amount": "5"}), 422,
            "can no longer change")
    problem(await client.post(f"/opportunities/{lead['id']}/stage",
                              json={"stage_id": proposal}), 422, "can no longer change")
    page = ok(await client.get("/opportunities", params={"status": "won", "tag": "web"}))
    assert page["total"] == 1


async def test_rule_violations_are_clear_problems(client: httpx.AsyncClient) -> None:
    opp = ok(await client.post("/opportunities", json={"title": "X"}), 201)
    body = problem(await client.patch(f"/opportunities/{opp['id']}",
                                      json={"created_at": "2020-01-01T00:00:00Z"}), 422)
    assert "never editable" in body["detail"]
    problem(await client.post("/opportunities/999/won", json={}), 404, "999")
    problem(await client.get("/tickets/12345"), 404, "12345")
    body = problem(await client.post("/opportunities", json={"title": ""}), 422)
    assert body["errors"][0]["field"] == "title"
    problem(await client.post("/opportunities", json={"title": "Y", "probability": 101}), 422)
    problem(await client.post("/opportunities", json={"title": "Y", "account_id": 77}), 404,
            "account 77")
    problem(await client.get("/opportunities", params={"sort": "password"}), 422,
            "cannot sort by")
    ok(await client.post(f"/opportunities/{opp['id']}/convert-to-deal", json={}))
    problem(await client.post(f"/opportunities/{opp['id']}/convert-to-deal", json={}), 409,
            "is a deal already")
    reason = ok(await client.post("/loss-reasons", json={"name": "Price"}), 201)
    problem(await client.post("/loss-reasons", json={"name": "Price"}), 409, "exists already")
    lost = ok(await client.post(f"/opportunities/{opp['id']}/lost",
                                json={"loss_reason_id": reason["id"], "note": "too dear"}))
    assert lost["status"] == "lost" and lost["loss_reason_id"] == reason["id"]
    problem(await client.post(f"/opportunities/{opp['id']}/won", json={}), 422, "is lost")
    problem(await client.post("/users", json={"email": "not-an-address", "name": "N"}), 422)
    ok(await client.post("/users", json={"email": "a@b.example", "name": "A"}), 201)
    problem(await client.post("/users", json={"email": "A@b.example", "name": "B"}), 409,
            "belongs to another user")
    problem(await client.post("/opportunities", json={"title": "Z", "source": "carrier pigeon"}),
            422, "unknown lead source")
    problem(await client.get("/nowhere"), 404)


async def test_inbox_lead_conversion_and_duplicate_protection(client: httpx.AsyncClient) -> None:
    existing = ok(await client.post("/accounts", json={"name": "Acme GmbH"}), 201)
    lead = ok(await client.post("/inbox-leads", json={
        "title": "Website request: 50 seats", "source": "web form", "company": "ACME gmbh",
        "first_name": "Eva", "last_name": "Mai", "email": "eva@acme.example",
        "budget": "5000.00"}), 201)
    assert lead["qualified"] is False and lead["qualified_at"] is None
    company = ok(await client.post(f"/inbox-leads/{lead['id']}/create-company"))
    assert company["created"] is False and company["id"] == existing["id"]
    assert "exists already" in company["warning"]
    person = ok(await client.post(f"/inbox-leads/{lead['id']}/create-person"))
    assert person["created"] is True
    contact = ok(await client.get(f"/contacts/{person['id']}"))
    assert contact["account_id"] == existing["id"]
    converted = ok(await client.post(f"/inbox-leads/{lead['id']}/convert", json={}), 201)
    opportunity = converted["opportunity"]
    assert opportunity["title"] == "Website request: 50 seats"
    assert opportunity["amount"] == "5000.00" and opportunity["contact_id"] == person["id"]
    assert converted["inbox_lead"]["qualified"] is True
    assert converted["inbox_lead"]["opportunity_id"] == opportunity["id"]
    problem(await client.post(f"/inbox-leads/{lead['id']}/convert", json={}), 409,
            "was converted")
    problem(await client.patch(f"/inbox-leads/{lead['id']}",
                               json={"qualified_at": "2020-01-01T00:00:00Z"}), 422,
            "never editable")
    other = ok(await client.post("/inbox-leads", json={"title": "Spam?"}), 201)
    archived = ok(await client.post(f"/inbox-leads/{other['id']}/archive"))
    assert archived["archived"] is True
    problem(await client.post(f"/inbox-leads/{other['id']}/convert", json={}), 422,
            "is archived")
    page = ok(await client.get("/inbox-leads", params={"qualified": "true"}))
    assert [r["id"] for r in page["items"]] == [lead["id"]]


async def test_ticket_status_transitions_and_updates(client: httpx.AsyncClient) -> None:
    ticket = ok(await client.post("/tickets", json={
        "subject": "Login fails", "type": "incident", "value_eur": "120.00"}), 201)
    assert ticket["number"] == f"TCK-{ticket['id']}" and ticket["status"] == "open"
    ok(await client.patch(f"/tickets/{ticket['id']}", json={"status": "in_progress"}))
    update = ok(await client.post(f"/tickets/{ticket['id']}/updates",
                                  json={"body": "fixed", "status": "closed"}), 201)
    assert (update["status_from"], update["status_to"]) == ("in_progress", "closed")
    problem(await client.patch(f"/tickets/{ticket['id']}", json={"status": "resolved"}), 422,
            "cannot go from closed to resolved")
    updates = ok(await client.get(f"/tickets/{ticket['id']}/updates"))
    assert [u["status_to"] for u in updates] == ["in_progress", "closed"]
    order = ok(await client.post("/orders", json={"title": "O", "amount": "10.00"}), 201)
    invoice = ok(await client.post("/invoices", json={
        "amount": "10.00", "due_date": "2030-01-31", "issued_on": "2030-01-01"}), 201)
    problem(await client.patch(f"/tickets/{ticket['id']}", json={
        "order_id": order["id"], "invoice_id": invoice["id"]}), 422, "not both")
    problem(await client.post("/tickets", json={"subject": "x", "type": "gossip"}), 422,
            "unknown ticket type")


async def test_documents_and_their_rules(client: httpx.AsyncClient) -> None:
    opp = ok(await client.post("/opportunities", json={"title": "Deal"}), 201)
    quote = ok(await client.post("/quotes", json={
        "title": "Q1", "amount": "900.00", "opportunity_id": opp["id"]}), 201)
    problem(await client.post("/orders", json={"title": "O", "amount": "900.00",
                                               "quote_id": quote["id"]}), 422,
            "only an accepted quote")
    ok(await client.post(f"/quotes/{quote['id']}/status", json={"status": "sent"}))
    accepted = ok(await client.post(f"/quotes/{quote['id']}/status", json={"status": "accepted"}))
    assert accepted["decided_at"]
    problem(await client.post(f"/quotes/{quote['id']}/status", json={"status": "rejected"}), 422,
            "cannot go from accepted to rejected")
    order = ok(await client.post("/orders", json={"title": "O", "amount": "900.00",
                                                  "quote_id": quote["id"]}), 201)
    assert order["opportunity_id"] == opp["id"]
    problem(await client.post("/invoices", json={
        "amount": "900.00", "issued_on": "2030-02-01", "due_date": "2030-01-01"}), 422,
            "due before it is issued")
    invoice = ok(await client.post("/invoices", json={
        "amount": "900.00", "issued_on": "2020-01-01", "due_date": "2020-01-31",
        "order_id": order["id"]}), 201)
    assert invoice["status"] == "overdue" and invoice["number"].startswith("INV-2020-")
    assert ok(await client.get("/invoices", params={"status": "overdue"}))["total"] == 1
    paid = ok(await client.post(f"/invoices/{invoice['id']}/pay",
                                json={"paid_date": "2020-02-03"}))
    assert paid["status"] == "paid"
    problem(await client.post(f"/invoices/{invoice['id']}/pay",
                              json={"paid_date": "2020-02-03"}), 409, "paid already")


async def test_manual_link_and_unlink_with_timeline(
    client: httpx.AsyncClient, services: Services
) -> None:
    async with services.sessions() as session, session.begin():
        opp = await crm.create_opportunity(session, "Timeline")
        email = Email(dedup_key="k1", subject="Re: offer", from_email="x@y.example", raw=b"x",
                      size=1, intake_role="bcc", outcome="linked")
        session.add(email)
        await session.flush()
        opp_id, email_id = opp.id, email.id
    linked = ok(await client.post(f"/emails/{email_id}/links", json={
        "target_type": "opportunity", "target_id": opp_id}), 201)
    assert {"target_type": "opportunity", "target_id": opp_id, "rule": "manual"}.items() <= \
        linked["links"][0].items()
    problem(await client.post(f"/emails/{email_id}/links", json={
        "target_type": "opportunity", "target_id": opp_id}), 409, "linked to opportunity")
    problem(await client.post(f"/emails/{email_id}/links", json={
        "target_type": "ticket", "target_id": 4242}), 404, "ticket 4242")
    timeline = ok(await client.get(f"/opportunities/{opp_id}/emails"))
    assert timeline["total"] == 1 and timeline["items"][0]["linked_by"] == "manual"
    opp = ok(await client.get(f"/opportunities/{opp_id}"))
    assert opp["last_contact_at"] is not None
    activities = ok(await client.get("/activities", params={"opportunity_id": opp_id}))
    assert [a["type"] for a in activities["items"]] == ["email"]
    response = await client.delete(f"/emails/{email_id}/links/opportunity/{opp_id}")
    assert response.status_code == 204
    problem(await client.delete(f"/emails/{email_id}/links/opportunity/{opp_id}"), 404,
            "not linked")
    assert ok(await client.get(f"/opportunities/{opp_id}/emails"))["total"] == 0
    async with services.sessions() as session:
        from sqlalchemy import select

        types = list(await session.scalars(select(OutboxEvent.type).order_by(OutboxEvent.seq)))
        links = list(await session.scalars(select(EmailLink).where(
            EmailLink.target_type == LinkTarget.OPPORTUNITY)))
    assert types[-2:] == ["email.linked", "email.unlinked"] and links == []


async def test_api_key_auth(make_settings: Any) -> None:
    from mailsvc.bootstrap import open_services

    async with open_services(make_settings(api_keys="s3cret,other"), migrate=False) as svc:
        transport = httpx.ASGITransport(app=create_app(svc))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            problem(await c.get("/api/v1/users"), 401, "API key")
            problem(await c.get("/api/v1/users", headers={"Authorization": "Bearer nope"}), 401)
            ok(await c.get("/api/v1/users", headers={"Authorization": "Bearer other"}))
            ok(await c.get("/healthz"))
            # With keys set, /readyz tells anyone its status, and its detail only with a key.
            assert (await c.get("/readyz")).json() == {"status": "ok"}
            ready = await c.get("/readyz", headers={"Authorization": "Bearer other"})
            assert ready.json()["checks"]["database"] == "ok"
            problem(await c.get("/metrics"), 401)
            metrics = await c.get("/metrics", headers={"Authorization": "Bearer s3cret"})
            assert "mailsvc_api_requests" in metrics.text
