"""Accepted mail written by the driver-level intake writer reads back as it was accepted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path

from sqlalchemy import func, select, text

from mailsvc.bootstrap import Services, open_services
from mailsvc.crmstore.intake_writer import INTAKE_DDL, SqliteIntake, intake_path, sqlite_path
from mailsvc.crmstore.models import Email, InboxLead, IntakeMail
from mailsvc.ingest.accept import accept_mails, decided_outcomes, intake_row, raw_of
from mailsvc.ingest.decider import Decider
from mailsvc.mail import Envelope, RawMail, Role
from tests.conftest import BCC, base_settings
from tests.support.waiting import intake_rows, undecided, wait_for


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

    rows = await intake_rows(services)
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
        await services.pipeline.accept_and_decide([RawMail(_mail(99), envelope)])  # an e-mail
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
    assert "emails" in tables


async def test_the_sqlite_accept_commit_syncs_the_log(sqlite_url: str) -> None:
    """The 250 follows this commit: synchronous=FULL, so it outlives a power cut (NORMAL in WAL
    mode would only outlive a crash of the process)."""
    async with open_services(base_settings(sqlite_url)) as services:
        writer = services.pipeline.writer
        assert isinstance(writer, SqliteIntake)
        level = await writer._call(
            lambda connection: connection.execute("PRAGMA synchronous").fetchone()[0])
        assert level == 2  # FULL


async def test_accepting_on_sqlite_never_waits_for_a_decide_transaction(sqlite_url: str) -> None:
    """The intake is a file of its own: a group is accepted (and a duplicate of a stored mail
    still recognised) while another transaction holds the store's write lock, as a decide step
    does for its whole batch."""
    envelope = Envelope("a@example.com", (BCC,), Role.BCC, "smtp")
    async with open_services(base_settings(sqlite_url, sqlite_busy_timeout_seconds=30),
                             migrate=False) as services:
        stored = await services.pipeline.accept_and_decide([RawMail(_mail(40), envelope)])
        assert stored[0].email_id is not None
        async with services.sessions() as session, session.begin():  # BEGIN IMMEDIATE
            await session.execute(text("UPDATE users SET name = name"))
            accepted = await asyncio.wait_for(accept_mails(
                services.pipeline.writer,
                [RawMail(_mail(41), envelope), RawMail(_mail(40), envelope)]), timeout=25)
        assert [a.outcome.kind for a in accepted] == ["accepted", "duplicate"]
        assert accepted[1].outcome.email_id == stored[0].email_id
        path = sqlite_path(sqlite_url)
        assert path is not None
        with contextlib.closing(sqlite3.connect(f"file:{intake_path(path)}?mode=ro",
                                                uri=True)) as intake:
            assert intake.execute("SELECT dedup_key FROM intake").fetchall() == [
                ("mid:w41@example.com",)]


async def test_rows_an_earlier_version_left_in_the_store_move_to_the_intake_file(
    sqlite_url: str,
) -> None:
    """Earlier versions kept the SQLite intake in the store's own ``intake`` table: what is
    waiting there at the upgrade moves over, ids and order kept, and is decided."""
    path = sqlite_path(sqlite_url)
    assert path is not None
    with contextlib.closing(sqlite3.connect(path)) as store, store:
        for number in (51, 50):
            store.execute(
                "INSERT INTO intake (dedup_key, raw, mail_from, rcpt_tos, role, source, "
                "envelope_extra, accepted_at, attempts) VALUES (?, ?, ?, ?, 'bcc', 'smtp', "
                "'{}', '2026-12-01 08:00:00.000000', 0)",
                (f"mid:w{number}@example.com", _mail(number), "a@example.com", json.dumps([BCC])))
    async with open_services(base_settings(sqlite_url), migrate=False) as services:
        rows = await intake_rows(services)
        assert [row.dedup_key for row in rows] == ["mid:w51@example.com", "mid:w50@example.com"]
        assert rows[0].id < rows[1].id
        decided = await services.pipeline.decider.drain({row.id: row.dedup_key for row in rows})
        assert all(outcome.email_id is not None for outcome in decided.values())
        assert await undecided(services) == 0
    with contextlib.closing(sqlite3.connect(path)) as store:
        assert store.execute("SELECT count(*) FROM intake").fetchone()[0] == 0


async def test_a_row_left_behind_by_a_crash_after_the_commit_is_forgotten_once(
    sqlite_url: str,
) -> None:
    """A decide step commits to the store, then deletes the rows from the intake file. A crash
    in between leaves a row whose mail is stored: the next step forgets it, no second effect."""
    envelope = Envelope("a@example.com", (BCC,), Role.BCC, "smtp")
    async with open_services(base_settings(sqlite_url), migrate=False) as services:
        first = await services.pipeline.accept_and_decide([RawMail(_mail(60), envelope)])
        assert first[0].kind == "lead_created"
        writer = services.pipeline.writer
        assert isinstance(writer, SqliteIntake)
        row = intake_row(RawMail(_mail(60), envelope), "mid:w60@example.com")
        await writer._call(writer._insert, [row])  # as if its deletion never happened
        assert await undecided(services) == 1
        await services.pipeline.decider.step()
        assert await undecided(services) == 0
        async with services.sessions() as session:
            emails = await session.scalar(select(func.count()).select_from(Email))
            leads = await session.scalar(select(func.count()).select_from(InboxLead))
        assert (emails, leads) == (1, 1)


def test_the_intake_file_has_the_columns_of_the_model(tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "intake")) as connection:
        connection.execute(INTAKE_DDL)
        columns = {row[1]: (row[2], bool(row[3])) for row in
                   connection.execute("PRAGMA table_info(intake)")}
    table = IntakeMail.__table__
    assert set(columns) == {column.name for column in table.columns}
    for column in table.columns:
        assert columns[column.name][1] == (not column.nullable or column.primary_key), column.name
