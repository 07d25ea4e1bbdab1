"""No mail can block another: odd values are cleaned and fitted to their columns, on SQLite and
PostgreSQL, and the other mails of the same group commit as usual."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import select

from mailsvc.bootstrap import Services
from mailsvc.config import Settings
from mailsvc.crmstore.models import Email, EmailAttachment, InboxLead, QuarantinedMail
from mailsvc.ingest.outcome import Outcome
from mailsvc.mail import Envelope, RawMail
from tests.conftest import BCC, SALES
from tests.integration.test_smtp_intake import running
from tests.support.waiting import wait_for


def mail(n: int, *, name: str = "Carla", subject: str = "Hello", message_id: str | None = None,
         extra: bytes = b"", sender: str = "carla@acme.example") -> bytes:
    mid = message_id if message_id is not None else f"<m{n}@acme.example>"
    return (
        f"From: {name} <{sender}>\r\nTo: {SALES}\r\nSubject: {subject}\r\n"
        f"Message-ID: {mid}\r\n".encode("utf-8", "surrogateescape")
        + extra + b"\r\nHello, a question about your product.\r\n"
    )


def raw(data: bytes, mail_from: str | None = "carla@acme.example") -> RawMail:
    return RawMail(data, Envelope(mail_from, (SALES,), "sales", "smtp"))


async def process(services: Services, mails: list[RawMail]) -> list[Outcome]:
    items = [await services.pipeline.prepare(m) for m in mails]
    return await services.pipeline.process(items)  # one group, one transaction


async def _count(services: Services, wanted: int) -> bool:
    return len(await emails(services)) == wanted


async def emails(services: Services) -> list[Email]:
    async with services.sessions() as session:
        return list(await session.scalars(select(Email).order_by(Email.id)))


async def test_odd_values_are_stored_fitted_and_the_group_commits(services: Services) -> None:
    long_name = "Carla " + "Ü" * 400
    bad_bytes = b"X-Odd: \xff\xfe broken \xc3\x28 utf-8\r\nSubject-Extra: a\x01b\r\n"
    group = [
        raw(mail(1)),
        raw(mail(2, name=long_name, sender="x" * 400 + "@acme.example")),
        raw(mail(3, extra=bad_bytes, subject="s\udcff")),
        raw(mail(4, message_id="<" + "i" * 5000 + "@acme.example>", subject="S" * 100_000)),
        raw(mail(5), mail_from="carla\x00@acme.example\udcff"),
        raw(mail(7, sender="eve@acme.example")),
        raw(mail(8, extra=b"X-Nul: a\x00b\r\n")),  # NUL in the header block: not a mail
    ]
    outcomes = await process(services, group)
    assert [o.kind for o in outcomes] == [
        "lead_created", "lead_created", "linked", "linked", "linked", "lead_created",
        "quarantined",
    ]
    assert outcomes[-1].reason == "unparseable: binary data, not a mail"
    stored = await emails(services)
    assert len(stored) == len(group) - 1  # every other mail stored, none lost
    by_id = {e.message_id: e for e in stored}
    long = by_id["m2@acme.example"]
    assert long.from_name is not None and len(long.from_name) == 300
    assert long.from_email is not None and len(long.from_email) == 320
    odd = by_id["m3@acme.example"]
    assert all("\x00" not in value for _, value in odd.headers)
    assert "\udcff" not in odd.subject
    assert dict(odd.headers)["Subject-Extra"] == "ab"  # a control character makes no sense there
    overlong = next(e for e in stored if e.message_id is None)
    assert len(overlong.subject) == 100_000  # unbounded text stays whole
    nul = by_id["m5@acme.example"]
    assert nul.envelope_from == "carla@acme.example\ufffd"
    async with services.sessions() as session:
        leads = {lead.email for lead in await session.scalars(select(InboxLead))}
    # The ordinary mails of the group did what they always do: a lead each.
    assert {"carla@acme.example", "eve@acme.example"} <= leads
    assert any(lead and len(lead) == 320 for lead in leads)


async def test_an_attachment_with_overlong_names_is_stored(services: Services) -> None:
    data = (
        b"From: Dora <dora@acme.example>\r\nTo: sales@crm.example\r\nSubject: file\r\n"
        b"Message-ID: <att@acme.example>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        b'--B\r\nContent-Type: application/octet-stream; name="' + b"f" * 700 + b'.bin"\r\n'
        b"Content-ID: <" + b"c" * 800 + b">\r\n\r\nxyz\r\n--B--\r\n"
    )
    await process(services, [raw(data), raw(mail(9))])
    async with services.sessions() as session:
        attachment = await session.scalar(select(EmailAttachment))
    assert attachment is not None
    assert attachment.filename is not None and len(attachment.filename) == 500
    assert attachment.content_id is not None and len(attachment.content_id) == 500
    assert len(await emails(services)) == 2


async def test_a_quarantined_mail_with_odd_envelope_is_kept(services: Services) -> None:
    garbage = raw(b"\x00\x01\x02 not a mail", mail_from="x\x00y@outside.example")
    await process(services, [garbage, raw(mail(1))])
    async with services.sessions() as session:
        kept = await session.scalar(select(QuarantinedMail))
    assert kept is not None and kept.envelope_from == "xy@outside.example"
    assert len(await emails(services)) == 1


async def test_nul_or_bad_bytes_in_the_smtp_envelope_get_a_precise_reply(
    make_settings: Callable[..., Settings],
) -> None:
    async with running(make_settings(smtp_port=0)) as (services, port):
        # A raw connection: well-behaved clients refuse to send such bytes at all.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def say(line: bytes) -> bytes:
            writer.write(line + b"\r\n")
            await writer.drain()
            reply = await reader.readline()
            while reply[3:4] == b"-":
                reply = await reader.readline()
            return reply

        assert (await reader.readline()).startswith(b"220")
        assert (await say(b"EHLO client.example")).startswith(b"250")
        assert (await say(b"MAIL FROM:<a\x00b@outside.example>")).startswith(b"553 5.1.7")
        assert (await say(b"MAIL FROM:<\xff@outside.example>")).startswith(b"553 5.1.7")
        assert (await say(b"MAIL FROM:<ok@outside.example>")).startswith(b"250")
        assert (await say(b"RCPT TO:<bcc\x01@crm.example>")).startswith(b"553 5.1.3")
        assert (await say(f"RCPT TO:<{BCC}>".encode())).startswith(b"250")
        assert (await say(b"DATA")).startswith(b"354")
        assert (await say(mail(1) + b".")).startswith(b"250")
        writer.close()
        await writer.wait_closed()
        # The 250 means accepted; the decide step stores it.
        await wait_for(lambda: _count(services, 1), within=120, what="the mail stored")
