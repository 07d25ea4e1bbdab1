"""The LMTP intake over TCP and a unix socket, with a real LMTP client (smtplib.LMTP) and a real
store: one reply per accepted recipient after the commit, refusals as over SMTP."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import smtplib
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from mailsvc.bootstrap import Services, open_services
from mailsvc.config import Settings
from mailsvc.crmstore.intake_writer import intake_path
from mailsvc.crmstore.models import Email
from mailsvc.ingest.lmtp import LmtpIntake, start_lmtp
from mailsvc.ports import PortUnavailable
from tests.conftest import BCC, SALES, SUPPORT, base_settings
from tests.integration.test_serve import free_port, wait_until_listening
from tests.support.waiting import undecided, wait_for

NOT_INTAKE = "nobody-here@crm.example"
SENDER = "someone@outside.example"


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Services, LmtpIntake]]:
    """The LMTP intake as `mailsvc serve` runs it: pipeline (deciding too) and the servers."""
    async with open_services(settings, migrate=False) as services:
        await services.pipeline.start()
        intake = await start_lmtp(services.pipeline, settings.smtp)
        try:
            yield services, intake
        finally:
            intake.close()
            await intake.wait_closed()
            await services.pipeline.stop()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Short and 0755: a unix socket path must fit in 108 bytes (pytest's tmp_path may not).
    folder = Path(tempfile.mkdtemp(prefix="mailsvc-lmtp-"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def message(message_id: str, subject: str = "A question", body: str = "Hello,\n") -> bytes:
    mail = EmailMessage()
    mail["From"] = "Carla Customer <carla.customer@acme.example>"
    mail["To"] = SUPPORT
    mail["Subject"] = subject
    mail["Message-ID"] = f"<{message_id}>"
    mail.set_content(body)
    return mail.as_bytes()


@dataclass(frozen=True)
class Transaction:
    rcpt: dict[str, tuple[int, str]]  # the reply to each RCPT
    data: list[tuple[int, str]]  # the replies after DATA, in RCPT order of the accepted ones


def deliver(address: str | int, data: bytes, recipients: list[str]) -> Transaction:
    """One LMTP transaction over TCP (a port on 127.0.0.1) or a unix socket (a path)."""
    host, port = ("127.0.0.1", address) if isinstance(address, int) else (address, 0)
    with smtplib.LMTP(host, port, timeout=60) as client:
        code, _ = client.ehlo()  # LHLO
        assert code == 250
        assert client.mail(SENDER)[0] == 250
        rcpt = {r: _text(client.rcpt(r)) for r in recipients}
        accepted = sum(1 for code, _ in rcpt.values() if code == 250)
        if not accepted:
            return Transaction(rcpt, [])
        replies = [_text(client.data(data))]
        replies += [_text(client.getreply()) for _ in range(accepted - 1)]
        return Transaction(rcpt, replies)


def _text(reply: tuple[int, bytes]) -> tuple[int, str]:
    return reply[0], reply[1].decode()


async def count(services: Services, model: Any) -> int:
    async with services.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def decided(services: Services, expected: int) -> None:
    async def done() -> bool:
        return await count(services, Email) == expected and not await undecided(services)

    await wait_for(done, within=60, what=f"{expected} mail(s) decided")


async def test_tcp_one_reply_per_recipient_and_a_duplicate_stored_once(
    make_settings: Callable[..., Settings],
) -> None:
    async with running(make_settings(lmtp_port=0)) as (services, intake):
        assert intake.port is not None
        data = message("lmtp-1@acme.example")
        first = await asyncio.to_thread(deliver, intake.port, data, [SUPPORT, NOT_INTAKE, BCC])
        assert first.rcpt[NOT_INTAKE][0] == 550  # refused at RCPT, as over SMTP
        assert first.rcpt[SUPPORT][0] == first.rcpt[BCC][0] == 250
        assert [code for code, _ in first.data] == [250, 250]  # SUPPORT, then BCC
        assert all("queued as" in text for _, text in first.data)
        await decided(services, 1)

        # The same Message-ID again (other bytes, other recipients): 250 each, nothing new.
        resent = message("lmtp-1@acme.example", body="Resent by the client\n")
        again = await asyncio.to_thread(deliver, intake.port, resent, [SALES, SUPPORT])
        assert [code for code, _ in again.data] == [250, 250]
        assert all("duplicate" in text for _, text in again.data)
        await decided(services, 1)
        async with services.sessions() as session:
            email = await session.scalar(select(Email))
        assert email is not None and email.message_id == "lmtp-1@acme.example"
        assert email.source == "lmtp"


async def test_unix_socket_delivers_and_is_made_replaced_and_removed(
    make_settings: Callable[..., Settings], socket_dir: Path
) -> None:
    path = socket_dir / "lmtp.sock"
    # A socket file left behind by a process that is gone: replaced.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))
    settings = make_settings(lmtp_socket=path, lmtp_socket_mode=0o660)
    async with running(settings) as (services, intake):
        assert intake.port is None
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        # A live server's socket is never taken over.
        with pytest.raises(PortUnavailable, match=r"MAILSVC_LMTP_SOCKET.*another server"):
            await start_lmtp(services.pipeline, settings.smtp)
        done = await asyncio.to_thread(
            deliver, str(path), message("unix-1@acme.example"), [SUPPORT, SALES])
        assert [code for code, _ in done.data] == [250, 250]
        await decided(services, 1)
    assert not path.exists()  # removed on shutdown


async def test_a_file_in_the_way_is_refused_with_one_line(
    make_settings: Callable[..., Settings], socket_dir: Path
) -> None:
    path = socket_dir / "lmtp.sock"
    path.write_text("not a socket")
    with pytest.raises(PortUnavailable) as refused:
        async with running(make_settings(lmtp_socket=path)):
            pass
    assert str(refused.value) == (
        f"cannot listen on {path} (MAILSVC_LMTP_SOCKET): a file that is not a socket is in the way"
    )
    assert path.read_text() == "not a socket"


async def test_oversize_is_refused_for_each_recipient(
    make_settings: Callable[..., Settings], socket_dir: Path
) -> None:
    path = socket_dir / "lmtp.sock"
    settings = make_settings(lmtp_port=0, lmtp_socket=path, max_message_bytes=2048)
    async with running(settings) as (services, intake):
        big = message("big-1@acme.example", body="x" * 4000 + "\n")
        for address in (intake.port, str(path)):
            assert address is not None
            done = await asyncio.to_thread(deliver, address, big, [SUPPORT, BCC])
            assert done.data == [(552, "5.3.4 Message too big")] * 2
        # The connection goes on: the next message is taken.
        small = await asyncio.to_thread(deliver, str(path), message("ok-1@acme.example"), [BCC])
        assert [code for code, _ in small.data] == [250]
        await decided(services, 1)


async def test_store_down_answers_451_for_each_recipient_and_the_retry_is_stored_once(
    database_url: str, socket_dir: Path
) -> None:
    data = message("retry-1@acme.example")
    path = socket_dir / "lmtp.sock"
    blocker: sqlite3.Connection | None = None
    if database_url.startswith("sqlite"):
        # Another writer holds the intake file's write lock: the accept commit is late (451).
        down = base_settings(database_url, lmtp_port=0, lmtp_socket=path,
                             accept_timeout_seconds=1.0)
        blocker = sqlite3.connect(intake_path(database_url.split(":///", 1)[1]),
                                  isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
    else:  # a PostgreSQL server that does not answer: a real connection failure
        down = base_settings("postgresql+asyncpg://postgres@127.0.0.1:1/none", lmtp_port=0,
                             lmtp_socket=path)
    try:
        async with running(down) as (_, intake):
            for address in (intake.port, str(path)):
                assert address is not None
                done = await asyncio.to_thread(deliver, address, data, [SUPPORT, SALES, BCC])
                assert [code for code, _ in done.data] == [451, 451, 451]
                assert all(text.startswith("4.3.0") for _, text in done.data)
    finally:
        if blocker is not None:
            blocker.execute("ROLLBACK")
            blocker.close()
    # The client retries once the store is back: stored once (a late commit counts as duplicate).
    async with running(base_settings(database_url, lmtp_socket=path)) as (services, _):
        done = await asyncio.to_thread(deliver, str(path), data, [SUPPORT, SALES, BCC])
        assert [code for code, _ in done.data] == [250, 250, 250]
        await decided(services, 1)


def test_serve_workers_share_the_lmtp_port_and_one_owns_the_socket(
    database_url: str, socket_dir: Path
) -> None:
    """`mailsvc serve --workers 2`: both accept processes listen on the LMTP port (SO_REUSEPORT,
    like SMTP), the first alone on the unix socket, which is gone after the stop."""
    lmtp_port, api_port, path = free_port(), free_port(), socket_dir / "lmtp.sock"
    env = {
        "PATH": os.environ["PATH"], "MAILSVC_DATABASE_URL": database_url,
        "MAILSVC_SMTP_PORT": str(free_port()), "MAILSVC_API_PORT": str(api_port),
        "MAILSVC_LMTP_PORT": str(lmtp_port), "MAILSVC_LMTP_SOCKET": str(path),
        "MAILSVC_BCC_ADDRESS": BCC, "MAILSVC_SALES_ADDRESS": SALES,
        "MAILSVC_SUPPORT_ADDRESS": SUPPORT, "MAILSVC_SENDER_VERIFICATION": "off",
    }
    process = subprocess.Popen([sys.executable, "-m", "mailsvc", "serve", "--workers", "2"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until_listening(lmtp_port, process)
        wait_until_listening(api_port, process)
        for n in range(20):  # a connection each: the kernel spreads them over the workers
            done = deliver(lmtp_port, message(f"w-{n}@acme.example"), [SUPPORT])
            assert [code for code, _ in done.data] == [250]
        for n in range(5):
            done = deliver(str(path), message(f"s-{n}@acme.example"), [BCC, SUPPORT])
            assert [code for code, _ in done.data] == [250, 250]
        deadline = time.monotonic() + 60  # accepted at 250; the decide workers follow
        while True:
            total = httpx.get(f"http://127.0.0.1:{api_port}/api/v1/emails?limit=1",
                              timeout=60).json()["total"]
            if total >= 25 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert total == 25
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    log = stderr.decode()
    assert process.returncode == 0, log
    assert "Traceback" not in log
    tcp = set(re.findall(rf"\[(\d+)\] mailsvc\.ingest\.lmtp LMTP intake listening on "
                         rf"127\.0\.0\.1:{lmtp_port}", log))
    unix = re.findall(r"\[(\d+)\] mailsvc\.ingest\.lmtp LMTP intake listening on /", log)
    assert len(tcp) == 2, log
    assert len(unix) == 1 and unix[0] in tcp, log
    assert not path.exists()
