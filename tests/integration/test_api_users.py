"""Users act as themselves: their own API keys, roles, actors on every change, "my" views; and
the seed-004 sales workflow walked end to end by two users."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from mailsvc.api.app import create_app
from mailsvc.bootstrap import Services, open_services
from mailsvc.config import Settings
from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import ApiKey, OutboxEvent
from mailsvc.mail import Envelope, RawMail
from tests.conftest import SALES

ROOT = "b00tstrap-key"


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def refused(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
async def svc(make_settings: Callable[..., Settings]) -> AsyncIterator[Services]:
    async with open_services(make_settings(api_keys=ROOT), migrate=False) as services:
        await services.pipeline.start()
        try:
            yield services
        finally:
            await services.pipeline.stop()


@pytest.fixture
async def admin(svc: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(svc, ROOT) as c:
        yield c


def client_for(svc: Services, key: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(svc))
    return httpx.AsyncClient(transport=transport, base_url="http://test/api/v1",
                             headers={"Authorization": f"Bearer {key}"})


async def user_with_key(admin: httpx.AsyncClient, email: str, name: str, role: str
                        ) -> tuple[int, str]:
    user = ok(await admin.post("/users", json={"email": email, "name": name, "role": role}), 201)
    key = ok(await admin.post("/keys", json={"user_id": user["id"], "name": "laptop"}), 201)
    assert key["role"] == role and key["key"].startswith(key["prefix"])
    return user["id"], key["key"]


async def events(svc: Services, *types: str) -> list[tuple[str, dict[str, Any]]]:
    async with svc.sessions() as session:
        rows = await session.execute(select(OutboxEvent.type, OutboxEvent.data)
                                     .where(OutboxEvent.type.in_(types))
                                     .order_by(OutboxEvent.seq))
        return [(t, d) for t, d in rows]


async def test_keys_belong_to_users_are_stored_hashed_and_roles_limit_changes(
    svc: Services, admin: httpx.AsyncClient,
) -> None:
    ann_id, ann_key = await user_with_key(admin, "ann@corp.example", "Ann", "sales")
    sam_id, sam_key = await user_with_key(admin, "sam@corp.example", "Sam", "support")
    async with svc.sessions() as session:
        stored = list(await session.scalars(select(ApiKey.key_hash).order_by(ApiKey.id)))
    assert stored == [hashlib.sha256(k.encode()).hexdigest() for k in (ann_key, sam_key)]
    listed = ok(await admin.get("/keys"))
    assert len(listed) == 2 and all("key" not in k for k in listed)
    assert ok(await admin.get("/me"))["via"] == "bootstrap-key"

    async with client_for(svc, ann_key) as ann, client_for(svc, sam_key) as sam:
        me = ok(await ann.get("/me"))
        assert (me["user"]["id"], me["role"], me["via"]) == (ann_id, "sales", "api-key")
        refused(await ann.post("/users", json={"email": "x@corp.example", "name": "X"}), 403)
        refused(await ann.get("/keys"), 403)
        refused(await ann.post("/pipelines", json={"name": "Mine"}), 403)
        refused(await sam.post("/opportunities", json={"title": "Nope"}), 403)
        opp = ok(await ann.post("/opportunities", json={"title": "Ann's"}), 201)
        ok(await admin.post("/opportunities", json={"title": "Nobody's"}), 201)
        ok(await ann.patch(f"/opportunities/{opp['id']}", json={"owner_id": ann_id}))
        mine = ok(await ann.get("/opportunities", params={"mine": "true"}))
        assert [o["id"] for o in mine["items"]] == [opp["id"]]
        refused(await admin.get("/opportunities", params={"mine": "true"}), 422)

        ticket = ok(await sam.post("/tickets", json={"subject": "Broken"}), 201)
        ok(await sam.patch(f"/tickets/{ticket['id']}", json={"status": "in_progress"}))
        refused(await ann.patch(f"/tickets/{ticket['id']}", json={"status": "resolved"}), 403)
        update = ok(await sam.get(f"/tickets/{ticket['id']}/updates"))[-1]
        assert (update["author_id"], update["author"]) == (sam_id, "sam@corp.example")

        created = await events(svc, "opportunity.created", "ticket.updated")
        assert [(t, d["actor"]["user_id"]) for t, d in created] == [
            ("opportunity.created", ann_id), ("opportunity.created", None),
            ("ticket.updated", sam_id)]

        key_id = ok(await admin.get("/keys", params={"user_id": ann_id}))[0]["id"]
        revoked = ok(await admin.delete(f"/keys/{key_id}"))
        assert revoked["revoked_at"]
        refused(await ann.get("/me"), 401)
        refused(await admin.delete(f"/keys/{key_id}"), 409)
        refused(await sam.get("/me", headers={"Authorization": "Bearer msk_guess"}), 401)


def test_keys_create_prints_a_key_once_that_the_api_accepts(
    make_settings: Callable[..., Settings], database_url: str,
) -> None:
    import asyncio

    from mailsvc.cli import app
    from mailsvc.crmstore import services as crm

    async def add_user() -> None:
        async with open_services(make_settings(), migrate=False) as svc, \
                svc.sessions() as session, session.begin():
            await crm.create_user(session, "ann@corp.example", "Ann")

    asyncio.run(add_user())
    env = {"MAILSVC_DATABASE_URL": database_url, "MAILSVC_API_KEYS": ROOT}
    result = CliRunner().invoke(app, ["keys", "create", "--user", "ANN@corp.example",
                                      "--role", "support"], env=env)
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("msk_") and len(key) > 40
    result = CliRunner().invoke(app, ["keys", "create", "--user", "nobody@corp.example"], env=env)
    assert result.exit_code == 64
    result = CliRunner().invoke(app, ["keys", "create", "--user", "ann@corp.example",
                                      "--role", "boss"], env=env)
    assert result.exit_code == 64

    async def call() -> dict[str, Any]:
        async with open_services(make_settings(api_keys=ROOT), migrate=False) as svc, \
                client_for(svc, key) as c:
            me: dict[str, Any] = ok(await c.get("/me"))
            return me

    me = asyncio.run(call())
    assert me["role"] == "support" and me["user"]["email"] == "ann@corp.example"
    listed = CliRunner().invoke(app, ["keys", "list"], env=env)
    assert listed.exit_code == 0 and key not in listed.output
    assert CliRunner().invoke(app, ["keys", "revoke", "1"], env=env).exit_code == 0
    assert CliRunner().invoke(app, ["keys", "revoke", "1"], env=env).exit_code == 65


LEAD_MAIL = b"""From: Eva Mai <eva.mai@kundenfirma.example>
To: sales@crm.example
Subject: Anfrage: CRM fuer 40 Mitarbeiter
Message-ID: <anfrage-1@kundenfirma.example>
Date: Mon, 2 Mar 2026 09:00:00 +0000

Guten Tag, wir suchen ein CRM fuer unser Vertriebsteam (40 Personen).
"""


async def test_the_seed_004_workflow_as_two_users_with_the_actor_on_every_change(
    svc: Services, admin: httpx.AsyncClient,
) -> None:
    lena_id, lena_key = await user_with_key(admin, "lena@corp.example", "Lena", "sales")
    tom_id, tom_key = await user_with_key(admin, "tom@corp.example", "Tom", "sales")
    pipeline = ok(await admin.post("/pipelines", json={
        "name": "Projektgeschaeft", "kind": "deal", "position": 0, "stages": [
            {"name": "Qualifiziert", "probability": 20}, {"name": "Angebot", "probability": 50},
            {"name": "Verhandlung", "probability": 80}]}), 201)
    ok(await admin.put(f"/pipelines/{pipeline['id']}/activity-plan", json=[
        {"subject": "Bedarfsanalyse", "offset_days": 0, "type": "meeting"},
        {"subject": "Angebot nachfassen", "offset_days": 7, "type": "call"}]))
    outcome = await svc.pipeline.submit(RawMail(LEAD_MAIL, Envelope(
        "eva.mai@kundenfirma.example", (SALES,), "sales", "smtp")))
    assert outcome.kind == "lead_created"
    lead_id = outcome.links["inbox_lead"]
    assert lead_id is not None

    async with client_for(svc, lena_key) as lena, client_for(svc, tom_key) as tom:
        # Lena qualifies the inbox lead and converts it with company and person.
        ok(await lena.patch(f"/inbox-leads/{lead_id}", json={
            "status": "qualifying", "company": "Kundenfirma GmbH", "budget": "48000",
            "owner_id": lena_id}))
        converted = ok(await lena.post(f"/inbox-leads/{lead_id}/convert", json={
            "kind": "deal", "pipeline_id": pipeline["id"], "create_company": True,
            "create_person": True}), 201)
        opp = converted["opportunity"]
        oid, account_id = opp["id"], opp["account_id"]
        assert opp["owner_id"] == lena_id and opp["amount"] == "48000.00" and account_id
        # Tom moves it on and plans the activities; Lena logs a call.
        stages = [st["id"] for st in pipeline["stages"]]
        ok(await tom.post(f"/opportunities/{oid}/stage", json={"stage_id": stages[1]}))
        plan = ok(await tom.post(f"/opportunities/{oid}/activity-plan", json={
            "start_date": (utcnow().date() + timedelta(days=1)).isoformat()}), 201)
        call = ok(await lena.post("/activities", json={
            "type": "call", "subject": "Telefonat mit Eva", "done": True,
            "opportunity_id": oid}), 201)
        assert call["contact_id"] == opp["contact_id"] and call["account_id"] == account_id
        ok(await lena.post(f"/activities/{plan[0]['id']}/complete"))
        # Quote by Lena, accepted; Tom makes the order and the invoice; Lena moves and wins.
        quote = ok(await lena.post("/quotes", json={
            "title": "CRM 40 Plaetze", "amount": "48000", "opportunity_id": oid}), 201)
        ok(await lena.post(f"/quotes/{quote['id']}/status", json={"status": "sent"}))
        ok(await lena.post(f"/quotes/{quote['id']}/status", json={"status": "accepted"}))
        order = ok(await tom.post("/orders", json={
            "title": "Auftrag CRM", "amount": "48000", "quote_id": quote["id"]}), 201)
        assert order["account_id"] == account_id
        today = utcnow().date()
        invoice = ok(await tom.post("/invoices", json={
            "amount": "48000", "order_id": order["id"], "issued_on": today.isoformat(),
            "due_date": (today + timedelta(days=14)).isoformat()}), 201)
        assert invoice["opportunity_id"] == oid
        ok(await lena.post(f"/opportunities/{oid}/stage", json={"stage_id": stages[2]}))
        won = ok(await lena.post(f"/opportunities/{oid}/won", json={}))
        assert won["status"] == "won"
        assert ok(await tom.get(f"/accounts/{account_id}"))["status"] == "customer"

        history = ok(await tom.get(f"/opportunities/{oid}/stage-history"))
        assert [(h["to_stage_id"], h["changed_by_id"]) for h in history] == [
            (stages[0], lena_id), (stages[1], tom_id), (stages[2], lena_id)]
        activities = ok(await lena.get(f"/opportunities/{oid}/activities"))
        by_subject = {a["subject"]: a["created_by_id"] for a in activities}
        assert by_subject["Telefonat mit Eva"] == lena_id
        assert by_subject["Bedarfsanalyse"] == tom_id

    expected = [
        ("inbox_lead.updated", lena_id), ("inbox_lead.status_changed", lena_id),
        ("account.created", lena_id), ("contact.created", lena_id),
        ("opportunity.created", lena_id), ("inbox_lead.converted", lena_id),
        ("opportunity.stage_changed", tom_id), ("activity_plan.scheduled", tom_id),
        ("activity.created", lena_id), ("activity.completed", lena_id),
        ("quote.created", lena_id), ("quote.sent", lena_id), ("quote.accepted", lena_id),
        ("order.created", tom_id), ("invoice.created", tom_id),
        ("opportunity.stage_changed", lena_id), ("opportunity.won", lena_id),
        ("account.became_customer", lena_id)]
    recorded = await events(svc, *{t for t, _ in expected})
    seen = [(t, d["actor"]["user_id"]) for t, d in recorded if "actor" in d]
    assert seen == expected
    # The mail itself came in without an actor: the intake is nobody's change.
    created = await events(svc, "inbox_lead.created")
    assert "actor" not in created[0][1]


ATTACHED = (b"""From: Eva Mai <eva.mai@kundenfirma.example>
To: sales@crm.example
Subject: Unterlagen
Message-ID: <unterlagen-1@kundenfirma.example>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain; charset=utf-8

Anbei die Unterlagen.
--b1
Content-Type: application/pdf; name="=?utf-8?q?Angebot_=22M=C3=BCller=22=2Epdf?="
Content-Disposition: attachment; filename="=?utf-8?q?Angebot_=22M=C3=BCller=22=2Epdf?="
Content-Transfer-Encoding: base64

JVBERi0xLjQKJcfsj6IK
--b1--
""")


async def test_attachments_and_the_raw_mail_download_with_the_same_access_rules(
    svc: Services, admin: httpx.AsyncClient,
) -> None:
    outcome = await svc.pipeline.submit(RawMail(ATTACHED, Envelope(
        "eva.mai@kundenfirma.example", (SALES,), "sales", "smtp")))
    assert outcome.email_id is not None
    email_id = outcome.email_id
    _, key = await user_with_key(admin, "sam@corp.example", "Sam", "support")
    async with client_for(svc, key) as sam, client_for(svc, "wrong") as stranger:
        refused(await stranger.get(f"/emails/{email_id}/raw"), 401)
        refused(await stranger.get(f"/emails/{email_id}/attachments"), 401)
        listed = ok(await sam.get(f"/emails/{email_id}/attachments"))
        assert [(a["filename"], a["content_type"]) for a in listed] == [
            ('Angebot "Müller".pdf', "application/pdf")]
        download = await sam.get(listed[0]["download"].removeprefix("/api/v1"))
        assert download.status_code == 200 and download.content.startswith(b"%PDF-1.4")
        assert download.headers["content-type"] == "application/pdf"
        disposition = download.headers["content-disposition"]
        assert disposition == ("attachment; filename=\"Angebot _M_ller_.pdf\"; "
                               "filename*=UTF-8''Angebot%20%22M%C3%BCller%22.pdf")
        assert download.headers["x-content-type-options"] == "nosniff"
        raw = await sam.get(f"/emails/{email_id}/raw")
        assert raw.status_code == 200 and raw.content == ATTACHED
        assert raw.headers["content-type"] == "message/rfc822"
        assert f'filename="email-{email_id}.eml"' in raw.headers["content-disposition"]
        refused(await sam.get(f"/emails/{email_id}/attachments/9999"), 404)
        refused(await sam.get("/emails/9999/raw"), 404)
        refused(await sam.get("/emails/9999/attachments"), 404)
