"""Each SMTP limit with a real client: the attack gets a clear reply, and a normal mail sent right
after it is answered 250 (docs/trust.md)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import smtplib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiosmtplib
import pytest
from sqlalchemy import select

from mailsvc.bootstrap import Services
from mailsvc.config import Settings
from mailsvc.crmstore.models import Email, QuarantinedMail
from tests.conftest import BCC, SALES
from tests.integration.test_smtp_intake import running
from tests.support.waiting import settled

DEADLINE = 60.0  # generous: a busy machine is slow, never wrong

NORMAL = (
    b"From: Carla <carla@acme.example>\r\nTo: sales@crm.example\r\nSubject: normal\r\n"
    b"Message-ID: <normal-%d@acme.example>\r\n\r\nJust a normal mail.\r\n"
)


async def normal_mail_is_accepted(port: int, n: int = 1) -> None:
    """The service still answers an ordinary mail with 250."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=DEADLINE) as client:
        errors, reply = await client.sendmail("carla@acme.example", [SALES], NORMAL % n)
    assert not errors
    assert reply.startswith("2.0.0 Ok")


class Raw:
    """A raw SMTP connection, to send what well-behaved clients never would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def reply(self) -> bytes:
        line = await asyncio.wait_for(self.reader.readline(), DEADLINE)
        while line[3:4] == b"-":
            line = await asyncio.wait_for(self.reader.readline(), DEADLINE)
        return line

    async def say(self, data: bytes, end: bytes = b"\r\n") -> bytes:
        self.writer.write(data + end)
        await self.writer.drain()
        return await self.reply()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def start_mail(self) -> None:
        assert (await self.say(b"EHLO attacker.example")).startswith(b"250")
        assert (await self.say(b"MAIL FROM:<x@outside.example>")).startswith(b"250")
        assert (await self.say(f"RCPT TO:<{SALES}>".encode())).startswith(b"250")

    async def closed_by_server(self) -> bool:
        data = await asyncio.wait_for(self.reader.read(), DEADLINE)
        return data == b"" or data.startswith(b"421")


@asynccontextmanager
async def raw(port: int, greeting: bool = True) -> AsyncIterator[Raw]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = Raw(reader, writer)
    if greeting:
        assert (await conn.reply()).startswith(b"220")
    try:
        yield conn
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@pytest.fixture
def limited(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return make_settings(smtp_port=0, **overrides)

    return make


async def stored(services: Services) -> list[Email]:
    await settled(services)
    async with services.sessions() as session:
        return list(await session.scalars(select(Email).order_by(Email.id)))


async def test_connections_over_the_total_cap_get_421(limited: Callable[..., Settings]) -> None:
    async with (
        running(limited(smtp_max_connections=3)) as (_, port),
        raw(port) as a, raw(port) as b, raw(port),
    ):
        async with raw(port, greeting=False) as over:
            assert (await over.reply()).startswith(b"421 4.7.0 Too many connections")
            assert await over.closed_by_server()
        for conn in (a, b):
            await conn.say(b"QUIT")
            assert await conn.closed_by_server()  # the server has let go of it
        await normal_mail_is_accepted(port)


async def test_connections_over_the_per_address_cap_get_421(
    limited: Callable[..., Settings],
) -> None:
    settings = limited(smtp_max_connections=50, smtp_max_connections_per_ip=2)
    async with running(settings) as (_, port), raw(port) as a, raw(port):
        async with raw(port, greeting=False) as over:
            assert (await over.reply()).startswith(b"421 4.7.0 Too many connections from")
        await a.say(b"QUIT")
        assert await a.closed_by_server()
        # One slot is free again once the server has seen the QUIT.
        await normal_mail_is_accepted(port)


async def test_concurrent_data_over_the_cap_gets_451(limited: Callable[..., Settings]) -> None:
    settings = limited(smtp_max_concurrent_data=1, smtp_data_slot_wait=0.2)
    async with running(settings) as (services, port):
        async with raw(port) as slow, raw(port) as second:
            await slow.start_mail()
            assert (await slow.say(b"DATA")).startswith(b"354")
            await slow.send(NORMAL.split(b"\r\n\r\n")[0] % 1 + b"\r\n")  # and then it dawdles
            await second.start_mail()
            assert (await second.say(b"DATA")).startswith(b"451 4.3.2")
            assert (await slow.say(b"\r\nbody\r\n.")).startswith(b"250")
            # The slot is free again: the same connection now gets its mail through.
            assert (await second.say(b"RSET")).startswith(b"250")
            await second.start_mail()
            assert (await second.say(b"DATA")).startswith(b"354")
            assert (await second.say(NORMAL % 2 + b".")).startswith(b"250")
        assert len(await stored(services)) == 2
        await normal_mail_is_accepted(port, 3)


async def test_too_many_recipients_get_452(limited: Callable[..., Settings]) -> None:
    async with running(limited(max_recipients=1)) as (_, port):
        async with raw(port) as conn:
            await conn.start_mail()
            assert (await conn.say(f"RCPT TO:<{BCC}>".encode())).startswith(b"452 4.5.3")
        await normal_mail_is_accepted(port)


async def test_an_overlong_line_gets_500_and_the_session_goes_on(
    limited: Callable[..., Settings],
) -> None:
    async with running(limited(smtp_max_line_bytes=2000)) as (services, port):
        async with raw(port) as conn:
            await conn.start_mail()
            assert (await conn.say(b"DATA")).startswith(b"354")
            body = b"Subject: long\r\n\r\n" + b"x" * 5000 + b"\r\nend\r\n."
            assert (await conn.say(body)).startswith(b"500 5.5.2 Line longer than 2000")
            await conn.start_mail()
            assert (await conn.say(b"DATA")).startswith(b"354")
            assert (await conn.say(NORMAL % 1 + b".")).startswith(b"250")
        assert len(await stored(services)) == 1
        await normal_mail_is_accepted(port, 2)


async def test_too_many_or_too_large_headers_get_552(limited: Callable[..., Settings]) -> None:
    settings = limited(smtp_max_header_count=20, smtp_max_header_bytes=4096)
    async with running(settings) as (services, port):
        async with raw(port) as conn:
            await conn.start_mail()
            assert (await conn.say(b"DATA")).startswith(b"354")
            many = b"".join(b"X-H%d: v\r\n" % i for i in range(30)) + b"\r\nbody\r\n."
            assert (await conn.say(many)).startswith(b"552 5.3.4 Too many header fields")
            await conn.start_mail()
            assert (await conn.say(b"DATA")).startswith(b"354")
            folded = b"X-Big: start\r\n" + b" folded line\r\n" * 400 + b"\r\nbody\r\n."
            assert (await conn.say(folded)).startswith(b"552 5.3.4 Header section larger")
        assert await stored(services) == []
        await normal_mail_is_accepted(port)


async def test_an_idle_connection_is_closed(limited: Callable[..., Settings]) -> None:
    async with running(limited(smtp_idle_timeout=0.5)) as (_, port):
        async with raw(port) as idle:
            assert (await idle.say(b"EHLO idle.example")).startswith(b"250")
            assert await idle.closed_by_server()  # it said nothing more
        await normal_mail_is_accepted(port)


async def test_a_data_section_that_takes_too_long_gets_421(
    limited: Callable[..., Settings],
) -> None:
    async with running(limited(smtp_data_timeout=0.5)) as (services, port):
        async with raw(port) as slow:
            await slow.start_mail()
            assert (await slow.say(b"DATA")).startswith(b"354")
            await slow.send(b"Subject: never ending\r\n")
            assert (await slow.reply()).startswith(b"421 4.4.2")
            assert await slow.closed_by_server()
        assert await stored(services) == []
        await normal_mail_is_accepted(port)


async def test_a_message_over_the_size_limit_gets_552(limited: Callable[..., Settings]) -> None:
    async with running(limited(max_message_bytes=4096)) as (services, port):
        async with raw(port) as conn:
            await conn.start_mail()
            assert (await conn.say(b"DATA")).startswith(b"354")
            big = b"Subject: big\r\n\r\n" + b"0123456789\r\n" * 1000 + b"."
            assert (await conn.say(big)).startswith(b"552 5.3.4")
        assert await stored(services) == []
        await normal_mail_is_accepted(port)


async def test_bare_lf_mail_over_1001_bytes_is_accepted(limited: Callable[..., Settings]) -> None:
    """smtplib and others send bare-LF bytes as they are: lines, not one over-long line."""
    mail = (
        b"From: Carla <carla@acme.example>\nTo: sales@crm.example\nSubject: bare LF\n"
        b"Message-ID: <bare-lf@acme.example>\n\n" + b"A line of text ending in LF only.\n" * 200
        + b".a line starting with a dot\n"
    )
    def send(port: int) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, timeout=DEADLINE) as client:
            client.ehlo()
            client.mail("carla@acme.example")
            client.rcpt(SALES)
            return client.data(mail)  # smtplib sends bytes unchanged: bare LF stays

    async with running(limited()) as (services, port):
        code, reply = await asyncio.to_thread(send, port)
        assert code == 250 and reply.startswith(b"2.0.0 Ok")
        [email] = await stored(services)
        assert email.raw.startswith(mail.rstrip(b"\n"))  # the bytes as sent, dot unstuffed
        assert b"\n.a line starting with a dot" in email.raw


async def test_a_dot_after_a_bare_lf_does_not_end_the_data(
    limited: Callable[..., Settings],
) -> None:
    """No SMTP smuggling: only CRLF . CRLF ends a message."""
    async with running(limited()) as (services, port):
        async with raw(port) as conn:
            await conn.start_mail()
            assert (await conn.say(b"DATA")).startswith(b"354")
            smuggled = (
                NORMAL % 1 + b"first\n.\r\nMAIL FROM:<evil@outside.example>\r\n"
                b"RCPT TO:<bcc@crm.example>\r\nDATA\r\nFrom: ceo@crm.example\r\n\r\nsecond\r\n."
            )
            assert (await conn.say(smuggled)).startswith(b"250")
        [email] = await stored(services)
        assert b"MAIL FROM:<evil@outside.example>" in email.raw  # one message, not two


async def test_mime_bombs_are_quarantined_with_the_reason(
    limited: Callable[..., Settings],
) -> None:
    nested = b"From: a@acme.example\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    for i in range(35):
        nested += b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
    nested += b"Content-Type: text/plain\r\n\r\nhello\r\n"
    many = b'From: a@acme.example\r\nSubject: many\r\nContent-Type: multipart/mixed; boundary="B"'
    many += b"\r\n\r\n" + b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 50 + b"--B--\r\n"
    files = b'From: a@acme.example\r\nSubject: files\r\nContent-Type: multipart/mixed; boundary="B"'
    files += b"\r\n\r\n" + b"".join(
        b'--B\r\nContent-Type: application/pdf; name="f%d.pdf"\r\n\r\nx\r\n' % i for i in range(8)
    ) + b"--B--\r\n"
    large = b"From: a@acme.example\r\nSubject: big\r\n"
    large += b"Content-Transfer-Encoding: base64\r\n\r\n"
    large += base64.encodebytes(b"A" * 6000).replace(b"\n", b"\r\n")
    settings = limited(mime_max_depth=30, mime_max_parts=40, mime_max_attachments=5,
                       mime_max_decoded_bytes=4096)
    async with running(settings) as (services, port):
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
            for mail in (nested, many, files, large):
                _, reply = await client.sendmail("a@acme.example", [SALES], mail)
                assert "queued" in reply  # accepted; deciding quarantines it
        await settled(services)
        async with services.sessions() as session:
            reasons = [q.reason for q in await session.scalars(
                select(QuarantinedMail).order_by(QuarantinedMail.id))]
        assert reasons[0].startswith("limit exceeded: MIME parts nested 31 deep")
        assert reasons[1] == "limit exceeded: 41 MIME parts (at most 40)"
        assert reasons[2] == "limit exceeded: 8 attachments (at most 5)"
        assert reasons[3].startswith("limit exceeded: ") and "decoded content" in reasons[3]
        await normal_mail_is_accepted(port)
