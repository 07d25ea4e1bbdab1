"""Deleting opportunities, quotes, orders and invoices through the API, on SQLite and PostgreSQL:
what may go goes with its events, what a business fact rests on is a 409 naming it, and e-mails
are unlinked, never deleted."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import httpx
from sqlalchemy import select

from mailsvc.bootstrap import Services, open_services
from mailsvc.config import Settings
from mailsvc.crmstore.models import Email, OutboxEvent
from tests.conftest import check_event_contract
from tests.integration.test_api_users import ROOT, client_for
from tests.support.api import ok


def conflict(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == "application/problem+json"
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail


async def events(services: Services, event_type: str) -> list[dict[str, Any]]:
    async with services.sessions() as session:
        return [dict(d) for d in await session.scalars(
            select(OutboxEvent.data).where(OutboxEvent.type == event_type)
            .order_by(OutboxEvent.seq))]


async def stored_mail(services: Services, n: int = 1) -> int:
    async with services.sessions() as session, session.begin():
        email = Email(dedup_key=f"<m{n}@cust.example>", raw=b"Subject: hi\r\n\r\nhi\r\n",
                      size=20, intake_role="sales", outcome="linked", subject="hi")
        session.add(email)
        await session.flush()
        return email.id


async def test_an_open_opportunity_goes_with_its_quotes_and_leaves_its_mail_and_history(
    client: httpx.AsyncClient, services: Services,
) -> None:
    contact = ok(await client.post("/contacts", json={"last_name": "Roe",
                                                      "email": "roe@cust.example"}), 201)
    opp = ok(await client.post("/opportunities", json={
        "title": "Fleet", "amount": "5000", "contact_id": contact["id"]}), 201)
    quote = ok(await client.post("/quotes", json={"title": "Q", "amount": "5000",
                                                  "opportunity_id": opp["id"]}), 201)
    ok(await client.post(f"/quotes/{quote['id']}/status", json={"status": "sent"}))
    call = ok(await client.post("/activities", json={
        "type": "call", "subject": "kick-off", "done": True, "opportunity_id": opp["id"]}), 201)
    task = ok(await client.post("/activities", json={
        "type": "task", "subject": "follow up", "opportunity_id": opp["id"]}), 201)
    email_id = await stored_mail(services)
    ok(await client.post(f"/emails/{email_id}/links", json={
        "target_type": "opportunity", "target_id": opp["id"]}), 201)

    ok(await client.delete(f"/opportunities/{opp['id']}"), 204)

    assert (await client.get(f"/opportunities/{opp['id']}")).status_code == 404
    assert (await client.get(f"/quotes/{quote['id']}")).status_code == 404
    assert (await client.get(f"/activities/{task['id']}")).status_code == 404
    kept = ok(await client.get(f"/activities/{call['id']}"))
    assert kept["opportunity_id"] is None and kept["contact_id"] == contact["id"]
    mail = ok(await client.get(f"/emails/{email_id}"))  # the mail stays, without the link
    assert not [link for link in mail["links"] if link["target_type"] == "opportunity"]

    [deleted] = await events(services, "opportunity.deleted")
    assert deleted["id"] == opp["id"] and deleted["quote_ids"] == [quote["id"]]
    assert deleted["email_ids"] == [email_id]
    assert deleted["deleted_activity_ids"] == [task["id"]]
    assert call["id"] in deleted["kept_activity_ids"]
    assert [e["id"] for e in await events(services, "quote.deleted")] == [quote["id"]]
    unlinked = await events(services, "email.unlinked")
    assert [(e["email_id"], e["target_type"], e["target_id"]) for e in unlinked] == [
        (email_id, "opportunity", opp["id"])]
    assert [e["id"] for e in await events(services, "activity.deleted")] == [task["id"]]
    assert (await client.delete(f"/opportunities/{opp['id']}")).status_code == 404


async def test_a_won_opportunity_or_one_with_orders_or_invoices_is_a_409_with_the_reason(
    client: httpx.AsyncClient,
) -> None:
    won = ok(await client.post("/opportunities", json={"title": "Won", "amount": "100"}), 201)
    ok(await client.post(f"/opportunities/{won['id']}/won", json={}))
    conflict(await client.delete(f"/opportunities/{won['id']}"), "is won")

    ordered = ok(await client.post("/opportunities", json={"title": "Ordered"}), 201)
    order = ok(await client.post("/orders", json={"title": "O", "amount": "100",
                                                  "opportunity_id": ordered["id"]}), 201)
    conflict(await client.delete(f"/opportunities/{ordered['id']}"), f"order {order['id']}")

    billed = ok(await client.post("/opportunities", json={"title": "Billed"}), 201)
    invoice = ok(await client.post("/invoices", json={
        "amount": "10", "due_date": date.today().isoformat(),
        "opportunity_id": billed["id"]}), 201)
    conflict(await client.delete(f"/opportunities/{billed['id']}"), f"invoice {invoice['id']}")
    for opp in (won, ordered, billed):
        ok(await client.get(f"/opportunities/{opp['id']}"))


async def test_documents_go_only_when_nothing_rests_on_them(
    client: httpx.AsyncClient, services: Services,
) -> None:
    quote = ok(await client.post("/quotes", json={"title": "Q", "amount": "1000"}), 201)
    ok(await client.post(f"/quotes/{quote['id']}/status", json={"status": "accepted"}))
    order = ok(await client.post("/orders", json={"title": "O", "amount": "1000",
                                                  "quote_id": quote["id"]}), 201)
    paid = ok(await client.post("/invoices", json={
        "amount": "400", "due_date": date.today().isoformat(), "order_id": order["id"]}), 201)
    ok(await client.post(f"/invoices/{paid['id']}/pay",
                         json={"paid_date": date.today().isoformat()}))
    open_ = ok(await client.post("/invoices", json={
        "amount": "600", "due_date": date.today().isoformat(), "order_id": order["id"]}), 201)
    ticket = ok(await client.post("/tickets", json={"subject": "Wrong amount",
                                                    "invoice_id": open_["id"]}), 201)

    conflict(await client.delete(f"/quotes/{quote['id']}"), f"order {order['id']}")
    conflict(await client.delete(f"/orders/{order['id']}"),
             f"invoices {paid['id']}, {open_['id']}")
    conflict(await client.delete(f"/invoices/{paid['id']}"), "paid")
    conflict(await client.delete(f"/invoices/{open_['id']}"), f"ticket {ticket['id']}")

    ok(await client.patch(f"/tickets/{ticket['id']}", json={"invoice_id": None}))
    ok(await client.delete(f"/invoices/{open_['id']}"), 204)
    assert [e["id"] for e in await events(services, "invoice.deleted")] == [open_["id"]]
    # The order still has the paid invoice; a delivered order stays too.
    conflict(await client.delete(f"/orders/{order['id']}"), f"invoice {paid['id']}")
    other = ok(await client.post("/orders", json={"title": "O2", "amount": "5"}), 201)
    ok(await client.post(f"/orders/{other['id']}/status", json={"status": "delivered"}))
    conflict(await client.delete(f"/orders/{other['id']}"), "delivered")

    spare = ok(await client.post("/orders", json={"title": "O3", "amount": "5"}), 201)
    ok(await client.delete(f"/orders/{spare['id']}"), 204)
    assert [e["id"] for e in await events(services, "order.deleted")] == [spare["id"]]
    rejected = ok(await client.post("/quotes", json={"title": "R", "amount": "5"}), 201)
    ok(await client.post(f"/quotes/{rejected['id']}/status", json={"status": "rejected"}))
    ok(await client.delete(f"/quotes/{rejected['id']}"), 204)
    for path in (f"/quotes/{rejected['id']}", "/orders/4242", "/invoices/4242"):
        assert (await client.delete(path)).status_code == 404


async def test_only_roles_that_change_sales_records_may_delete_them_and_the_actor_is_recorded(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_services(make_settings(api_keys=ROOT), migrate=False) as svc:
        async with client_for(svc, ROOT) as admin:
            keys = {}
            for role in ("support", "sales"):
                user = ok(await admin.post("/users", json={
                    "email": f"{role}@corp.example", "name": role.title(), "role": role}), 201)
                key = ok(await admin.post("/keys", json={"user_id": user["id"]}), 201)
                keys[role] = (user["id"], key["key"])
            opp = ok(await admin.post("/opportunities", json={"title": "Mistake"}), 201)
        async with client_for(svc, keys["support"][1]) as support:
            assert (await support.delete(f"/opportunities/{opp['id']}")).status_code == 403
        async with client_for(svc, keys["sales"][1]) as sales:
            ok(await sales.delete(f"/opportunities/{opp['id']}"), 204)
        [deleted] = await events(svc, "opportunity.deleted")
        assert deleted["actor"]["user_id"] == keys["sales"][0]
        await check_event_contract(svc)
