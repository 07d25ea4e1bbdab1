"""Erasing a person and enforcing retention, on SQLite and PostgreSQL, through the real intake,
the `mailsvc` command and the API."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from mailsvc.api.app import create_app
from mailsvc.bootstrap import Services
from mailsvc.crmstore import services as crm
from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import (
    Activity,
    Contact,
    ContactEmail,
    Email,
    EmailAttachment,
    Erasure,
    InboxLead,
    OutboxEvent,
    QuarantinedMail,
    Ticket,
    TicketUpdate,
)
from mailsvc.crmstore.privacy import enforce_retention, erase
from mailsvc.mail import Envelope, RawMail, Role
from tests.conftest import BCC, SALES, SUPPORT, base_settings
from tests.integration.test_cli import mailsvc

MAX = "max.muster@kunde.example"
PRIVATE = "m.muster@privat.example"
OTHER = "erika@andere.example"
USER = "anna@crm.example"


def mail(sender: str, to: str, subject: str, body: str, *, cc: str | None = None,
         name: str = "Max Muster", attachment: bytes | None = None, mid: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"{name} <{sender}>"
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{mid or subject.replace(' ', '.')}@mail.example>"
    msg.set_content(body)
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="pdf",
                           filename="vertrag.pdf")
    return msg.as_bytes()


async def submit(services: Services, data: bytes, rcpt: str, role: Role,
                 sender: str | None = None) -> int:
    outcome = await services.pipeline.submit(RawMail(data, Envelope(sender, (rcpt,), role)))
    assert outcome.email_id is not None, outcome
    return outcome.email_id


@dataclass
class World:
    contact: int
    account: int
    ticket_mail: int
    private_mail: int
    cc_mail: int
    other_mail: int
    lead_mail: int


async def build(services: Services) -> World:
    async with services.sessions() as session, session.begin():
        user = await crm.create_user(session, USER, "Anna")
        account = await crm.create_account(session, "Kunde GmbH", ["kunde.example"],
                                           owner_id=user.id)
        contact = await crm.create_contact(session, "Muster", MAX, first_name="Max",
                                           account_id=account.id, aliases=[PRIVATE],
                                           phone="+49 30 1234")
        await crm.create_opportunity(session, "Rahmenvertrag", account_id=account.id,
                                     contact_id=contact.id)
        ids = (account.id, contact.id)
    world = World(
        contact=ids[1], account=ids[0],
        ticket_mail=await submit(services, mail(MAX, SUPPORT, "Drucker kaputt",
                                                "Mein Drucker druckt nicht. Max",
                                                attachment=b"%PDF secret"), SUPPORT, "support",
                                 sender=MAX),
        private_mail=await submit(services, mail(PRIVATE, BCC, "Privat", "Meine Privatnummer"),
                                  BCC, "bcc", sender=PRIVATE),
        cc_mail=await submit(services, mail(USER, BCC, "Angebot", "Anbei das Angebot",
                                            cc=f"Max <{MAX}>", name="Anna"), BCC, "bcc",
                             sender=USER),
        other_mail=await submit(services, mail(OTHER, SALES, "Anfrage", "Ich interessiere mich",
                                               name="Erika"), SALES, "sales", sender=OTHER),
        lead_mail=0,
    )
    return world


async def count(services: Services, stmt: Any) -> int:
    async with services.sessions() as session:
        return int(await session.scalar(stmt) or 0)


async def pending_text(services: Services) -> str:
    async with services.sessions() as session:
        rows = await session.scalars(select(OutboxEvent).where(OutboxEvent.sent_at.is_(None)))
        return json.dumps([[r.type, r.data] for r in rows], ensure_ascii=False).lower()


async def test_erasing_a_contact_removes_their_mail_data_and_pending_events(
    services: Services,
) -> None:
    world = await build(services)
    assert MAX in await pending_text(services)
    before_other = await pending_text(services)
    assert OTHER in before_other

    async with services.sessions() as session, session.begin():
        dry = await erase(session, contact_id=world.contact, dry_run=True)
    assert dry.erasure_id is None
    assert dry.counts["emails"] == 3 and dry.counts["attachments"] == 1
    assert dry.counts["contacts"] == 1 and dry.counts["addresses"] == 2
    assert dry.counts["tickets"] == 1 and dry.counts["pending_events"] >= 3
    assert await count(services, select(func.count()).select_from(Contact)) == 1
    assert MAX in await pending_text(services)  # a dry run changes nothing
    assert await count(services, select(func.count()).select_from(Erasure)) == 0

    async with services.sessions() as session, session.begin():
        report = await erase(session, contact_id=world.contact, actor="cli")
    assert sorted(report.emails) == sorted([world.ticket_mail, world.private_mail,
                                            world.cc_mail])
    assert report.counts == dry.counts

    async with services.sessions() as session:
        assert await session.get(Contact, world.contact) is None
        assert list(await session.scalars(select(ContactEmail))) == []
        for email_id in report.emails:
            row = await session.get(Email, email_id)
            assert row is not None
            assert row.raw == b"" and row.text_body == "" and row.html_body == ""
            assert row.headers == [] and row.subject == "" and row.reply_text is None
            assert row.content_removed_at is not None and "erased" in row.notes
            text = json.dumps([row.from_email, row.from_name, row.to, row.cc, row.reply_to,
                               row.envelope_from, row.envelope_to]).lower()
            assert MAX not in text and PRIVATE not in text and "muster" not in text
        cc_mail = await session.get(Email, world.cc_mail)
        assert cc_mail is not None and cc_mail.from_email == USER  # the sender is not erased
        assert await session.scalar(select(func.count()).select_from(EmailAttachment)) == 0
        other = await session.get(Email, world.other_mail)
        assert other is not None and other.raw and other.from_email == OTHER
        ticket = (await session.scalars(select(Ticket))).one()
        assert ticket.requester_email is None and ticket.requester_name == "[erased]"
        assert ticket.contact_id is None and "Drucker druckt" not in ticket.description
        for update in await session.scalars(select(TicketUpdate)):
            assert MAX not in (update.author or "") and "Drucker druckt" not in update.body
        for activity in await session.scalars(select(Activity).where(
                Activity.email_id.in_(report.emails))):
            assert activity.subject == "E-mail [erased]" and activity.contact_id is None
        audit = (await session.scalars(select(Erasure))).one()
        assert audit.kind == "erase" and audit.actor == "cli" and audit.counts == report.counts
        assert "@" not in json.dumps(audit.counts)
        erased_event = (await session.scalars(select(OutboxEvent).where(
            OutboxEvent.type == "privacy.erased"))).one()
        assert erased_event.subject == f"erasure/{audit.id}"
        assert erased_event.data["contact_ids"] == [world.contact]
        assert sorted(erased_event.data["email_ids"]) == sorted(report.emails)
    pending = await pending_text(services)
    for leak in (MAX, PRIVATE, "mein drucker druckt", "meine privatnummer", "max muster"):
        assert leak not in pending, leak
    assert OTHER in pending and "erika" in pending  # other people's events stay as they were

    async with services.sessions() as session, session.begin():
        again = await erase(session, address=MAX)
    assert again.counts["contacts"] == 0 and again.counts["emails"] == 0  # nothing left


async def test_erasing_an_address_clears_a_lead_and_quarantined_mail(services: Services) -> None:
    lead_from = "neu@interessent.example"
    await submit(services, mail(lead_from, SALES, "Preise", "Was kostet das?", name="Nina Neu"),
                 SALES, "sales", sender=lead_from)
    keep = await submit(services, mail(OTHER, SALES, "Anfrage", "Hallo", name="Erika"), SALES,
                        "sales", sender=OTHER)
    async with services.sessions() as session, session.begin():
        session.add(QuarantinedMail(dedup_key="q1", reason="unparseable", raw=b"From: x",
                                    size=7, envelope_from=lead_from, envelope_to=[SALES],
                                    intake_role="sales"))
    async with services.sessions() as session, session.begin():
        report = await erase(session, address="  Neu@Interessent.example ")
    assert report.counts["inbox_leads"] == 1 and report.counts["quarantined"] == 1
    assert report.counts["contacts"] == 0
    async with services.sessions() as session:
        lead = (await session.scalars(select(InboxLead).where(
            InboxLead.id.in_(report.inbox_leads)))).one()
        assert lead.email is None and lead.open_key is None and lead.first_name is None
        assert lead.last_name == "[erased]"
        quarantined = (await session.scalars(select(QuarantinedMail))).one()
        assert quarantined.raw == b"" and quarantined.envelope_from is None
        kept = await session.get(Email, keep)
        assert kept is not None and kept.raw
    # The same address writes again: a new lead, as for anyone new.
    again = await services.pipeline.submit(RawMail(
        mail(lead_from, SALES, "Nochmal", "Hallo?", name="Nina Neu"),
        Envelope(lead_from, (SALES,), "sales")))
    assert again.kind == "lead_created"


async def test_erase_refuses_an_unknown_contact_and_an_unclear_person(
    services: Services,
) -> None:
    from mailsvc.errors import NotFound, RuleViolation

    async with services.sessions() as session:
        with pytest.raises(NotFound):
            await erase(session, contact_id=999)
        with pytest.raises(RuleViolation):
            await erase(session, contact_id=1, address=MAX)
        with pytest.raises(RuleViolation):
            await erase(session, address="not an address")
        with pytest.raises(RuleViolation, match="intake address"):
            await erase(session, address=BCC.upper(), protected=[BCC])
        await crm.create_user(session, USER, "Anna")
        with pytest.raises(RuleViolation, match="user"):
            await erase(session, address=USER)


async def test_the_api_erases_for_an_administrator(services: Services) -> None:
    world = await build(services)
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test/api/v1") as c:
        dry = await c.post("/privacy/erasures", json={"contact_id": world.contact,
                                                       "dry_run": True})
        assert dry.status_code == 200, dry.text
        assert dry.json()["counts"]["emails"] == 3 and dry.json()["erasure_id"] is None
        done = await c.post("/privacy/erasures", json={"contact_id": world.contact})
        assert done.status_code == 201, done.text
        assert done.json()["erasure_id"] and done.json()["counts"]["contacts"] == 1
        trail = (await c.get("/privacy/erasures")).json()
        assert trail["total"] == 1 and trail["items"][0]["actor"] == "api"
        missing = await c.post("/privacy/erasures", json={"contact_id": world.contact})
        assert missing.status_code == 404
        both = await c.post("/privacy/erasures", json={"contact_id": 1, "address": MAX})
        assert both.status_code == 422
        assert (await c.get(f"/contacts/{world.contact}")).status_code == 404


async def test_retention_removes_old_content_only(services: Services) -> None:
    world = await build(services)
    old = utcnow() - timedelta(days=40)
    async with services.sessions() as session, session.begin():
        for email_id in (world.ticket_mail, world.private_mail):
            row = await session.get(Email, email_id)
            assert row is not None
            row.received_at = old
        session.add(QuarantinedMail(dedup_key="q-old", reason="x", raw=b"old bytes", size=9,
                                    intake_role="bcc", received_at=old))
    unset = await enforce_retention(services.sessions, services.settings.privacy)
    assert unset.emails == 0 and unset.cutoff is None
    settings = base_settings(services.settings.database_url, retention_days=30)
    report = await enforce_retention(services.sessions, settings.privacy, batch=1)
    assert report.emails == 2 and report.attachments == 1 and report.quarantined == 1
    again = await enforce_retention(services.sessions, settings.privacy)
    assert again.emails == 0  # done already
    async with services.sessions() as session:
        for email_id in (world.ticket_mail, world.private_mail):
            row = await session.get(Email, email_id)
            assert row is not None and row.raw == b"" and row.text_body == ""
            assert row.content_removed_at is not None and row.subject  # metadata stays
        fresh = await session.get(Email, world.cc_mail)
        assert fresh is not None and fresh.raw and fresh.content_removed_at is None
        audit = (await session.scalars(select(Erasure))).one()
        assert audit.kind == "retention" and audit.counts["emails"] == 2


def test_the_erase_and_retention_commands(database_url: str) -> None:
    from tests.integration.test_cli import EXAMPLES, lines, seed

    demo = seed(database_url)
    contact = demo["contacts"][0]
    result = mailsvc(database_url, "ingest", "-",
                     stdin=(EXAMPLES / "customer-reply.eml").read_bytes())
    assert result.returncode == 0, result.stderr.decode()
    assert lines(result)[0]["email_id"]
    usage = mailsvc(database_url, "erase")
    assert usage.returncode == 64 and b"--contact" in usage.stderr
    missing = mailsvc(database_url, "erase", "--contact", "9999")
    assert missing.returncode == 66 and b"Traceback" not in missing.stderr
    dry = mailsvc(database_url, "erase", "--contact", str(contact["id"]), "--dry-run")
    assert dry.returncode == 0, dry.stderr.decode()
    counted = json.loads(dry.stdout)
    assert counted["dry_run"] and counted["counts"]["contacts"] == 1
    done = mailsvc(database_url, "erase", "--contact", str(contact["id"]))
    assert done.returncode == 0, done.stderr.decode()
    erased = json.loads(done.stdout)
    assert erased["erasure_id"] and erased["counts"] == counted["counts"]
    kept = mailsvc(database_url, "retention")
    assert kept.returncode == 0 and json.loads(kept.stdout)["emails"] == 0
    assert b"MAILSVC_RETENTION_DAYS is not set" in kept.stderr
    ran = mailsvc(database_url, "retention", MAILSVC_RETENTION_DAYS="1")
    assert ran.returncode == 0 and json.loads(ran.stdout)["cutoff"]
