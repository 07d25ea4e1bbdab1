"""`mailsvc reprocess`: stored mail decided again from its raw bytes; only links change."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.bootstrap import Services, open_services
from mailsvc.config import Settings
from mailsvc.crmstore import services as crm
from mailsvc.crmstore.models import (
    Account,
    AccountDomain,
    Activity,
    Contact,
    ContactEmail,
    Email,
    EmailLink,
    InboxLead,
    LinkTarget,
    Opportunity,
    OpportunityStatus,
    OutboxEvent,
    Ticket,
    TicketStatus,
    TicketUpdate,
    User,
    UserEmail,
    UserRole,
)
from mailsvc.ingest.outcome import Outcome
from mailsvc.ingest.reprocess import Reprocessed, Selection, reprocess
from mailsvc.mail import Envelope, RawMail, Role
from tests.conftest import SALES, SUPPORT
from tests.integration.test_cli import lines, mailsvc

_ids = itertools.count(1)
ROLE_ADDRESS = {"sales": SALES, "support": SUPPORT}
COUNTED = (Email, EmailLink, InboxLead, Ticket, TicketUpdate, Activity, OutboxEvent, Contact)


def message(frm: str, to: str, subject: str, body: str = "Hello.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<r{next(_ids)}@mail.example>"
    msg.set_content(body)
    return bytes(msg)


async def submit(svc: Services, role: Role, data: bytes) -> Outcome:
    envelope = Envelope("sender@mail.example", (ROLE_ADDRESS[role],), role, "smtp")
    return await svc.pipeline.submit(RawMail(data, envelope))


async def run(svc: Services, selection: Selection) -> list[Reprocessed]:
    results: list[Reprocessed] = []
    await reprocess(svc.pipeline, svc.sessions, selection, on_batch=results.extend)
    return results


async def counts(session: AsyncSession) -> dict[str, int]:
    return {
        model.__name__: int(await session.scalar(select(func.count()).select_from(model)) or 0)
        for model in COUNTED
    }


async def add_world(session: AsyncSession) -> dict[str, int]:
    """A sales user, the account Acme (acme.example) with its owner; no contacts yet."""
    anna = User(email="anna@ours.example", name="Anna", role=UserRole.SALES,
                addresses=[UserEmail(email="anna@ours.example")])
    session.add(anna)
    await session.flush()
    acme = Account(name="Acme GmbH", owner_id=anna.id,
                   domains=[AccountDomain(domain="acme.example")])
    session.add(acme)
    await session.flush()
    return {"anna": anna.id, "acme": acme.id}


async def add_contact(session: AsyncSession, email: str, account_id: int | None,
                      owner_id: int | None) -> int:
    contact = Contact(first_name="Carla", last_name="Customer", email=email,
                      account_id=account_id, owner_id=owner_id,
                      addresses=[ContactEmail(email=email)])
    session.add(contact)
    await session.flush()
    return contact.id


def link_set(result: Reprocessed) -> set[tuple[str, int, str]]:
    return {(r.target_type, r.target_id, r.rule) for r in result.links}


async def test_an_ignored_mail_is_linked_once_its_contact_exists(
    make_settings: Callable[..., Settings],
) -> None:
    # Stored while acme.example was wrongly listed as our own domain: no counterparty, ignored.
    async with open_services(make_settings(internal_domains="acme.example"),
                             migrate=False) as svc:
        async with svc.sessions() as session, session.begin():
            ids = await add_world(session)
        stored = await submit(svc, "sales", message("Carla <carla@acme.example>", SALES,
                                                    "Pricing question"))
        assert stored.kind == "ignored" and stored.email_id is not None
    async with open_services(make_settings(), migrate=False) as svc:
        async with svc.sessions() as session, session.begin():
            carla = await add_contact(session, "carla@acme.example", ids["acme"], ids["anna"])
        async with svc.sessions() as session:
            before = await counts(session)
            seq = int(await session.scalar(select(func.max(OutboxEvent.seq))) or 0)

        [result] = await run(svc, Selection(unlinked=True))

        assert result.email_id == stored.email_id
        assert result.result == "relinked" and result.rule == "address"
        assert result.previous_links == ()
        assert link_set(result) == {("account", ids["acme"], "address"),
                                    ("contact", carla, "address"),
                                    ("owner", ids["anna"], "address")}
        async with svc.sessions() as session:
            email = await session.get(Email, stored.email_id)
            assert email is not None
            assert (email.outcome, email.rule) == ("linked", "address")
            [event] = await session.scalars(select(OutboxEvent).where(OutboxEvent.seq > seq))
            assert event.type == "email.relinked" and event.subject == f"email/{email.id}"
            assert event.data["email_id"] == email.id and event.data["rule"] == "address"
            assert event.data["previous_links"] == []
            assert {(li["target_type"], li["target_id"]) for li in event.data["links"]} == {
                ("account", ids["acme"]), ("contact", carla), ("owner", ids["anna"])}
            [activity] = await session.scalars(
                select(Activity).where(Activity.email_id == email.id))
            assert (activity.contact_id, activity.account_id) == (carla, ids["acme"])
            after = await counts(session)
            assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {
                "EmailLink": 3, "Activity": 1, "OutboxEvent": 1}

        # A second run finds nothing to change: it writes nothing and records no event.
        [again] = await run(svc, Selection(ids=(stored.email_id,)))
        assert again.result == "unchanged" and again.links == result.links
        async with svc.sessions() as session:
            assert await counts(session) == after


async def test_a_manual_link_survives_reprocessing(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_services(make_settings(), migrate=False) as svc:
        async with svc.sessions() as session, session.begin():
            ids = await add_world(session)
            carla = await add_contact(session, "carla@acme.example", ids["acme"], ids["anna"])
            ticket = Ticket(subject="Old case", status=TicketStatus.OPEN, contact_id=carla,
                            account_id=ids["acme"], owner_id=ids["anna"])
            session.add(ticket)
            await session.flush()
            ticket_id = ticket.id
        stored = await submit(svc, "sales", message("Carla <carla@acme.example>", SALES, "Hi"))
        assert (stored.kind, stored.rule) == ("linked", "address")
        assert stored.email_id is not None
        async with svc.sessions() as session, session.begin():
            await crm.link_email(session, stored.email_id, LinkTarget.TICKET, ticket_id)
            # Data change: Carla now has exactly one open opportunity.
            opportunity = Opportunity(title="Deal", status=OpportunityStatus.OPEN,
                                      contact_id=carla, account_id=ids["acme"],
                                      owner_id=ids["anna"])
            session.add(opportunity)
            await session.flush()
            opportunity_id = opportunity.id

        [result] = await run(svc, Selection(everything=True))

        assert (result.result, result.rule) == ("relinked", "single_open_record")
        assert ("ticket", ticket_id, "manual") in {
            (r.target_type, r.target_id, r.rule) for r in result.previous_links}
        assert link_set(result) == {
            ("account", ids["acme"], "single_open_record"),
            ("contact", carla, "single_open_record"),
            ("owner", ids["anna"], "single_open_record"),
            ("opportunity", opportunity_id, "single_open_record"),
            ("ticket", ticket_id, "manual"),
        }
        async with svc.sessions() as session:
            rows = {(t, i, r) for t, i, r in await session.execute(
                select(EmailLink.target_type, EmailLink.target_id, EmailLink.rule)
                .where(EmailLink.email_id == stored.email_id))}
            assert (LinkTarget.TICKET, ticket_id, "manual") in rows and len(rows) == 5
            # Reprocessing appends nothing to the manually linked ticket.
            assert await session.scalar(select(func.count()).select_from(TicketUpdate)) == 0


async def test_freshly_stored_mail_is_unchanged_and_nothing_is_written(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_services(make_settings(sales_owner="anna@ours.example"),
                             migrate=False) as svc:
        async with svc.sessions() as session, session.begin():
            ids = await add_world(session)
            await add_contact(session, "carla@acme.example", ids["acme"], ids["anna"])
        outcomes = [
            await submit(svc, "sales", message("Carla <carla@acme.example>", SALES, "Hi")),
            await submit(svc, "sales", message("New One <new@startup.example>", SALES, "Offer")),
            await submit(svc, "support", message("Stranger <who@else.example>", SUPPORT, "Help")),
        ]
        assert [o.kind for o in outcomes] == ["linked", "lead_created", "ticket_created"]
        ticket_mail = message("Stranger <who@else.example>", SUPPORT,
                              f"Re: Help [TCK-{outcomes[2].links['ticket']}]")
        outcomes.append(await submit(svc, "support", ticket_mail))
        assert outcomes[3].kind == "ticket_updated"
        async with svc.sessions() as session:
            before = await counts(session)

        results = await run(svc, Selection(everything=True))

        assert [r.email_id for r in results] == [o.email_id for o in outcomes]
        assert [r.result for r in results] == ["unchanged"] * 4
        assert all(r.links == r.previous_links for r in results)
        async with svc.sessions() as session:
            assert await counts(session) == before


async def test_a_decision_that_would_create_a_lead_creates_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_services(make_settings(internal_domains="startup.example"),
                             migrate=False) as svc:
        async with svc.sessions() as session, session.begin():
            ids = await add_world(session)
        stored = await submit(svc, "sales", message("Ceo <ceo@startup.example>", SALES, "Offer"))
        assert stored.kind == "ignored" and stored.email_id is not None
    async with open_services(make_settings(sales_owner="anna@ours.example"),
                             migrate=False) as svc:
        async with svc.sessions() as session:
            before = await counts(session)
            seq = int(await session.scalar(select(func.max(OutboxEvent.seq))) or 0)

        [result] = await run(svc, Selection(unlinked=True))

        # Only what exists is linked (the sales owner); the lead is reported, not created.
        assert (result.result, result.rule) == ("would_create_lead", "new_lead")
        assert link_set(result) == {("owner", ids["anna"], "new_lead")}
        async with svc.sessions() as session:
            after = await counts(session)
            assert after["InboxLead"] == before["InboxLead"] == 0
            assert after["Ticket"] == before["Ticket"]
            types = list(await session.scalars(
                select(OutboxEvent.type).where(OutboxEvent.seq > seq)))
            assert types == ["email.relinked"]


async def test_failed_and_missing_mails_are_counted_and_the_run_goes_on(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_services(make_settings(), migrate=False) as svc:
        async with svc.sessions() as session, session.begin():
            await add_world(session)
        good = await submit(svc, "sales", message("Ceo <ceo@startup.example>", SALES, "Offer"))
        async with svc.sessions() as session, session.begin():
            email = await session.get(Email, good.email_id)
            assert email is not None
            email.raw = b"\x00\x01 not mail"  # only to provoke a parse failure
        results = await run(svc, Selection(ids=(9999, good.email_id or 0)))
        assert [(r.email_id, r.result) for r in results] == [
            (9999, "failed"), (good.email_id, "failed")]
        assert results[0].reason == "no stored e-mail with this id"
        assert results[1].reason and results[1].reason.startswith("unparseable")


def test_cli_without_a_selector_is_a_usage_error(database_url: str) -> None:
    for args in ([], ["--json"], ["--all", "1"]):
        result = mailsvc(database_url, "reprocess", *args)
        assert result.returncode == 64, (args, result.stderr.decode())
        assert b"--unlinked" in result.stderr and b"Traceback" not in result.stderr
        assert result.stdout == b""


def test_cli_json_prints_one_line_per_mail(database_url: str, tmp_path: Path) -> None:
    mail = tmp_path / "offer.eml"
    mail.write_bytes(message("New One <new@startup.example>", SALES, "Offer"))
    ingested = mailsvc(database_url, "ingest", "--to", SALES, str(mail))
    assert ingested.returncode == 0, ingested.stderr.decode()
    [outcome] = lines(ingested)
    assert outcome["outcome"] == "lead_created"

    result = mailsvc(database_url, "reprocess", "--all", "--json")
    assert result.returncode == 0, result.stderr.decode()
    [line] = lines(result)
    assert set(line) == {"email_id", "result", "rule", "links", "previous_links"}
    lead_link: dict[str, Any] = {"target_type": "inbox_lead",
                                 "target_id": outcome["inbox_lead"], "rule": "new_lead"}
    assert line == {"email_id": outcome["email_id"], "result": "unchanged", "rule": "open_lead",
                    "links": [lead_link], "previous_links": [lead_link]}

    summary = mailsvc(database_url, "reprocess", str(outcome["email_id"]), "--quiet")
    assert summary.returncode == 0, summary.stderr.decode()
    assert b"unchanged" in summary.stdout and b"would_create_ticket" in summary.stdout


def test_cli_store_unavailable_exits_75() -> None:
    result = mailsvc("postgresql+asyncpg://postgres@127.0.0.1:1/none", "reprocess", "--all")
    assert result.returncode == 75
    assert b"Traceback" not in result.stderr
