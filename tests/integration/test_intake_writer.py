"""Accepted mail written by the driver-level intake writer reads back through the models."""

from __future__ import annotations

from sqlalchemy import select

from mailsvc.bootstrap import Services
from mailsvc.crmstore.models import IntakeMail
from mailsvc.ingest.accept import accept_mails, raw_of
from mailsvc.mail import Envelope, RawMail, Role
from tests.conftest import BCC


def _mail(number: int) -> bytes:
    return (f"From: a@example.com\r\nMessage-ID: <w{number}@example.com>\r\n"
            f"Subject: n{number}\r\n\r\nbody\r\n").encode()


async def test_rows_read_back_as_accepted(services: Services) -> None:
    await services.pipeline.stop()  # nothing decides: the rows stay in the intake
    envelope = Envelope("Sender@Example.com\x00", (BCC,), Role.BCC, "smtp", peer="192.0.2.7",
                        authenticated="anna")
    raws = [RawMail(_mail(1), envelope), RawMail(_mail(2), envelope), RawMail(_mail(1), envelope)]
    first = await accept_mails(services.pipeline.intake, raws)
    assert [a.outcome.kind for a in first] == ["accepted", "accepted", "duplicate"]
    assert first[2].outcome.intake_id == first[0].outcome.intake_id
    again = await accept_mails(services.pipeline.intake, raws[:1])
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
    again = await accept_mails(services.pipeline.intake, [RawMail(_mail(3), envelope)])
    assert again[0].outcome.kind == "duplicate"
    assert again[0].outcome.email_id == outcome.email_id
