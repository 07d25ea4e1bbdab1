"""Outbound mail end to end, on SQLite and PostgreSQL, through a real SMTP relay (aiosmtpd on a
loopback port): replies from records, threading of the answers, deferral and failure,
bounces of our mail, acknowledgements of new tickets."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from email.utils import make_msgid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from mailsvc.api.app import create_app
from mailsvc.bootstrap import Services, open_services
from mailsvc.config import Settings
from mailsvc.crmstore import services as crm
from mailsvc.crmstore.models import (
    ContactEmail,
    Email,
    LinkTarget,
    OutboxEvent,
    Ticket,
    TicketStatus,
)
from mailsvc.crmstore.outbound_models import OutboundMail
from mailsvc.ingest.outcome import Outcome
from mailsvc.mail import Envelope, RawMail
from mailsvc.outbound.queue import OutboundPolicy, enqueue, record_context
from mailsvc.outbound.sender import Sender
from tests.conftest import BCC, SALES, SUPPORT, check_event_contract
from tests.support.smtp_relay import Received, TestRelay
from tests.support.waiting import wait_for

DEADLINE = 30.0


@pytest.fixture
def relay() -> Iterator[TestRelay]:
    server = TestRelay()
    server.start()
    yield server
    server.stop()


class World:
    """The wired service with a running sender, its API and the relay."""

    def __init__(self, svc: Services, client: httpx.AsyncClient, relay: TestRelay) -> None:
        self.svc = svc
        self.api = client
        self.relay = relay

    async def mail(self, data: bytes, sender: str = "jane@example.org",
                   to: str = SUPPORT) -> Outcome:
        role = self.svc.settings.intake_roles[to]
        return await self.svc.pipeline.submit(
            RawMail(data, Envelope(sender, (to,), role, "smtp")))  # type: ignore[arg-type]

    async def scalar(self, statement: Any) -> Any:
        async with self.svc.sessions() as session:
            return await session.scalar(statement)

    async def delivery(self, email_id: int) -> dict[str, Any]:
        response = await self.api.get(f"/emails/{email_id}")
        assert response.status_code == 200, response.text
        delivery: dict[str, Any] = response.json()["delivery"]
        return delivery

    async def wait_status(self, email_id: int, status: str) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            delivery = await self.delivery(email_id)
            return delivery if delivery["status"] == status else None

        return await wait_for(probe, within=DEADLINE, interval=0.05,
                              what=f"e-mail {email_id} {status}")

    async def wait_received(self, count: int) -> list[Received]:
        return await self.wait_received_from(self.relay, count)

    @staticmethod
    async def wait_received_from(relay: TestRelay, count: int) -> list[Received]:
        async def probe() -> list[Received] | None:
            received = relay.received
            return received if len(received) >= count else None

        return await wait_for(probe, within=DEADLINE, interval=0.05,
                              what=f"{count} mail(s) at the relay")

    async def events(self, event_type: str) -> list[dict[str, Any]]:
        async with self.svc.sessions() as session:
            rows = await session.scalars(
                select(OutboxEvent).where(OutboxEvent.type == event_type)
                .order_by(OutboxEvent.seq))
            return [row.data for row in rows]


@pytest.fixture
def outbound_settings(
    make_settings: Callable[..., Settings], relay: TestRelay
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "outbound_smtp_url": relay.url, "message_id_domain": "crm.example",
            "outbound_retry_initial_seconds": 0.2, "outbound_poll_seconds": 0.05,
            "outbound_timeout_seconds": 10, "ticket_ack": False,
        }
        values.update(overrides)
        return make_settings(**values)

    return make


@pytest.fixture
async def world_factory(
    outbound_settings: Callable[..., Settings], relay: TestRelay
) -> AsyncIterator[Callable[..., Any]]:
    stack: list[tuple[Services, asyncio.Task[None], httpx.AsyncClient, Any]] = []

    async def make(senders: int = 1, **overrides: Any) -> World:
        settings = outbound_settings(**overrides)
        context = open_services(settings, migrate=False)
        svc = await context.__aenter__()
        await svc.pipeline.start()
        tasks = [
            asyncio.create_task(
                Sender(svc.sessions, settings.outbound, hostname=settings.smtp.hostname).run())
            for _ in range(senders)
        ]
        transport = httpx.ASGITransport(app=create_app(svc))
        client = httpx.AsyncClient(transport=transport, base_url="http://test/api/v1")
        for task in tasks:
            stack.append((svc, task, client, context))
        return World(svc, client, relay)

    yield make
    done: set[int] = set()
    for svc, task, client, context in stack:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if id(svc) in done:
            continue
        done.add(id(svc))
        await client.aclose()
        await svc.pipeline.stop()
        await check_event_contract(svc)
        await context.__aexit__(None, None, None)


def customer_mail(subject: str, *, sender: str = "jane@example.org", name: str = "Jane Doe",
                  headers: str = "", message_id: str | None = None, body: str = "") -> bytes:
    mid = message_id or make_msgid(domain="example.org")
    text = body or "Hello,\nour printer does not print any more.\nJane\n"
    return (
        f"From: {name} <{sender}>\r\nTo: {SUPPORT}\r\nSubject: {subject}\r\n"
        f"Message-ID: {mid}\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n{headers}"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}"
    ).encode()


async def new_ticket(world: World, subject: str = "Printer broken", **kwargs: Any) -> int:
    outcome = await world.mail(customer_mail(subject, **kwargs))
    assert outcome.kind == "ticket_created", outcome
    ticket = outcome.links["ticket"]
    assert ticket is not None
    return ticket


async def user(world: World, email: str = "anna@crm.example", name: str = "Anna Support") -> int:
    async with world.svc.sessions() as session, session.begin():
        created = await crm.create_user(session, email, name)
        return created.id


async def test_a_ticket_reply_reaches_the_relay_with_the_id_and_our_message_id(
    world_factory: Callable[..., Any],
) -> None:
    world: World = await world_factory()
    ticket = await new_ticket(world)
    await user(world)
    customer_mid = await world.scalar(select(Email.message_id).where(Email.id == 1))
    response = await world.api.post(
        f"/tickets/{ticket}/replies", headers={"X-Mailsvc-User": "anna@crm.example"},
        json={"body_text": "Hello Jane,\nplease switch it off and on again.\nAnna\n"})
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["status"] == "queued" and queued["message_id"].endswith("@crm.example")

    received = (await world.wait_received(1))[0]
    message = received.message
    assert message["Message-ID"] == f"<{queued['message_id']}>"
    assert message["Subject"] == f"Re: Printer broken [TCK-{ticket}]"
    assert message["In-Reply-To"] == f"<{customer_mid}>"
    assert message["From"].addresses[0].display_name == "Anna Support"
    assert message["From"].addresses[0].addr_spec == SUPPORT
    assert message["Auto-Submitted"] is None
    assert received.rcpt_tos == ["jane@example.org"] and received.mail_from == SUPPORT

    delivery = await world.wait_status(queued["email_id"], "sent")
    assert delivery["attempts"] == 1 and "250" in (delivery["last_reply"] or "")
    timeline = (await world.api.get(f"/tickets/{ticket}/emails")).json()
    entry = next(i for i in timeline["items"] if i["email"]["id"] == queued["email_id"])
    assert entry["email"]["direction"] == "outgoing" and entry["linked_by"] == "outbound"
    links = {(link["target_type"], link["target_id"]) for link in entry["email"]["links"]}
    assert ("owner", 1) in links
    sent = await world.events("email.sent")
    assert [e["email_id"] for e in sent] == [queued["email_id"]]
    assert len(world.relay.received) == 1


async def test_the_customers_answer_without_an_id_reopens_the_resolved_ticket(
    world_factory: Callable[..., Any],
) -> None:
    world: World = await world_factory()
    ticket = await new_ticket(world)
    response = await world.api.post(f"/tickets/{ticket}/replies",
                                    json={"body_text": "Fixed, please check."})
    assert response.status_code == 202, response.text
    ours = response.json()["message_id"]
    await world.wait_status(response.json()["email_id"], "sent")
    async with world.svc.sessions() as session, session.begin():
        await crm.change_ticket_status(session, ticket, TicketStatus.RESOLVED)

    answer = customer_mail("Still broken", headers=f"In-Reply-To: <{ours}>\r\n"
                           f"References: <{ours}>\r\n", body="It still does not print.\n")
    outcome = await world.mail(answer)
    assert outcome.kind == "ticket_updated" and outcome.rule == "thread", outcome
    assert outcome.links["ticket"] == ticket
    status = await world.scalar(select(Ticket.status).where(Ticket.id == ticket))
    assert status == TicketStatus.OPEN


async def test_relay_down_defers_and_relay_back_sends_once(
    world_factory: Callable[..., Any], relay: TestRelay,
) -> None:
    relay.stop()
    world: World = await world_factory()
    ticket = await new_ticket(world)
    response = await world.api.post(f"/tickets/{ticket}/replies", json={"body_text": "Hi"})
    email_id = response.json()["email_id"]
    deferred = await world.wait_status(email_id, "deferred")
    assert deferred["last_reply"]

    async def tried_twice() -> bool:
        return (await world.delivery(email_id))["attempts"] >= 2

    await wait_for(tried_twice, within=DEADLINE, what="a second attempt")
    relay.start()
    sent = await world.wait_status(email_id, "sent")
    assert sent["attempts"] >= 3
    # Give the sender every chance to send it again: the next mail goes through after it.
    second = await world.api.post(f"/tickets/{ticket}/replies", json={"body_text": "Again"})
    await world.wait_status(second.json()["email_id"], "sent")
    ids = [r.message["Message-ID"] for r in relay.received]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert len(await world.events("email.sent")) == 2


async def test_a_mail_deferred_beyond_the_retry_period_fails_as_expired(
    world_factory: Callable[..., Any], relay: TestRelay,
) -> None:
    relay.stop()
    world: World = await world_factory(outbound_retry_hours=0.0005)  # 1.8 s
    ticket = await new_ticket(world)
    response = await world.api.post(f"/tickets/{ticket}/replies", json={"body_text": "Hi"})
    failed = await world.wait_status(response.json()["email_id"], "failed")
    assert failed["attempts"] >= 1 and failed["last_reply"]
    events = await world.events("email.send_failed")
    assert [e["reason"] for e in events] == ["expired"]


async def test_a_550_fails_the_mail_at_once_with_the_reply_and_an_event(
    world_factory: Callable[..., Any], relay: TestRelay,
) -> None:
    relay.refuse("550 5.1.1 <jane@example.org>: mailbox unavailable")
    world: World = await world_factory()
    ticket = await new_ticket(world)
    response = await world.api.post(f"/tickets/{ticket}/replies", json={"body_text": "Hi"})
    email_id = response.json()["email_id"]
    failed = await world.wait_status(email_id, "failed")
    assert failed["attempts"] == 1 and "550" in failed["last_reply"]
    assert "mailbox unavailable" in failed["last_reply"]
    events = await world.events("email.send_failed")
    assert len(events) == 1 and events[0]["reason"] == "rejected"
    assert events[0]["email_id"] == email_id and "550" in events[0]["reply"]
    assert relay.received == []


async def test_a_bounce_of_our_mail_fails_it_and_marks_the_address_bouncing(
    world_factory: Callable[..., Any],
) -> None:
    world: World = await world_factory()
    async with world.svc.sessions() as session, session.begin():
        contact = await crm.create_contact(session, "Doe", "jane@example.org", first_name="Jane")
    outcome = await world.mail(customer_mail("Printer broken"))
    ticket = outcome.links["ticket"]
    assert ticket is not None
    response = await world.api.post(f"/tickets/{ticket}/replies", json={"body_text": "Hi"})
    queued = response.json()
    await world.wait_status(queued["email_id"], "sent")
    bounce = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n"
        f"To: {SUPPORT}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-77@mx.example.org>\r\nAuto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n"
        "\r\nFinal-Recipient: rfc822; jane@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: {SUPPORT}\r\nTo: jane@example.org\r\nMessage-ID: <{queued['message_id']}>\r\n"
        "--B--\r\n"
    ).encode()
    result = await world.mail(bounce, sender="")
    assert result.kind == "ignored" and result.rule == "bounce", result
    failed = await world.delivery(queued["email_id"])
    assert failed["status"] == "failed" and "user unknown" in failed["last_reply"]
    events = await world.events("email.send_failed")
    assert [e["reason"] for e in events] == ["bounced"]
    bouncing = await world.scalar(
        select(ContactEmail.bouncing).where(ContactEmail.contact_id == contact.id))
    assert bouncing is True


async def test_new_tickets_are_acknowledged_but_never_machine_mail(
    world_factory: Callable[..., Any],
) -> None:
    world: World = await world_factory(ticket_ack=True)
    auto = customer_mail("Out of office", sender="bob@example.org",
                         headers="Auto-Submitted: auto-replied\r\n")
    listed = customer_mail("Newsletter", sender="news@example.org",
                           headers="List-Id: <news.example.org>\r\n")
    noreply = customer_mail("Your order", sender="noreply@shop.example")
    bounce = customer_mail("Undelivered Mail Returned to Sender",
                           sender="MAILER-DAEMON@mx.example.org")
    for data in (auto, listed, bounce):
        outcome = await world.mail(data, sender="")
        assert outcome.kind == "ignored", outcome
    await world.mail(noreply, sender="noreply@shop.example")
    ticket = await new_ticket(world, "Drucker kaputt")

    received = await world.wait_received(1)
    ack = received[0]
    assert ack.rcpt_tos == ["jane@example.org"] and ack.mail_from == "<>"  # null return path
    message = ack.message
    assert message["Auto-Submitted"] == "auto-replied"
    assert f"TCK-{ticket}" in message["Subject"]
    body = message.get_body(("plain",))
    assert body is not None
    assert f"TCK-{ticket}" in body.get_content() and "Guten Tag" in body.get_content()
    timeline = (await world.api.get(f"/tickets/{ticket}/emails")).json()
    kinds = sorted(i["email"]["kind"] for i in timeline["items"])
    assert kinds == ["auto_reply", "human"]
    # The sender works in order: had anything else been queued, it would have gone first.
    assert await world.scalar(select(func.count()).select_from(OutboundMail)) == 1
    assert len(world.relay.received) == 1


async def test_two_tickets_from_one_sender_within_the_window_get_one_acknowledgement(
    world_factory: Callable[..., Any],
) -> None:
    world: World = await world_factory(ticket_ack=True)
    first = await new_ticket(world, "Printer broken")
    second = await new_ticket(world, "Scanner broken too")
    assert first != second
    await new_ticket(world, "Monitor flickers", sender="max@example.org", name="Max")
    received = await world.wait_received(2)
    assert sorted(r.rcpt_tos[0] for r in received) == ["jane@example.org", "max@example.org"]
    acks = await world.scalar(
        select(func.count()).select_from(OutboundMail).where(OutboundMail.kind == "ack"))
    assert acks == 2


async def test_opportunity_and_inbox_lead_mail_and_their_defaults(
    world_factory: Callable[..., Any],
) -> None:
    world: World = await world_factory()
    async with world.svc.sessions() as session, session.begin():
        owner = await crm.create_user(session, "sam@crm.example", "Sam Sales")
        contact = await crm.create_contact(session, "Buyer", "gordon@globex.example",
                                           first_name="Gordon")
        opportunity = await crm.create_opportunity(session, "20 seats", contact_id=contact.id,
                                                   owner_id=owner.id)
    response = await world.api.post(f"/opportunities/{opportunity.id}/emails", json={
        "body_text": "Our offer", "cc": ["boss@globex.example"],
        "attachments": [{"filename": "offer.txt", "content_type": "text/plain",
                         "content_base64": "T2ZmZXI="}]})
    assert response.status_code == 202, response.text
    received = (await world.wait_received(1))[0]
    assert sorted(received.rcpt_tos) == ["boss@globex.example", "gordon@globex.example"]
    message = received.message
    assert message["Subject"] == f"Re: 20 seats [OPP-{opportunity.id}]"
    assert message["From"].addresses[0].display_name == "Sam Sales"
    assert message["From"].addresses[0].addr_spec == world.svc.settings.sales_address[0]
    assert [a.get_payload(decode=True) for a in message.iter_attachments()] == [b"Offer"]

    lead = await world.mail(customer_mail("Price list?", sender="lena@newco.example"),
                            to=world.svc.settings.sales_address[0])
    assert lead.kind == "lead_created"
    response = await world.api.post(f"/inbox-leads/{lead.links['inbox_lead']}/replies",
                                    json={"body_text": "Attached.", "owner_id": owner.id})
    assert response.status_code == 202, response.text
    received = (await world.wait_received(2))[1]
    assert received.rcpt_tos == ["lena@newco.example"]
    assert received.message["Subject"] == "Re: Price list?"
    answer = customer_mail("Thanks", sender="lena@newco.example",
                           headers=f"In-Reply-To: <{response.json()['message_id']}>\r\n")
    outcome = await world.mail(answer, to=world.svc.settings.sales_address[0])
    assert outcome.rule == "thread" and outcome.links["inbox_lead"] == lead.links["inbox_lead"]


async def test_bad_requests_get_problems_and_store_nothing(
    world_factory: Callable[..., Any],
) -> None:
    world: World = await world_factory()
    ticket = await new_ticket(world)
    before = await world.scalar(select(func.count()).select_from(Email))
    for body, status in [
        ({"body_text": ""}, 422),
        ({"body_text": "x", "to": ["not an address"]}, 422),
        ({"body_text": "x", "to": ["a@b.example>, evil@x.example"]}, 422),
        ({"body_text": "x", "subject": "two\r\nBcc: evil@x.example"}, 422),
        ({"body_text": "x", "attachments": [{"filename": "a", "content_base64": "!!"}]}, 422),
        ({"body_text": "x", "owner_id": 999}, 422),
    ]:
        response = await world.api.post(f"/tickets/{ticket}/replies", json=body)
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    response = await world.api.post("/tickets/999/replies", json={"body_text": "x"})
    assert response.status_code == 404
    response = await world.api.post(f"/tickets/{ticket}/replies", json={"body_text": "x"},
                                    headers={"X-Mailsvc-User": "nobody@crm.example"})
    assert response.status_code == 422
    assert await world.scalar(select(func.count()).select_from(Email)) == before


async def test_without_an_outbound_relay_the_api_says_409_and_stores_nothing(
    services: Services,
) -> None:
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test/api/v1") as client:
        async with services.sessions() as session, session.begin():
            ticket = await crm.create_ticket(session, "Printer", requester_email="j@example.org")
        response = await client.post(f"/tickets/{ticket.id}/replies", json={"body_text": "Hi"})
        assert response.status_code == 409
        assert response.headers["content-type"] == "application/problem+json"
        assert "MAILSVC_OUTBOUND_SMTP_URL" in response.json()["detail"]
    async with services.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Email)) == 0
        assert await session.scalar(select(func.count()).select_from(OutboundMail)) == 0


async def test_two_senders_deliver_every_mail_exactly_once(
    world_factory: Callable[..., Any],
) -> None:
    world: World = await world_factory(senders=2)
    ticket = await new_ticket(world)
    ids = []
    for n in range(12):
        response = await world.api.post(f"/tickets/{ticket}/replies",
                                        json={"body_text": f"Reply {n}"})
        assert response.status_code == 202
        ids.append(response.json()["message_id"])
    received = await world.wait_received(12)
    for email_id in range(2, 14):
        await world.wait_status(email_id, "sent")
    got = [r.message["Message-ID"] for r in world.relay.received]
    assert sorted(got) == sorted(f"<{i}>" for i in ids) and len(received) == 12


async def test_mailsvc_send_once_delivers_what_is_due(
    database_url: str, relay: TestRelay, outbound_settings: Callable[..., Settings],
) -> None:
    settings = outbound_settings()
    async with (open_services(settings, migrate=False) as svc, svc.sessions() as session,
                session.begin()):
        ticket = await crm.create_ticket(session, "Printer", requester_email="j@example.org")
        policy = OutboundPolicy.from_settings(
            settings.outbound, settings.linking, settings.intake)
        context = await record_context(session, policy, LinkTarget.TICKET, ticket.id)
        queued = await enqueue(session, policy, context, text="Hello")
    env = {**os.environ, "MAILSVC_DATABASE_URL": database_url, "MAILSVC_BCC_ADDRESS": BCC,
           "MAILSVC_SALES_ADDRESS": SALES, "MAILSVC_SUPPORT_ADDRESS": SUPPORT,
           "MAILSVC_OUTBOUND_SMTP_URL": relay.url}
    env.pop("MAILSVC_AMQP_URL", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailsvc", "send", "--once", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, err.decode()
    assert json.loads(out.decode().strip().splitlines()[-1]) == {"tried": 1}
    assert [r.message["Message-ID"] for r in relay.received] == [f"<{queued.message_id}>"]


async def test_serve_acknowledges_sends_a_reply_and_threads_the_answer(
    database_url: str, relay: TestRelay,
) -> None:
    """The whole loop through real processes and sockets: a customer writes over SMTP, gets an
    acknowledgement, a user answers through the HTTP API, the customer answers that without
    the ID, and the resolved ticket is open again."""
    import signal
    import smtplib

    from tests.integration.test_serve import free_port

    smtp_port, api_port = free_port(), free_port()
    env = {"PATH": os.environ["PATH"], "MAILSVC_DATABASE_URL": database_url,
           "MAILSVC_SMTP_PORT": str(smtp_port), "MAILSVC_API_PORT": str(api_port),
           "MAILSVC_BCC_ADDRESS": BCC, "MAILSVC_SALES_ADDRESS": SALES,
           "MAILSVC_SUPPORT_ADDRESS": SUPPORT, "MAILSVC_OUTBOUND_SMTP_URL": relay.url,
           "MAILSVC_OUTBOUND_POLL_SECONDS": "0.2"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailsvc", "serve", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    async def listening(port: int) -> bool:
        assert process.returncode is None, "mailsvc serve exited"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    api = f"http://127.0.0.1:{api_port}/api/v1"
    try:
        await wait_for(lambda: listening(smtp_port), within=120, what="the SMTP intake")
        await wait_for(lambda: listening(api_port), within=120, what="the API")
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=60) as smtp:
            smtp.sendmail("jane@example.org", [SUPPORT], customer_mail("Drucker kaputt"))
        ack = (await World.wait_received_from(relay, 1))[0].message
        assert ack["Auto-Submitted"] == "auto-replied" and "TCK-1" in ack["Subject"]
        async with httpx.AsyncClient(base_url=api, timeout=60) as client:
            response = await client.post("/tickets/1/replies", json={"body_text": "Try again."})
            assert response.status_code == 202, response.text
            reply = (await World.wait_received_from(relay, 2))[1].message
            assert reply["Message-ID"] == f"<{response.json()['message_id']}>"
            assert reply["Subject"] == "Re: Drucker kaputt [TCK-1]"
            patched = await client.patch("/tickets/1", json={"status": "resolved"})
            assert patched.status_code == 200, patched.text
            answer = customer_mail("Still broken", headers=(
                f"In-Reply-To: {reply['Message-ID']}\r\nReferences: {reply['Message-ID']}\r\n"))
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=60) as smtp:
                smtp.sendmail("jane@example.org", [SUPPORT], answer)

            async def reopened() -> bool:  # the 250 means accepted; a decide worker reopens it
                return bool((await client.get("/tickets/1")).json()["status"] == "open")

            await wait_for(reopened, within=120, what="the answer to reopen the ticket")
            timeline = (await client.get("/tickets/1/emails")).json()
            assert timeline["total"] == 4
            assert (await client.get("/tickets")).json()["total"] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr, stderr.decode()[-4000:]
    assert len(relay.received) == 2
