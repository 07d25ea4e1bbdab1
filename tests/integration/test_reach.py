"""Reach: per-record addresses (bcc+OPP-12@), the loop guard and never-log rules, end to end on
SQLite and PostgreSQL with real SMTP clients and the real pipeline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email.message import EmailMessage

import aiosmtplib
import httpx
import pytest
from sqlalchemy import func, select

from mailsvc.bootstrap import Services, open_services
from mailsvc.config import Settings
from mailsvc.crmstore.models import Email, EmailLink, Ticket, TicketUpdate
from mailsvc.ingest.outcome import Outcome
from mailsvc.ingest.reprocess import Selection, reprocess
from mailsvc.ingest.smtp import start_smtp
from mailsvc.mail import Envelope, RawMail
from tests.conftest import BCC, SALES, SUPPORT, check_event_contract
from tests.integration.test_linking_scenarios import OWNERS, build_world, mail
from tests.support.api import ok
from tests.support.waiting import undecided, wait_for

CARLA = "Carla Customer <carla@acme.example>"
ANNA = "Anna Seller <anna@ours.example>"


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Services, int]]:
    """Pipeline with its decide loop and the SMTP intake on a free port."""
    async with open_services(settings, migrate=False) as services:
        await services.pipeline.start()
        server = await start_smtp(services.pipeline, settings.smtp)
        try:
            yield services, server.sockets[0].getsockname()[1]
        finally:
            server.close()
            await server.wait_closed()
            await services.pipeline.stop()


async def stored(services: Services, message_id: str) -> Email | None:
    async with services.sessions() as session:
        return await session.scalar(select(Email).where(Email.message_id == message_id))


async def links_of(services: Services, email_id: int) -> dict[str, int]:
    async with services.sessions() as session:
        rows = await session.scalars(select(EmailLink).where(EmailLink.email_id == email_id))
        return {str(link.target_type): link.target_id for link in rows}


async def submit(services: Services, rcpt: str, role: str, data: bytes,
                 source: str = "smtp") -> Outcome:
    envelope = Envelope("sender@mail.example", (rcpt,), role, source)  # type: ignore[arg-type]
    return await services.pipeline.submit(RawMail(data, envelope))


# ------------------------------------------------------------------ record addresses


async def test_a_record_address_is_accepted_at_rcpt_and_links_its_record(
    make_settings: Callable[..., Settings],
) -> None:
    async with running(make_settings(smtp_port=0, **OWNERS)) as (services, port):
        async with services.sessions() as session, session.begin():
            ids = await build_world(session)
        opp = ids["opp_open"]
        message = EmailMessage()
        message["From"] = ANNA
        message["To"] = "Gordon <gordon@globex.example>"
        message["Subject"] = "Notes from the call"
        message["Message-ID"] = "<plus-1@ours.example>"
        message.set_content("As discussed.\n")
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
            code, _ = await client.mail("anna@ours.example")
            assert code == 250
            code, reply = await client.rcpt(f"bcc+OPP-{opp}@crm.example")
            assert code == 250, reply
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                await client.rcpt(f"nobody+OPP-{opp}@crm.example")
            assert refused.value.code == 550
            code, reply = await client.data(bytes(message))
            assert code == 250, reply

        email = await wait_for(lambda: stored(services, "plus-1@ours.example"), within=30,
                               what="the mail decided")
        assert (email.rule, email.intake_role, email.direction) == (
            "record_address", "bcc", "outgoing"
        )
        assert email.envelope_to == [f"bcc+opp-{opp}@crm.example"]
        assert (await links_of(services, email.id))["opportunity"] == opp

        # Reprocessing decides from the stored envelope: the same record, nothing changes.
        counts = await reprocess(services.pipeline, services.sessions, Selection(ids=(email.id,)))
        assert counts == {"unchanged": 1}
        await check_event_contract(services)


async def test_a_ticket_address_on_support_logs_the_mail_on_the_ticket(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_services(make_settings(**OWNERS), migrate=False) as services:
        async with services.sessions() as session, session.begin():
            ids = await build_world(session)
        ticket = ids["t_open"]
        data = mail("Gordon Buyer <gordon@globex.example>", f"support+tck-{ticket}@crm.example",
                    "Still broken", "It happened again.\n")
        outcome = await submit(services, f"support+tck-{ticket}@crm.example", "support", data)
        assert (outcome.kind, outcome.rule, outcome.links["ticket"]) == (
            "ticket_updated", "record_address", ticket
        )
        async with services.sessions() as session:
            logged = await session.scalar(
                select(func.count()).select_from(TicketUpdate)
                .where(TicketUpdate.ticket_id == ticket)
            )
            assert logged == 1


async def test_an_unknown_record_address_falls_through_with_a_note(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_services(make_settings(**OWNERS), migrate=False) as services:
        async with services.sessions() as session, session.begin():
            ids = await build_world(session)
        data = mail(CARLA, "sales+OPP-99999@crm.example", "Question")
        outcome = await submit(services, "sales+opp-99999@crm.example", "sales", data)
        assert (outcome.kind, outcome.rule) == ("linked", "single_open_record")
        assert outcome.links["opportunity"] == ids["opp_open"]
        assert outcome.notes == ("unknown_address:OPP-99999",)


async def test_the_address_wins_over_another_record_in_the_subject(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_services(make_settings(**OWNERS), migrate=False) as services:
        async with services.sessions() as session, session.begin():
            ids = await build_world(session)
        won = ids["opp_won"]
        data = mail(CARLA, BCC, f"Re: OPP-{ids['opp_open']}")
        outcome = await submit(services, f"bcc+OPP-{won}@crm.example", "bcc", data)
        assert (outcome.rule, outcome.links["opportunity"]) == ("record_address", won)
        assert outcome.notes == (f"ignored_id:OPP-{ids['opp_open']}", f"closed_record:OPP-{won}")


async def test_imap_reads_the_record_address_from_delivered_to(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_services(make_settings(**OWNERS), migrate=False) as services:
        async with services.sessions() as session, session.begin():
            ids = await build_world(session)
        opp = ids["opp_globex"]
        data = mail("Gordon Buyer <gordon@globex.example>", "sales@crm.example", "Order",
                    headers={"Delivered-To": f"sales+OPP-{opp}@crm.example"})
        outcome = await submit(services, "sales@crm.example", "sales", data, source="imap")
        assert (outcome.rule, outcome.links["opportunity"]) == ("record_address", opp)


async def test_each_record_shows_its_address(
    services: Services, client: httpx.AsyncClient
) -> None:
    async with services.sessions() as session, session.begin():
        ids = await build_world(session)
    body = ok(await client.get(f"/opportunities/{ids['opp_open']}"))
    assert body["mail_address"] == f"bcc+OPP-{ids['opp_open']}@crm.example"
    body = ok(await client.get(f"/tickets/{ids['t_open']}"))
    assert body["mail_address"] == f"support+TCK-{ids['t_open']}@crm.example"
    assert SUPPORT == "support@crm.example"


async def test_accepted_mail_keeps_its_record_address_until_decided(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_services(make_settings(**OWNERS), migrate=False) as services:
        async with services.sessions() as session, session.begin():
            ids = await build_world(session)
        rcpt = f"sales+opp-{ids['opp_open']}@crm.example"
        data = mail("Someone <someone@elsewhere.example>", "sales@crm.example", "Hello")
        envelope = Envelope(None, (rcpt,), "sales", "smtp")  # type: ignore[arg-type]
        accepted = await services.pipeline.accept_many([RawMail(data, envelope)])
        [row] = await services.pipeline.writer.records([accepted[0].outcome.intake_id or 0])
        assert row.rcpt_tos == [rcpt] and row.role == "sales"
        [decided] = await services.pipeline.decide_accepted(accepted)
        assert (decided.rule, decided.links["opportunity"]) == ("record_address", ids["opp_open"])


# ------------------------------------------------------------------ the loop guard


def trips() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("mailsvc_loop_guard_trips_total") or 0.0


def burst(
    sender: str, to: str, n: int, subject: str = "Automatic notice", tag: str = "b"
) -> list[bytes]:
    return [mail(sender, to, subject, f"Notice {i}.\n", message_id=f"<{tag}{i}@loop.example>")
            for i in range(n)]


async def test_a_burst_of_thirty_in_one_batch_trips_at_the_twenty_first(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_services(make_settings(**OWNERS), migrate=False) as services:
        async with services.sessions() as session, session.begin():
            await build_world(session)
        before = trips()
        envelope = Envelope("bot@loop.example", (SUPPORT,), "support", "smtp")  # type: ignore[arg-type]
        accepted = await services.pipeline.accept_many(
            [RawMail(data, envelope) for data in burst("Bot <bot@loop.example>", SUPPORT, 30)]
        )
        outcomes = await services.pipeline.decide_accepted(accepted)  # one decide batch

        assert [o.rule for o in outcomes] == ["new_ticket"] * 20 + ["rate_limited"] * 10
        assert [o.kind for o in outcomes[20:]] == ["ignored"] * 10
        assert all(o.notes == ("rate_limited",) and o.automatic for o in outcomes[20:])
        assert trips() - before == 10
        async with services.sessions() as session:
            tickets = await session.scalar(
                select(func.count()).select_from(Ticket).where(
                    Ticket.requester_email == "bot@loop.example")
            )
            assert tickets == 20
            kept = await session.scalar(
                select(func.count()).select_from(Email).where(Email.rule == "rate_limited")
            )
            assert kept == 10  # stored and visible

        # The next batch is counted with what is stored: still held back.
        [later] = await services.pipeline.decide_accepted(await services.pipeline.accept_many(
            [RawMail(burst("Bot <bot@loop.example>", SUPPORT, 1, tag="c")[0], envelope)]
        ))
        assert later.rule == "rate_limited"
        await check_event_contract(services)


async def test_a_loop_on_a_ticket_stops_logging_and_reopening(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(loop_guard_max=3, **OWNERS)
    async with open_services(settings, migrate=False) as services:
        async with services.sessions() as session, session.begin():
            ids = await build_world(session)
        ticket = ids["t_open"]
        mails = burst("Gordon Buyer <gordon@globex.example>", SUPPORT, 5, f"Re: [TCK-{ticket}]")
        items = [await services.pipeline.prepare(RawMail(data, Envelope(
            None, (SUPPORT,), "support", "smtp"))) for data in mails]  # type: ignore[arg-type]
        outcomes = await services.pipeline.process(items)

        assert [o.rule for o in outcomes] == ["subject_id"] * 3 + ["rate_limited"] * 2
        assert [o.kind for o in outcomes] == ["ticket_updated"] * 3 + ["linked"] * 2
        assert all(o.links["ticket"] == ticket for o in outcomes)
        async with services.sessions() as session:
            logged = await session.scalar(
                select(func.count()).select_from(TicketUpdate)
                .where(TicketUpdate.ticket_id == ticket)
            )
            assert logged == 3


async def test_allowed_senders_and_other_targets_are_not_held_back(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(loop_guard_max=2, loop_guard_allow="monitor.example", **OWNERS)
    async with open_services(settings, migrate=False) as services:
        async with services.sessions() as session, session.begin():
            ids = await build_world(session)
        envelope = Envelope(None, (SUPPORT,), "support", "smtp")  # type: ignore[arg-type]
        allowed = burst("Monitor <alerts@eu.monitor.example>", SUPPORT, 4, tag="m")
        items = [await services.pipeline.prepare(RawMail(d, envelope)) for d in allowed]
        assert "rate_limited" not in [o.rule for o in await services.pipeline.process(items)]
        # One sender, three different records: each record has its own count.
        opps = [ids["opp_open"], ids["opp_won"], ids["opp_lost"]]
        per_record = [mail(CARLA, BCC, f"OPP-{o}", message_id=f"<r{o}@acme.example>")
                      for o in opps]
        bcc = Envelope(None, (BCC,), "bcc", "smtp")  # type: ignore[arg-type]
        items = [await services.pipeline.prepare(RawMail(d, bcc)) for d in per_record]
        assert [o.rule for o in await services.pipeline.process(items)] == ["subject_id"] * 3


# ------------------------------------------------------------------ never-log rules


def dropped() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("mailsvc_never_log_dropped_total") or 0.0


async def test_never_log_rules_are_managed_through_the_api(
    services: Services, client: httpx.AsyncClient
) -> None:
    rule = ok(await client.post("/never-log", json={"pattern": "  HR@Example.COM "}), 201)
    assert (rule["pattern"], rule["kind"]) == ("hr@example.com", "address")
    domain = ok(await client.post("/never-log", json={"pattern": "@Legal.Example"}), 201)
    assert (domain["pattern"], domain["kind"]) == ("legal.example", "domain")

    again = await client.post("/never-log", json={"pattern": "hr@example.com"})
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")
    for bad in ["", "not an address", "hr@", "example", "a@b@c.example", "x" * 400]:
        answer = await client.post("/never-log", json={"pattern": bad})
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")

    listed = ok(await client.get("/never-log"))
    assert [r["pattern"] for r in listed] == ["hr@example.com", "legal.example"]
    ok(await client.delete(f"/never-log/{rule['id']}"), 204)
    assert [r["pattern"] for r in ok(await client.get("/never-log"))] == ["legal.example"]
    missing = await client.delete(f"/never-log/{rule['id']}")
    assert missing.status_code == 404


async def nothing_stored(services: Services) -> None:
    from mailsvc.crmstore.models import OutboxEvent, QuarantinedMail

    async with services.sessions() as session:
        for model in (Email, QuarantinedMail, OutboxEvent, Ticket):
            assert await session.scalar(select(func.count()).select_from(model)) == 0, model
    assert await undecided(services) == 0


async def test_mail_from_a_never_log_address_is_answered_250_and_not_stored(
    make_settings: Callable[..., Settings],
) -> None:
    from mailsvc.crmstore.models import NeverLogRule

    async with running(make_settings(smtp_port=0)) as (services, port):
        async with services.sessions() as session, session.begin():
            session.add_all([NeverLogRule(pattern="hr@acme.example"),
                             NeverLogRule(pattern="legal.example")])
        before = dropped()
        sent = [
            # From the address, from a subdomain of the domain, and one copying the domain.
            mail("HR <hr@acme.example>", SUPPORT, "Your contract", message_id="<nl1@acme>"),
            mail("Counsel <x@eu.legal.example>", SUPPORT, "Privileged", message_id="<nl2@l>"),
            mail(CARLA, SUPPORT, "Question", cc=["Lawyer <anne@legal.example>"],
                 message_id="<nl3@acme>"),
        ]
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as smtp:
            for data in sent:
                errors, reply = await smtp.sendmail("someone@outside.example", [SUPPORT], data)
                assert not errors and reply.startswith("2.0.0 Ok: queued"), reply

        async def all_decided() -> bool:
            return not await undecided(services)

        await wait_for(all_decided, within=30, what="the intake emptied")
        await nothing_stored(services)
        assert dropped() - before == 3


async def test_a_dropped_mail_reports_dropped_and_others_of_its_batch_are_stored(
    make_settings: Callable[..., Settings],
) -> None:
    from mailsvc.crmstore.models import NeverLogRule

    async with open_services(make_settings(**OWNERS), migrate=False) as services:
        async with services.sessions() as session, session.begin():
            await build_world(session)
            session.add(NeverLogRule(pattern="private.example"))
        envelope = Envelope(None, (BCC,), "bcc", "imap")  # type: ignore[arg-type]
        raws = [
            RawMail(mail(ANNA, "Doc <doc@private.example>", "Appointment"), envelope),
            RawMail(mail(ANNA, CARLA, "Offer"), envelope),
        ]
        first, second = await services.pipeline.accept_and_decide(raws)
        assert (first.kind, first.rule, first.email_id) == ("dropped", "never_log", None)
        assert (second.kind, second.rule) == ("linked", "single_open_record")
        async with services.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(Email)) == 1
        assert await undecided(services) == 0


async def test_reprocess_unlinks_stored_mail_a_new_rule_names_but_keeps_it(
    make_settings: Callable[..., Settings],
) -> None:
    from mailsvc.crmstore.models import NeverLogRule

    async with open_services(make_settings(**OWNERS), migrate=False) as services:
        async with services.sessions() as session, session.begin():
            await build_world(session)
        outcome = await submit(services, BCC, "bcc", mail(ANNA, CARLA, "Offer"))
        assert outcome.kind == "linked" and outcome.email_id is not None
        async with services.sessions() as session, session.begin():
            session.add(NeverLogRule(pattern="acme.example"))
        counts = await reprocess(services.pipeline, services.sessions,
                                 Selection(ids=(outcome.email_id,)))
        assert counts == {"relinked": 1}
        email = await stored(services, outcome.message_id or "")
        assert email is not None and (email.rule, email.outcome) == ("never_log", "ignored")
        assert await links_of(services, email.id) == {}
        await check_event_contract(services)


async def test_a_loop_on_sales_keeps_one_lead_and_holds_back_from_the_twenty_first(
    make_settings: Callable[..., Settings],
) -> None:
    from mailsvc.crmstore.models import Activity, InboxLead

    async with open_services(make_settings(**OWNERS), migrate=False) as services:
        envelope = Envelope(None, (SALES,), "sales", "smtp")  # type: ignore[arg-type]
        mails = burst("Robot <robot@gmail.com>", SALES, 25, tag="s")
        outcomes = await services.pipeline.process(
            [await services.pipeline.prepare(RawMail(data, envelope)) for data in mails]
        )
        assert [o.rule for o in outcomes] == (
            ["new_lead"] + ["open_lead"] * 19 + ["rate_limited"] * 5
        )
        lead = outcomes[0].links["inbox_lead"]
        assert {o.links["inbox_lead"] for o in outcomes} == {lead}
        assert all(o.kind == "linked" and o.automatic for o in outcomes[20:])
        async with services.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(InboxLead)) == 1
            on_timeline = await session.scalar(select(func.count()).select_from(Activity))
            assert on_timeline == 20  # held-back mail is not on the timeline
