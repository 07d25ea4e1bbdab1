"""Webhooks end to end: the REST API subscribes a local receiver, the dispatcher delivers the
outbox to it (no broker configured), signed, in order, retried, and disabled when it keeps
failing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from mailsvc.bootstrap import Services, open_services
from mailsvc.config import Settings
from mailsvc.crmstore.models import OutboxEvent
from mailsvc.crmstore.webhook_models import WebhookCursor
from mailsvc.events.webhooks import WebhookDispatcher
from tests.conftest import check_event_contract
from tests.support.api import ok
from tests.support.waiting import wait_for
from tests.support.webhook_receiver import Received, receiver

# Fast retries, so the tests wait for what happens, never for a backoff.
FAST = {
    "webhook_allow_private": True,  # the receiver listens on 127.0.0.1
    "webhook_retry_initial_seconds": 0.05,
    "webhook_retry_max_seconds": 0.2,
    "webhook_poll_seconds": 0.05,
    "webhook_timeout_seconds": 10.0,
}
WITHIN = 60.0


@dataclass
class Rig:
    services: Services
    api: httpx.AsyncClient

    async def subscribe(self, url: str, types: list[str] | None = None,
                        **extra: Any) -> dict[str, Any]:
        return ok(await self.api.post("/webhooks", json={"url": url, "event_types": types,
                                                         **extra}), 201)

    async def account(self, name: str) -> int:
        return int(ok(await self.api.post("/accounts", json={"name": name}), 201)["id"])

    async def deliveries(self, hook_id: int) -> list[dict[str, Any]]:
        return list(ok(await self.api.get(f"/webhooks/{hook_id}/deliveries"))["items"])

    async def hook(self, hook_id: int) -> dict[str, Any]:
        return dict(ok(await self.api.get(f"/webhooks/{hook_id}")))


@asynccontextmanager
async def rig(settings: Settings) -> AsyncIterator[Rig]:
    """The API, and a dispatcher running as in `mailsvc serve`."""
    from mailsvc.api.app import create_app

    async with open_services(settings, migrate=False) as services:
        dispatcher = WebhookDispatcher(services.sessions, settings)
        task = asyncio.create_task(dispatcher.run())
        transport = httpx.ASGITransport(app=create_app(services))
        try:
            async with httpx.AsyncClient(transport=transport,
                                         base_url="http://test/api/v1") as api:
                yield Rig(services, api)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await check_event_contract(services)


def verify(secret: str, request: Received) -> None:
    """The Standard Webhooks signature, checked with nothing but the standard library."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = (f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}."
              .encode() + request.body)
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    versions = dict(part.split(",", 1) for part in request.headers["webhook-signature"].split())
    assert hmac.compare_digest(versions["v1"], expected)
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 300


def types_of(requests: list[Received]) -> list[str]:
    return [json.loads(r.body)["type"] for r in requests]


async def received(hook: Any, count: int) -> list[Received]:
    async def enough() -> list[Received] | None:
        got = hook.received()
        return got if len(got) >= count else None

    return await wait_for(enough, within=WITHIN, interval=0.05,
                          what=f"{count} webhook request(s)")


async def test_events_arrive_in_order_as_signed_cloudevents_without_a_broker(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(**FAST)
    assert settings.amqp_url is None
    with receiver() as hook:
        async with rig(settings) as r:
            created = await r.subscribe(hook.url)
            secret = created["secret"]
            assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
            ids = [await r.account(f"Account {n}") for n in range(5)]
            requests = await received(hook, 5)
            async with r.services.sessions() as session:
                outbox = (await session.scalars(
                    select(OutboxEvent).where(OutboxEvent.type == "account.created")
                    .order_by(OutboxEvent.seq))).all()
            deliveries = await wait_for(
                lambda: _all_delivered(r, created["id"], 5), within=WITHIN, what="delivered")
        # Nothing about the subscription's own creation: it starts with the next event.
        assert types_of(requests) == ["com.mailsvc.account.created"] * 5
        bodies = [json.loads(x.body) for x in requests]
        assert [b["id"] for b in bodies] == [e.id for e in outbox]  # outbox order
        assert [b["subject"] for b in bodies] == [f"account/{i}" for i in ids]
        for request, body in zip(requests, bodies, strict=True):
            assert request.path == "/hook"
            assert request.headers["content-type"] == "application/cloudevents+json"
            assert request.headers["webhook-id"] == body["id"]
            assert body["specversion"] == "1.0" and body["source"] == "urn:mailsvc"
            verify(secret, request)
        assert {d["status"] for d in deliveries} == {"delivered"}
        assert all(d["attempts"] == 1 and d["last_status"] == 204 for d in deliveries)


async def _all_delivered(r: Rig, hook_id: int, count: int) -> list[dict[str, Any]] | None:
    rows = await r.deliveries(hook_id)
    done = [d for d in rows if d["status"] == "delivered"]
    return rows if len(done) >= count else None


async def test_a_subscription_gets_only_the_types_it_chose(
    make_settings: Callable[..., Settings],
) -> None:
    with receiver() as contacts, receiver() as everything:
        async with rig(make_settings(**FAST)) as r:
            await r.subscribe(contacts.url, ["contact.created"])
            await r.subscribe(everything.url, None)
            account = await r.account("Filtered Ltd")
            ok(await r.api.post("/contacts", json={"last_name": "Filter",
                                                   "account_id": account}), 201)
            all_of_them = await received(everything, 2)
            only = await received(contacts, 1)
            # The other subscriber got both after the contact, so the filter had its chance.
            assert types_of(all_of_them)[:2] == ["com.mailsvc.account.created",
                                                 "com.mailsvc.contact.created"]
        assert types_of(only) == ["com.mailsvc.contact.created"]


async def test_a_receiver_answering_500_gets_the_event_again_and_the_next_after_it(
    make_settings: Callable[..., Settings],
) -> None:
    with receiver([500, 204]) as hook:
        async with rig(make_settings(**FAST)) as r:
            created = await r.subscribe(hook.url)
            await r.account("Retry Ltd")
            await r.account("After Retry Ltd")
            requests = await received(hook, 3)
            deliveries = await wait_for(
                lambda: _all_delivered(r, created["id"], 2), within=WITHIN, what="delivered")
            state = await r.hook(created["id"])
        first, again, second = requests[:3]
        assert first.headers["webhook-id"] == again.headers["webhook-id"]
        assert first.body == again.body  # the same message, signed afresh
        assert json.loads(second.body)["subject"] != json.loads(first.body)["subject"]
        by_seq = sorted(deliveries, key=lambda d: d["event_seq"])
        assert [d["attempts"] for d in by_seq] == [2, 1]
        assert by_seq[0]["last_status"] == 204 and "500" not in str(by_seq[0]["last_error"])
        assert state["enabled"] and state["consecutive_failures"] == 0
        assert state["failing_since"] is None and state["last_success_at"] is not None


async def test_a_receiver_that_keeps_failing_is_disabled_and_can_be_enabled_again(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(**FAST, webhook_max_attempts=2, webhook_disable_after_failures=2)
    with receiver([503]) as hook:
        async with rig(settings) as r:
            created = await r.subscribe(hook.url)
            await r.account("Down Ltd")
            await r.account("Still Down Ltd")

            async def disabled() -> dict[str, Any] | None:
                state = await r.hook(created["id"])
                return None if state["enabled"] else state

            state = await wait_for(disabled, within=WITHIN, what="the subscription disabled")
            assert "2 deliveries in a row failed" in state["disabled_reason"]
            deliveries = await r.deliveries(created["id"])
            assert [d["status"] for d in deliveries] == ["failed", "failed"]
            assert all(d["attempts"] == 2 and d["last_status"] == 503
                       and d["next_attempt_at"] is None for d in deliveries)
            async with r.services.sessions() as session:
                event = await session.scalar(
                    select(OutboxEvent).where(OutboxEvent.type == "webhook.disabled"))
            assert event is not None and event.data["id"] == created["id"]
            assert len(hook.received()) == 4

            # Re-enabled: events from now on are delivered again.
            hook.statuses[:] = [204]
            enabled = ok(await r.api.patch(f"/webhooks/{created['id']}",
                                           json={"enabled": True}))
            assert enabled["enabled"] and enabled["consecutive_failures"] == 0
            assert enabled["disabled_reason"] is None
            await r.account("Back Up Ltd")
            requests = await received(hook, 5)
        assert json.loads(requests[4].body)["type"] == "com.mailsvc.account.created"


async def test_a_deleted_subscription_gets_nothing_more(
    make_settings: Callable[..., Settings],
) -> None:
    with receiver() as gone, receiver() as stays:
        async with rig(make_settings(**FAST)) as r:
            deleted = await r.subscribe(gone.url)
            await r.subscribe(stays.url)
            await r.account("Before Ltd")
            await received(gone, 2)  # the other subscription's creation, the account
            assert (await r.api.delete(f"/webhooks/{deleted['id']}")).status_code == 204
            await r.account("After Ltd")
            # The other subscriber got the later event: the dispatcher has been past it.
            await received(stays, 3)  # account, webhook.deleted, account
            async with r.services.sessions() as session:
                newest = max((await session.scalars(select(OutboxEvent.seq))).all())

            async def passed() -> bool:
                async with r.services.sessions() as session:
                    position = await session.scalar(select(WebhookCursor.position))
                return position is not None and position >= newest

            await wait_for(passed, within=WITHIN, what="the cursor past the last event")
            assert (await r.api.get(f"/webhooks/{deleted['id']}")).status_code == 404
            assert (await r.api.get(f"/webhooks/{deleted['id']}/deliveries")).status_code == 404
        assert types_of(gone.received()) == ["com.mailsvc.webhook.created",
                                             "com.mailsvc.account.created"]
        assert types_of(stays.received()) == ["com.mailsvc.account.created",
                                              "com.mailsvc.webhook.deleted",
                                              "com.mailsvc.account.created"]


async def test_a_target_refused_at_connection_time_fails_for_good(
    make_settings: Callable[..., Settings],
) -> None:
    """A subscription made while private targets were allowed, then the setting was turned
    off: the dispatcher checks the address on every connection and never connects."""
    with receiver() as hook:
        async with rig(make_settings(**FAST)) as r:
            created = await r.subscribe(hook.url)
        strict = make_settings(**{**FAST, "webhook_allow_private": False})
        async with rig(strict) as r:
            await r.account("Inner Ltd")

            async def failed() -> list[dict[str, Any]] | None:
                rows = await r.deliveries(created["id"])
                return rows if rows and rows[0]["status"] == "failed" else None

            rows = await wait_for(failed, within=WITHIN, what="the delivery refused")
        assert "127.0.0.1 is a loopback address" in rows[0]["last_error"]
        assert rows[0]["last_status"] is None and rows[0]["attempts"] == 1
        assert hook.received() == []


async def test_the_api_answers_bad_subscriptions_with_precise_problems(
    client: httpx.AsyncClient,
) -> None:
    async def problem(body: dict[str, Any], status: int = 422) -> dict[str, Any]:
        response = await client.post("/webhooks", json=body)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        return dict(response.json())

    url = "https://hooks.example.com/mailsvc"
    unknown = await problem({"url": url, "event_types": ["email.linked", "email.exploded"]})
    assert unknown["errors"][0]["field"] == "event_types"
    assert "'email.exploded'" in unknown["detail"]
    for bad, why in [("ftp://hooks.example.com/x", "http:// or https://"),
                     ("https://user:pw@hooks.example.com/x", "credentials"),
                     ("https:///nohost", "no host"), ("not a url", "")]:
        found = await problem({"url": bad, "event_types": None})
        assert found["errors"][0]["field"] == "url" and why in found["detail"], found
    short = await problem({"url": url, "event_types": None, "secret": "whsec_c2hvcnQ="})
    assert short["errors"][0]["field"] == "secret" and "24 to 64 bytes" in short["detail"]
    prefix = await problem({"url": url, "event_types": None, "secret": "s3cr3t"})
    assert "whsec_" in prefix["detail"]
    empty = await problem({"url": url, "event_types": []})
    assert empty["errors"][0]["field"] == "event_types"
    missing = await problem({"url": url})
    assert missing["errors"][0]["field"] == "event_types"
    # The default refuses private targets (MAILSVC_WEBHOOK_ALLOW_PRIVATE=false).
    for inner in ("http://127.0.0.1:9/x", "http://localhost/x", "http://10.1.2.3/x",
                  "http://[::1]/x", "http://169.254.169.254/latest/meta-data"):
        refused = await problem({"url": inner, "event_types": None})
        assert refused["type"].endswith("/rule-violation"), refused
        assert "MAILSVC_WEBHOOK_ALLOW_PRIVATE" in refused["detail"]

    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    created = ok(await client.post("/webhooks", json={
        "url": url, "event_types": ["ticket.created"], "secret": secret}), 201)
    assert created["secret"] == secret
    shown = ok(await client.get(f"/webhooks/{created['id']}"))
    listed = ok(await client.get("/webhooks"))
    assert "secret" not in shown and shown["secret_hint"] == "whsec_…" + secret[-4:]
    assert listed["total"] == 1 and secret not in json.dumps(listed)
    patched = await client.patch(f"/webhooks/{created['id']}",
                                 json={"event_types": ["ticket.exploded"]})
    assert patched.status_code == 422
    assert (await client.patch(f"/webhooks/{created['id']}", json={"url": None})
            ).status_code == 422
    changed = ok(await client.patch(f"/webhooks/{created['id']}", json={"event_types": None}))
    assert changed["event_types"] is None
    assert (await client.get("/webhooks/999")).status_code == 404
    assert (await client.delete("/webhooks/999")).status_code == 404
    assert (await client.get("/webhooks/999/deliveries")).status_code == 404


@pytest.mark.parametrize("role", ["sales", "support"])
async def test_only_administrators_see_or_change_webhooks(
    client: httpx.AsyncClient, services: Services, role: str,
) -> None:
    from mailsvc.crmstore.models import User, UserRole
    from mailsvc.crmstore.services.access import create_api_key

    async with services.sessions() as session, session.begin():
        user = User(name="Not Admin", email=f"{role}@mailsvc.example", role=UserRole(role))
        session.add(user)
        await session.flush()
        key = (await create_api_key(session, user.id)).secret
    headers = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/webhooks", headers=headers)).status_code == 403
    assert (await client.post("/webhooks", headers=headers, json={
        "url": "https://hooks.example.com/", "event_types": None})).status_code == 403
