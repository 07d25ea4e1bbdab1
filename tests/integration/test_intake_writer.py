"""Accepted mail written by the driver-level intake writer reads back through the models."""

from __future__ import annotations

import asyncio

from sqlalchemy import select, text

from mailsvc.bootstrap import Services, open_services
from mailsvc.crmstore.intake_writer import SqliteIntake
from mailsvc.crmstore.models import IntakeMail
from mailsvc.ingest.accept import accept_mails, decided_outcomes, raw_of
from mailsvc.ingest.decider import Decider
from mailsvc.mail import Envelope, RawMail, Role
from tests.conftest import BCC, base_settings
from tests.support.waiting import wait_for


def _mail(number: int) -> bytes:
    return (f"From: a@example.com\r\nMessage-ID: <w{number}@example.com>\r\n"
            f"Subject: n{number}\r\n\r\nbody\r\n").encode()


async def test_rows_read_back_as_accepted(services: Services) -> None:
    await services.pipeline.stop()  # nothing decides: the rows stay in the intake
    envelope = Envelope("Sender@Example.com\x00", (BCC,), Role.BCC, "smtp", peer="192.0.2.7",
                        authenticated="anna")
    raws = [RawMail(_mail(1), envelope), RawMail(_mail(2), envelope), RawMail(_mail(1), envelope)]
    first = await accept_mails(services.pipeline.writer, raws)
    assert [a.outcome.kind for a in first] == ["accepted", "accepted", "duplicate"]
    assert first[2].outcome.intake_id == first[0].outcome.intake_id
    again = await accept_mails(services.pipeline.writer, raws[:1])
    assert again[0].outcome.kind == "duplicate"
    assert again[0].outcome.intake_id == first[0].outcome.intake_id

    async with services.sessions() as session:
        rows = (await session.scalars(select(IntakeMail).order_by(IntakeMail.id))).all()
    assert [row.dedup_key for row in rows] == ["mid:w1@example.com", "mid:w2@example.com"]
    restored = raw_of(rows[0])
    assert restored.data == _mail(1)
    assert restored.envelope == Envelope("Sender@Example.com", (BCC,), Role.BCC, "smtp",
                                         peer="192.0.2.7", authenticated="anna")
    assert rows[0].accepted_at.tzinfo is not None and rows[0].attempts == 0


async def test_a_stored_mail_is_a_duplicate_of_the_email(services: Services) -> None:
    envelope = Envelope("a@example.com", (BCC,), Role.BCC, "smtp")
    outcome = await services.pipeline.submit(RawMail(_mail(3), envelope))
    assert outcome.email_id is not None
    again = await accept_mails(services.pipeline.writer, [RawMail(_mail(3), envelope)])
    assert again[0].outcome.kind == "duplicate"
    assert again[0].outcome.email_id == outcome.email_id


async def test_a_decide_loop_gives_sqlite_its_statistics(sqlite_url: str) -> None:
    """Without statistics SQLite's planner may read most of a large table for a lookup."""
    envelope = Envelope("a@example.com", (BCC,), Role.BCC, "smtp")
    async with open_services(base_settings(sqlite_url), migrate=False) as services:
        accepted = await services.pipeline.accept_many(
            [RawMail(_mail(100 + n), envelope) for n in range(5)])
        stop = asyncio.Event()
        loop = asyncio.create_task(Decider(services.pipeline).run(stop))

        async def decided() -> bool:
            keys = {a.outcome.intake_id or 0: a.key for a in accepted}
            return len(await decided_outcomes(services.pipeline.writer, keys)) == 5

        await wait_for(decided, within=120, what="the decide loop to decide the mails")
        stop.set()
        await loop
        async with services.sessions() as session:
            tables = set(await session.scalars(text("SELECT DISTINCT tbl FROM sqlite_stat1")))
    assert "intake" in tables


async def test_the_sqlite_accept_commit_syncs_the_log(sqlite_url: str) -> None:
    """The 250 follows this commit: synchronous=FULL, so it outlives a power cut (NORMAL in WAL
    mode would only outlive a crash of the process)."""
    async with open_services(base_settings(sqlite_url)) as services:
        writer = services.pipeline.writer
        assert isinstance(writer, SqliteIntake)
        level = await writer._call(
            lambda connection: connection.execute("PRAGMA synchronous").fetchone()[0])
        assert level == 2  # FULL
