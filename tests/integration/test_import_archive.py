"""`mailsvc import --archive`: old mail kept as history, through the CLI, on a real store."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from mailsvc.crmstore.db import create_engine, create_session_factory
from mailsvc.crmstore.models import Activity, Email, InboxLead, OutboxEvent, Ticket, TicketUpdate
from mailsvc.crmstore.outbound_models import OutboundMail
from mailsvc.events.schema import cloudevent, encode
from tests.integration.test_import import run_import, summary
from tests.support.contract import envelope_errors

ASKED = datetime(2019, 3, 4, 10, 0, tzinfo=UTC)
FOLLOWED_UP = datetime(2019, 3, 5, 16, 30, tzinfo=UTC)
INQUIRED = datetime(2018, 6, 1, 9, 15, tzinfo=UTC)
# Acknowledgements are queued (not sent) when a relay is configured: nothing listens there.
OUTBOUND = {"MAILSVC_OUTBOUND_SMTP_URL": "smtp://127.0.0.1:1", "MAILSVC_TICKET_ACK": "true"}


def eml(folder: Path, name: str, *, sender: str, subject: str, message_id: str, date: datetime,
        in_reply_to: str | None = None) -> None:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = "Support <support@crm.example>"
    mail["Subject"] = subject
    mail["Message-ID"] = f"<{message_id}>"
    mail["Date"] = format_datetime(date)
    if in_reply_to:
        mail["In-Reply-To"] = mail["References"] = f"<{in_reply_to}>"
    mail.set_content(f"{subject}\n\nKind regards\n")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(mail.as_bytes())


def utc(value: datetime | None) -> datetime | None:
    """SQLite gives naive UTC back, PostgreSQL aware: compare as aware UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def read(database_url: str, model: Any) -> list[Any]:
    async def go() -> list[Any]:
        engine = create_engine(database_url)
        try:
            async with create_session_factory(engine)() as session:
                return list(await session.scalars(select(model).order_by(model.id)))
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_an_archive_is_history_dated_closed_unanswered_and_flagged(
    database_url: str, tmp_path: Path
) -> None:
    support, sales = tmp_path / "support", tmp_path / "sales"
    eml(support, "1.eml", sender="Carla Customer <carla@acme.example>",
        subject="The printer is broken", message_id="t1@acme.example", date=ASKED)
    eml(support, "2.eml", sender="Carla Customer <carla@acme.example>",
        subject="Re: The printer is broken", message_id="t2@acme.example", date=FOLLOWED_UP,
        in_reply_to="t1@acme.example")
    eml(sales, "3.eml", sender="Paul Prospect <paul@prospect.example>",
        subject="A quote for 20 printers?", message_id="l1@prospect.example", date=INQUIRED)

    code, output = run_import(database_url, "--archive", "--to", "support@crm.example",
                              str(support), env=OUTBOUND)
    assert code == 0, output
    assert summary(output) == {"ticket_created": 1, "ticket_updated": 1, "total": 2}
    code, output = run_import(database_url, "--archive", "--to", "sales@crm.example",
                              str(sales), env=OUTBOUND)
    assert code == 0, output
    assert summary(output) == {"lead_created": 1, "total": 1}

    [ticket] = read(database_url, Ticket)
    assert str(ticket.status) == "closed"
    assert utc(ticket.created_at) == utc(ticket.closed_at) == ASKED
    [update] = read(database_url, TicketUpdate)
    assert update.ticket_id == ticket.id and utc(update.created_at) == FOLLOWED_UP
    assert update.status_to is None  # a closed ticket stays closed
    [lead] = read(database_url, InboxLead)
    assert utc(lead.created_at) == INQUIRED
    emails = {e.message_id: e for e in read(database_url, Email)}
    assert {e.source for e in emails.values()} == {"archive"}
    # The timeline: each mail at its own date, not at the import's.
    timeline = {a.email_id: utc(a.done_at) for a in read(database_url, Activity)}
    assert timeline == {emails["t1@acme.example"].id: ASKED,
                        emails["t2@acme.example"].id: FOLLOWED_UP,
                        emails["l1@prospect.example"].id: INQUIRED}
    # No acknowledgement for a request answered long ago.
    assert read(database_url, OutboundMail) == []
    events = read(database_url, OutboxEvent)
    assert {e.type for e in events} >= {"email.received", "email.linked", "ticket.created",
                                        "ticket.updated", "inbox_lead.created"}
    assert all(e.data.get("historical") is True for e in events), [
        (e.type, e.data) for e in events if not e.data.get("historical")]
    created = next(e for e in events if e.type == "ticket.created")
    assert created.data["status"] == "closed"
    # As published, each still matches its message in docs/asyncapi.yaml.
    errors = [error for e in events for error in envelope_errors(
        json.loads(encode(cloudevent(e.id, e.type, e.created_at, e.data, e.subject))))]
    assert errors == []


def test_without_archive_the_same_mail_is_live(database_url: str, tmp_path: Path) -> None:
    """The control: a plain import opens the ticket, acknowledges it, and flags nothing."""
    eml(tmp_path / "mail", "1.eml", sender="Carla Customer <carla@acme.example>",
        subject="The printer is broken", message_id="t1@acme.example", date=ASKED)
    code, output = run_import(database_url, "--to", "support@crm.example",
                              str(tmp_path / "mail"), env=OUTBOUND)
    assert code == 0, output
    [ticket] = read(database_url, Ticket)
    assert str(ticket.status) == "open" and ticket.closed_at is None
    assert utc(ticket.created_at) != ASKED
    assert [m.kind for m in read(database_url, OutboundMail)] == ["ack"]
    assert not any("historical" in e.data for e in read(database_url, OutboxEvent))


def test_the_loop_guard_leaves_an_archive_alone(database_url: str, tmp_path: Path) -> None:
    """Thirty old mails of one customer (each a new ticket) are history, not a mail loop: all
    thirty tickets are created, and they count for nothing when that customer writes today."""
    folder = tmp_path / "archive"
    for n in range(30):
        eml(folder, f"{n:03}.eml", sender="Busy <busy@customer.example>",
            subject=f"Problem number {n}", message_id=f"busy-{n}@customer.example",
            date=ASKED)
    status, output = run_import(database_url, "--archive", "--to", "support@crm.example",
                                str(folder))
    assert status == 0, output
    emails = read(database_url, Email)
    assert len(emails) == 30
    assert not any("rate_limited" in (e.notes or []) for e in emails)
    assert len(read(database_url, Ticket)) == 30

    live = tmp_path / "live"
    eml(live, "live.eml", sender="Busy <busy@customer.example>", subject="A new problem today",
        message_id="busy-live@customer.example", date=datetime.now(UTC))
    status, output = run_import(database_url, "--to", "support@crm.example", str(live))
    assert status == 0, output
    assert len(read(database_url, Ticket)) == 31
