"""Quarantined mail keeps its bytes and its reason, and can be retried once the cause is fixed."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select

from mailsvc.bootstrap import open_services
from mailsvc.config import Settings
from mailsvc.crmstore.models import Email, QuarantinedMail
from mailsvc.ingest.quarantine import list_quarantined, retry_quarantined
from mailsvc.mail import Envelope, RawMail
from tests.conftest import SALES

BIG = (
    b"From: Big Sender <big@outside.example>\nTo: sales@crm.example\nSubject: a large offer\n"
    b"Message-ID: <big-1@outside.example>\n\n" + b"x" * 3000 + b"\n"
)


async def test_a_too_large_mail_is_quarantined_then_stored_after_the_limit_is_raised(
    make_settings: Callable[..., Settings],
) -> None:
    raw = RawMail(BIG, Envelope("big@outside.example", (SALES,), "sales", "smtp"))
    async with open_services(make_settings(max_message_bytes=2048), migrate=False) as small:
        outcome = await small.pipeline.submit(raw)
        assert outcome.kind == "quarantined"
        assert outcome.reason == "message larger than 2048 bytes"
        [row] = await list_quarantined(small.sessions)
        assert row.raw == BIG and row.intake_role == "sales"
        # The same bytes again: one quarantine entry, not two.
        assert (await small.pipeline.submit(raw)).kind == "duplicate"

    async with open_services(make_settings(), migrate=False) as fixed:
        [(retried_id, again)] = await retry_quarantined(fixed.pipeline, fixed.sessions)
        assert retried_id == row.id
        assert again.kind == "lead_created"
        async with fixed.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(QuarantinedMail)) == 0
            email = await session.get(Email, again.email_id)
            assert email is not None and email.raw == BIG and email.envelope_to == [SALES]
        assert (await fixed.pipeline.submit(raw)).kind == "duplicate"


async def test_retrying_what_is_still_broken_quarantines_it_again(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_services(make_settings(), migrate=False) as services:
        raw = RawMail(b"\x00\x01 not mail", Envelope(None, (SALES,), "sales", "file"))
        first = await services.pipeline.submit(raw)
        [(_, again)] = await retry_quarantined(services.pipeline, services.sessions)
        assert again.kind == "quarantined"
        assert again.reason == first.reason
        assert len(await list_quarantined(services.sessions)) == 1


async def test_a_dropped_mail_is_gone_with_its_bytes_says_who_and_may_come_again(
    make_settings: Callable[..., Settings],
) -> None:
    from mailsvc.crmstore.models import OutboxEvent
    from mailsvc.ingest.quarantine import drop_quarantined

    raw = RawMail(BIG, Envelope("big@outside.example", (SALES,), "sales", "smtp"))
    async with open_services(make_settings(max_message_bytes=2048), migrate=False) as services:
        first = await services.pipeline.submit(raw)
        assert first.kind == "quarantined" and first.quarantine_id is not None
        assert await drop_quarantined(services.sessions, [first.quarantine_id, 999_999],
                                      by="key:abc") == [first.quarantine_id]
        assert await list_quarantined(services.sessions) == []
        async with services.sessions() as session:
            event = await session.scalar(
                select(OutboxEvent).where(OutboxEvent.type == "email.quarantine_dropped")
            )
        assert event is not None
        assert event.subject == f"quarantine/{first.quarantine_id}"
        assert event.data["dropped_by"] == "key:abc"
        assert event.data["reason"] == "message larger than 2048 bytes"
        assert await drop_quarantined(services.sessions, [first.quarantine_id], by="x") == []
        # Forgotten: the same bytes are taken in again, not answered as a duplicate.
        assert (await services.pipeline.submit(raw)).kind == "quarantined"
