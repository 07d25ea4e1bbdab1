"""Spoofing over real SMTP: a user's From is believed only with a proof (docs/trust.md)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import bcrypt
import pytest
from sqlalchemy import func, select

from mailsvc.bootstrap import Services
from mailsvc.config import Settings
from mailsvc.crmstore.demo import seed
from mailsvc.crmstore.models import Activity, Email, EmailLink, InboxLead, OutboxEvent
from tests.conftest import BCC
from tests.integration.test_smtp_intake import running
from tests.support.tls import make_test_ca
from tests.support.waiting import settled

ANNA = "anna.seller@mailsvc.example"
SAM = "sam.support@mailsvc.example"


def user_mail(results: str | None = None, sender: str = ANNA, n: int = 1) -> EmailMessage:
    """A mail claiming to be from our user Anna to a customer, BCC'd, naming OPP-1."""
    mail = EmailMessage()
    if results is not None:
        mail["Authentication-Results"] = results
    mail["From"] = f"Anna Seller <{sender}>"
    mail["To"] = "Carla Customer <carla.customer@acme.example>, New Person <new@fresh.example>"
    mail["Subject"] = "Re: Your quote [OPP-1]"
    mail["Message-ID"] = f"<spoof-{n}@mailsvc.example>"
    mail.set_content("Hello Carla,\n\nplease pay to account 666.\n")
    return mail


async def seeded(services: Services) -> dict[str, Any]:
    """The demo data, and what it holds before the mail: activities, leads, last event."""
    async with services.sessions() as session, session.begin():
        demo = await seed(session)
    async with services.sessions() as session:
        demo["before"] = {
            "activities": await count(services, Activity),
            "leads": await count(services, InboxLead),
            "seq": await session.scalar(select(func.max(OutboxEvent.seq))) or 0,
        }
    return demo


async def stored(services: Services) -> tuple[Email, list[tuple[str, int]]]:
    await settled(services)
    async with services.sessions() as session:
        email = await session.scalar(select(Email).order_by(Email.id.desc()))
        assert email is not None
        links = [(str(link.target_type), link.target_id) for link in await session.scalars(
            select(EmailLink).where(EmailLink.email_id == email.id))]
        return email, links


async def count(services: Services, model: Any) -> int:
    async with services.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def assert_not_attributed(services: Services, reply: str, demo: dict[str, Any]) -> None:
    assert "queued" in reply  # accepted; the decision follows
    email, links = await stored(services)
    assert (email.rule, email.direction, email.outcome) == (
        "sender_unverified", "incoming", "ignored")
    assert "sender_unverified" in email.notes
    assert links == []  # not the user's, not on the opportunity
    before = demo["before"]
    assert await count(services, Activity) == before["activities"]  # nothing on any timeline
    assert await count(services, InboxLead) == before["leads"]  # no lead in Anna's name
    async with services.sessions() as session:
        events = list(await session.scalars(
            select(OutboxEvent).where(OutboxEvent.seq > before["seq"]).order_by(OutboxEvent.seq)
        ))
    assert [e.type for e in events] == ["email.received"]
    assert events[0].data["rule"] == "sender_unverified"
    assert "sender_unverified" in events[0].data["notes"]


async def assert_attributed(services: Services, reply: str, demo: dict[str, Any]) -> None:
    assert "queued" in reply  # accepted; the decision follows
    email, links = await stored(services)
    opportunity = demo["opportunities"][0]
    assert email.direction == "outgoing" and email.rule == "subject_id"
    assert ("opportunity", opportunity["id"]) in links
    assert ("owner", demo["users"][0]["id"]) in links


async def send(port: int, mail: EmailMessage) -> str:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
        errors, reply = await client.send_message(mail, recipients=[BCC])
    assert not errors
    return reply


@pytest.fixture
def strict(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"smtp_port": 0, "sender_verification": "aligned"}
        return make_settings(**{**values, **overrides})

    return make


async def test_a_forged_from_over_anonymous_smtp_is_not_attributed(
    strict: Callable[..., Settings],
) -> None:
    async with running(strict()) as (services, port):
        demo = await seeded(services)
        await assert_not_attributed(services, await send(port, user_mail()), demo)


async def test_authentication_results_of_another_authserv_id_are_ignored(
    strict: Callable[..., Settings],
) -> None:
    settings = strict(trusted_authserv_ids="mx.mailsvc.example")
    forged = "mx.mailsvc.example.evil.example; dmarc=pass header.from=mailsvc.example"
    async with running(settings) as (services, port):
        demo = await seeded(services)
        await assert_not_attributed(services, await send(port, user_mail(forged)), demo)


async def test_authentication_results_of_the_trusted_authserv_id_are_believed(
    strict: Callable[..., Settings],
) -> None:
    settings = strict(trusted_authserv_ids="mx.mailsvc.example")
    results = "mx.mailsvc.example; dkim=pass header.d=mailsvc.example; dmarc=pass " \
              "header.from=mailsvc.example"
    async with running(settings) as (services, port):
        demo = await seeded(services)
        await assert_attributed(services, await send(port, user_mail(results)), demo)


async def test_trusted_results_from_outside_the_trusted_networks_are_ignored(
    strict: Callable[..., Settings],
) -> None:
    settings = strict(trusted_authserv_ids="mx.mailsvc.example", trusted_networks="10.9.0.0/16")
    results = "mx.mailsvc.example; dmarc=pass header.from=mailsvc.example"
    async with running(settings) as (services, port):  # we connect from 127.0.0.1
        demo = await seeded(services)
        await assert_not_attributed(services, await send(port, user_mail(results)), demo)


@pytest.fixture
def auth_setup(tmp_path: Path) -> tuple[ssl.SSLContext, dict[str, Any]]:
    ca, cert, key = make_test_ca(tmp_path / "tls")
    users = tmp_path / "smtp-users"
    hashed = bcrypt.hashpw(b"anna-secret", bcrypt.gensalt(rounds=4)).decode()
    users.write_text(f"# SMTP AUTH users\n{ANNA}:{hashed}\n")
    settings = {"smtp_tls_cert": cert, "smtp_tls_key": key, "smtp_auth_users": users}
    return ssl.create_default_context(cafile=str(ca)), settings


async def test_smtp_auth_over_starttls_proves_the_sender(
    strict: Callable[..., Settings], auth_setup: tuple[ssl.SSLContext, dict[str, Any]],
) -> None:
    client_tls, extra = auth_setup
    async with running(strict(**extra)) as (services, port):
        demo = await seeded(services)
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, start_tls=False, tls_context=client_tls
        ) as plain:
            ehlo = await plain.ehlo()
            assert "AUTH" not in ehlo.message  # never offered in the clear
            refused = await plain.execute_command(b"AUTH", b"PLAIN", b"AGFubmEAeA==")
            assert refused.code == 538
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_tls
        ) as secure:
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as wrong:
                await secure.login(ANNA, "guess")
            assert wrong.value.code == 535
            await secure.login(ANNA, "anna-secret")
            errors, reply = await secure.send_message(user_mail(), recipients=[BCC])
        assert not errors
        await assert_attributed(services, reply, demo)


async def test_smtp_auth_as_one_user_does_not_prove_another(
    strict: Callable[..., Settings], auth_setup: tuple[ssl.SSLContext, dict[str, Any]],
) -> None:
    client_tls, extra = auth_setup
    async with running(strict(**extra)) as (services, port):
        demo = await seeded(services)
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_tls
        ) as secure:
            await secure.login(ANNA, "anna-secret")
            mail = user_mail(sender=SAM)
            errors, reply = await secure.send_message(mail, recipients=[BCC])
        assert not errors
        await assert_not_attributed(services, reply, demo)


async def test_repeated_wrong_passwords_close_the_connection(
    strict: Callable[..., Settings], auth_setup: tuple[ssl.SSLContext, dict[str, Any]],
) -> None:
    client_tls, extra = auth_setup
    async with running(strict(**extra)) as (_, port):
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_tls
        )
        await client.connect()
        await client.ehlo()
        codes = []
        for _ in range(2):
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as wrong:
                await client.auth_plain(ANNA, "guess")
            codes.append(wrong.value.code)
        with pytest.raises((aiosmtplib.SMTPResponseException, aiosmtplib.SMTPServerDisconnected)):
            await client.auth_plain(ANNA, "guess")
        assert codes == [535, 535]
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await client.noop()  # the third failure closed the connection
        client.close()


def test_mail_piped_into_ingest_is_not_trusted_by_that_alone(database_url: str) -> None:
    """README's demo mail without its one setting: stored, but nothing in Anna's name."""
    from tests.integration.test_cli import EXAMPLES, README_DEMO, lines, mailsvc, seed

    seed(database_url)
    mail = (EXAMPLES / "bcc-opportunity.eml").read_bytes()
    result = mailsvc(database_url, "ingest", "-", stdin=mail)
    [outcome] = lines(result)
    assert (outcome["outcome"], outcome["rule"]) == ("ignored", "sender_unverified")
    assert outcome["owner"] is None and outcome["opportunity"] is None
    forged = mail.replace(b"demo.mailsvc.localhost", b"mx.evil.example").replace(
        b"quote-followup-1", b"forged-1")
    [outcome] = lines(mailsvc(database_url, "ingest", "-", stdin=forged, **README_DEMO))
    assert outcome["rule"] == "sender_unverified"
