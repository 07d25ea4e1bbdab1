"""A group of mails costs a constant number of SQL statements, and mails of one group that depend
on each other come out as if they had arrived one by one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any

from prometheus_client import REGISTRY
from sqlalchemy import event, func, select

from mailsvc.bootstrap import Services, open_services
from mailsvc.config import Settings
from mailsvc.crmstore.models import (
    Activity,
    Contact,
    ContactEmail,
    Email,
    EmailLink,
    InboxLead,
    Opportunity,
    OutboxEvent,
    User,
    UserEmail,
)
from mailsvc.ingest.outcome import Outcome
from mailsvc.mail import Envelope, RawMail
from tests.conftest import BCC, SALES, _truncate_postgres, base_settings
from tests.support.waiting import wait_for

MAILS = 50
# Measured: 15 on SQLite (BEGIN included), 14 on PostgreSQL; one query per mail more fails this.
MAX_STATEMENTS = 35


def message(frm: str, to: str, subject: str, message_id: str, **headers: str) -> bytes:
    mail = EmailMessage()
    mail["From"] = frm
    mail["To"] = to
    mail["Subject"] = subject
    mail["Message-ID"] = message_id
    for name, value in headers.items():
        mail[name.replace("_", "-")] = value
    mail.set_content("Hello,\n\nsee below.\n")
    return bytes(mail)


@contextmanager
def statements(services: Services) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    engine = services.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


async def process(services: Services, role: str, rcpt: str, mails: list[bytes]) -> list[Outcome]:
    envelope = Envelope("sender@outside.example", (rcpt,), role, "smtp")  # type: ignore[arg-type]
    items = [await services.pipeline.prepare(RawMail(data, envelope)) for data in mails]
    return await services.pipeline.process(items)


async def test_a_group_of_fifty_linked_mails_takes_a_constant_number_of_statements(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_services(make_settings(), migrate=False) as services:
        async with services.sessions() as session, session.begin():
            anna = User(email="anna@ours.example", name="Anna",
                        addresses=[UserEmail(email="anna@ours.example")])
            contacts = [
                Contact(first_name=f"C{n}", last_name="Example", email=f"c{n}@cust{n}.example",
                        addresses=[ContactEmail(email=f"c{n}@cust{n}.example")])
                for n in range(MAILS)
            ]
            session.add_all([anna, *contacts])
            await session.flush()
            opportunities = [Opportunity(title=f"deal {n}", contact_id=c.id, owner_id=anna.id)
                             for n, c in enumerate(contacts)]
            session.add_all(opportunities)
        mails = [
            message(f"C{n} <c{n}@cust{n}.example>", SALES, f"Re: offer [OPP-{o.id}]",
                    f"<batch-{n}@cust.example>")
            for n, o in enumerate(opportunities)
        ]
        with statements(services) as seen:
            outcomes = await process(services, "sales", SALES, mails)

        assert [o.kind for o in outcomes] == ["linked"] * MAILS
        assert [o.links["opportunity"] for o in outcomes] == [o.id for o in opportunities]
        assert len(seen) < MAX_STATEMENTS, "\n".join(seen)
        assert not [s for s in seen if "SAVEPOINT" in s.upper()]
        async with services.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(Activity)) == MAILS
            assert await session.scalar(select(func.count()).select_from(EmailLink)) == 3 * MAILS
            assert await session.scalar(select(func.count()).select_from(OutboxEvent)) == 2 * MAILS
            touched = await session.scalar(
                select(func.count()).select_from(Opportunity)
                .where(Opportunity.last_contact_at.is_not(None))
            )
            assert touched == MAILS


async def test_two_mails_of_one_unknown_sender_in_one_group_open_one_lead(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_services(make_settings(), migrate=False) as services:
        mails = [
            message("Petra Neu <petra@neu.example>", SALES, "Offer", f"<petra-{n}@neu.example>")
            for n in range(2)
        ]
        first, second = await process(services, "sales", SALES, mails)

        assert (first.kind, first.rule) == ("lead_created", "new_lead")
        assert (second.kind, second.rule) == ("linked", "open_lead")
        assert second.links["inbox_lead"] == first.links["inbox_lead"]
        async with services.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(InboxLead)) == 1


async def test_a_reply_in_the_same_group_is_linked_by_thread(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_services(make_settings(), migrate=False) as services:
        async with services.sessions() as session, session.begin():
            anna = User(email="anna@ours.example", name="Anna",
                        addresses=[UserEmail(email="anna@ours.example")])
            session.add(anna)
            await session.flush()
            opportunity = Opportunity(title="deal", owner_id=anna.id)
            session.add(opportunity)
        mails = [
            message("Anna <anna@ours.example>", "Carl <carl@gmail.com>",
                    f"Offer [OPP-{opportunity.id}]", "<offer@ours.example>"),
            message("Carl <carl@gmail.com>", "Anna <anna@ours.example>", "Re: your offer",
                    "<reply@gmail.com>", In_Reply_To="<offer@ours.example>"),
            # The same user's next BCC to someone else does not wait for either.
            message("Anna <anna@ours.example>", "Bob <bob@gmail.com>",
                    f"Offer [OPP-{opportunity.id}]", "<offer-2@ours.example>"),
        ]
        offer, reply, other = await process(services, "bcc", BCC, mails)

        assert (offer.kind, offer.rule) == ("linked", "subject_id")
        assert (reply.kind, reply.rule) == ("linked", "thread")
        assert reply.links["opportunity"] == opportunity.id
        assert (other.kind, other.rule) == ("linked", "subject_id")
        async with services.sessions() as session:
            events = list(await session.scalars(select(OutboxEvent).order_by(OutboxEvent.seq)))
        # Events of each mail in order, the mails in the order they were stored.
        subjects = [e.data["email_id"] for e in events if e.type == "email.received"]
        assert sorted(subjects) == sorted(o.email_id for o in (offer, reply, other))


async def test_a_concurrent_writer_sends_the_group_down_the_safe_path(
    postgres_database: str,
) -> None:
    """Another process commits the same mail while our group is in flight: our fast path fails on
    the unique key, the group is redone mail by mail, and the mail comes out as a duplicate."""
    await _truncate_postgres(postgres_database)
    raw = RawMail(
        message("Carla <carla@acme.example>", BCC, "race", "<race-1@acme.example>"),
        Envelope(None, (BCC,), "bcc", "smtp"),
    )
    settings = base_settings(postgres_database)
    async with (
        open_services(settings, migrate=False) as ours,
        open_services(settings, migrate=False) as theirs,
    ):
        item = await ours.pipeline.prepare(raw)
        fallbacks = REGISTRY.get_sample_value("mailsvc_intake_fallbacks_total") or 0.0
        async with theirs.sessions() as other, other.begin():
            other.add(Email(dedup_key=item.key, raw=raw.data, size=len(raw.data),
                            intake_role="bcc", outcome="ignored"))
            await other.flush()  # holds the unique key until it commits
            ours_task = asyncio.create_task(ours.pipeline.process([item]))

            async def blocked() -> bool:
                async with theirs.engine.connect() as probe:
                    waiting = await probe.exec_driver_sql(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                    return bool(waiting.scalar())

            await wait_for(blocked, what="our insert waiting on their unique key")
        [outcome] = await ours_task
        assert outcome.kind == "duplicate"
        assert REGISTRY.get_sample_value("mailsvc_intake_fallbacks_total") == fallbacks + 1
        async with ours.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(Email)) == 1
            assert await session.scalar(select(func.count()).select_from(OutboxEvent)) == 0
