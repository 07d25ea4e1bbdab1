"""The SMTP intake on a real port, with a real SMTP client, a real store and a real RabbitMQ."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from sqlalchemy import func, select

from mailsvc.bootstrap import Services, open_services
from mailsvc.config import Settings
from mailsvc.crmstore.demo import seed
from mailsvc.crmstore.models import Email, EmailLink, OutboxEvent, QuarantinedMail
from mailsvc.errors import ConfigError
from mailsvc.ingest.smtp import start_smtp
from tests.conftest import AMQP_URL, BCC, SALES, SUPPORT, base_settings
from tests.support.broker import consumer
from tests.support.tls import make_test_ca
from tests.support.waiting import wait_for


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Services, int]]:
    """The intake as `mailsvc serve` runs it: pipeline, SMTP server and (if configured) relay."""
    async with open_services(settings, migrate=False) as services:
        await services.pipeline.start()
        server = await start_smtp(services.pipeline, settings.smtp)
        port = server.sockets[0].getsockname()[1]
        relay = asyncio.create_task(services.relay.run()) if services.relay else None
        try:
            yield services, port
        finally:
            server.close()
            await server.wait_closed()
            await services.pipeline.stop()
            if relay:
                relay.cancel()
                await asyncio.gather(relay, return_exceptions=True)


def bcc_mail(subject: str, message_id: str = "<deal-1@mailsvc.example>") -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "Anna Seller <anna.seller@mailsvc.example>"
    mail["To"] = "Carla Customer <carla.customer@acme.example>"
    mail["Subject"] = subject
    mail["Message-ID"] = message_id
    mail.set_content("Hello Carla,\n\nthe quote is attached.\n\nAnna\n" + "x" * 3000)
    return mail


async def count(services: Services, model: Any) -> int:
    async with services.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def send(port: int, mail: EmailMessage, rcpt: str = BCC) -> tuple[int, str]:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
        errors, reply = await client.send_message(mail, recipients=[rcpt])
    assert not errors
    return 250, reply


async def test_bcc_mail_with_opportunity_id_is_linked_and_published_once(
    make_settings: Callable[..., Settings],
) -> None:
    async with consumer(AMQP_URL) as received:
        settings = make_settings(
            amqp_url=AMQP_URL, amqp_exchange=received.exchange, smtp_port=0
        )
        async with running(settings) as (services, port):
            async with services.sessions() as session, session.begin():
                demo = await seed(session)
            opportunity = demo["opportunities"][0]

            code, reply = await send(port, bcc_mail(f"Re: Your quote [{opportunity['number']}]"))
            assert code == 250 and "queued as" in reply  # accepted; deciding follows

            async def linked_event() -> list[dict[str, Any]]:
                return received.of_type("email.linked")

            events = await wait_for(linked_event, what="email.linked")
            data = events[0]["data"]
            assert events[0]["specversion"] == "1.0"
            assert events[0]["type"] == "com.mailsvc.email.linked"
            assert data["links"]["opportunity"] == opportunity["id"]
            assert data["links"]["account"] == opportunity["account_id"]
            assert data["links"]["contact"] == opportunity["contact_id"]
            assert data["links"]["owner"] == opportunity["owner_id"]
            assert data["rule"] == "subject_id"

            async with services.sessions() as session:
                email = await session.scalar(select(Email))
                assert email is not None and email.raw.startswith(b"From: Anna")
                links = {(str(link.target_type), link.target_id)
                         for link in await session.scalars(select(EmailLink))}
            assert links == {
                ("opportunity", opportunity["id"]), ("account", opportunity["account_id"]),
                ("contact", opportunity["contact_id"]), ("owner", opportunity["owner_id"]),
            }

            # The same mail again: 250, but nothing new is accepted, stored or published.
            outbox_before = await count(services, OutboxEvent)
            code, reply = await send(port, bcc_mail(f"Re: Your quote [{opportunity['number']}]"))
            assert "duplicate" in reply
            assert await count(services, Email) == 1
            assert await count(services, OutboxEvent) == outbox_before

            async def all_sent() -> bool:
                async with services.sessions() as session:
                    return not await session.scalar(
                        select(func.count()).select_from(OutboxEvent)
                        .where(OutboxEvent.sent_at.is_(None))
                    )

            await wait_for(all_sent, what="outbox drained")
            assert len(received.of_type("email.linked")) == 1
            ids = [m["id"] for m in received.messages]
            assert len(ids) == len(set(ids))


async def test_unknown_recipient_is_refused_at_rcpt(make_settings: Callable[..., Settings]) -> None:
    async with (
        running(make_settings(smtp_port=0)) as (_, port),
        aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client,
    ):
        await client.mail("someone@outside.example")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("anyone@elsewhere.example")
        assert refused.value.code == 550
        ok = await client.rcpt(SALES.upper())
        assert ok.code == 250


async def test_oversized_message_gets_552(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings(smtp_port=0, max_message_bytes=2048)) as (services, port):
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
            ehlo = await client.ehlo()
            assert "SIZE 2048" in ehlo.message
            with pytest.raises(aiosmtplib.SMTPResponseException) as too_big:
                await client.send_message(bcc_mail("big"), recipients=[SUPPORT])
            assert too_big.value.code == 552
        assert await count(services, Email) == 0


async def test_storage_failure_answers_451_and_nothing_is_lost(
    make_settings: Callable[..., Settings],
) -> None:
    # The store is a PostgreSQL server that does not answer: a real connection failure.
    down = base_settings(
        "postgresql+asyncpg://postgres@127.0.0.1:1/none", smtp_port=0, bcc_address=BCC
    )
    async with (
        running(down) as (_, port),
        aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client,
    ):
        with pytest.raises(aiosmtplib.SMTPDataError) as failed:
            await client.send_message(bcc_mail("OPP-1"), recipients=[BCC])
        assert failed.value.code == 451
    # The client retries once the store is back: now it is stored, once.
    async with running(make_settings(smtp_port=0)) as (services, port):
        await send(port, bcc_mail("OPP-1"))

        async def stored() -> bool:
            return await count(services, Email) == 1

        await wait_for(stored, within=60, what="the mail decided")


async def test_unparseable_message_is_quarantined_and_the_next_one_goes_on(
    make_settings: Callable[..., Settings],
) -> None:
    async with running(make_settings(smtp_port=0)) as (services, port):
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
            reply = await client.sendmail("x@outside.example", [SALES], b"\x00\x01\x02 not a mail")
            assert reply[0] == {} and "queued as" in reply[1]
        await send(port, bcc_mail("next one", "<next@mailsvc.example>"))

        async def decided() -> bool:
            return (await count(services, QuarantinedMail), await count(services, Email)) == (1, 1)

        await wait_for(decided, within=60, what="one quarantined, one stored")


async def test_starttls_protects_the_intake_and_can_be_required(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ca, cert, key = make_test_ca(tmp_path / "tls")
    client_tls = ssl.create_default_context(cafile=str(ca))
    settings = make_settings(
        smtp_port=0, smtp_tls_cert=cert, smtp_tls_key=key, smtp_require_tls=True
    )
    async with running(settings) as (services, port):
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, start_tls=False, tls_context=client_tls
        ) as plain:
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
                await plain.mail("anna@outside.example")
            assert refused.value.code == 530
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_tls
        ) as secure:
            errors, _ = await secure.send_message(bcc_mail("over TLS"), recipients=[BCC])
            assert errors == {}

        async def stored() -> bool:
            return await count(services, Email) == 1

        await wait_for(stored, within=60, what="the mail decided")


def test_half_a_tls_configuration_is_refused(tmp_path: Path) -> None:
    _, cert, _ = make_test_ca(tmp_path / "tls")
    with pytest.raises(ConfigError, match="MAILSVC_SMTP_TLS_KEY"):
        base_settings("sqlite+aiosqlite:///x.db", smtp_tls_cert=cert)
