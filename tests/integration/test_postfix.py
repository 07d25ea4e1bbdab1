"""A real Postfix in front of mailsvc, set up as docs/postfix.md says: relay and pipe mode."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mailsvc.crmstore.db import create_engine, create_session_factory
from mailsvc.crmstore.demo import seed
from mailsvc.crmstore.models import Email, EmailLink
from tests.conftest import BCC, SALES, SUPPORT, base_settings
from tests.integration.test_smtp_intake import running
from tests.support.postfix import (
    PIPE_USER,
    SENDER,
    Postfix,
    failed_recipients,
    running_postfix,
)
from tests.support.waiting import wait_for

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs" / "postfix.md"
NOT_INTAKE = "nobody-here@crm.example"
# Nothing listens there: the store is "down" (asyncpg gets a refused connection).
STORE_DOWN_URL = "postgresql+asyncpg://postgres@127.0.0.1:{port}/mailsvc"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def doc_blocks(heading: str) -> list[str]:
    """The fenced code blocks of one ``## heading`` section of docs/postfix.md."""
    section = DOCS.read_text().split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```[a-z]*\n(.*?)```", section, flags=re.S)


def main_cf(block: str) -> dict[str, str]:
    """``name = value`` lines of a main.cf block (comments dropped)."""
    lines = (line.split("#", 1)[0].strip() for line in block.splitlines())
    pairs = (line.split("=", 1) for line in lines if "=" in line)
    return {name.strip(): value.strip() for name, value in pairs}


def with_capture(transport_maps: str) -> str:
    """The docs' inline transport map plus the route of bounces to the test's capture."""
    return transport_maps.replace("inline:{ ", "inline:{ sender.test=capture:, ", 1)


def mail(n: int, subject: str, prefix: str = "pf") -> bytes:
    message = EmailMessage()
    message["From"] = "Anna Seller <anna.seller@mailsvc.example>"
    message["To"] = "Carla Customer <carla.customer@acme.example>"
    message["Subject"] = subject
    message["Message-ID"] = f"<{prefix}-{n}@mailsvc.example>"
    message.set_content(f"Hello Carla,\n\nmail number {n} about the quote.\n\nAnna\n")
    return message.as_bytes()


@asynccontextmanager
async def store(url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(url)
    try:
        yield create_session_factory(engine)
    finally:
        await engine.dispose()


async def opportunity_number(sessions: async_sessionmaker[AsyncSession]) -> tuple[str, int]:
    async with sessions() as session, session.begin():
        demo = await seed(session)
    opportunity = demo["opportunities"][0]
    return str(opportunity["number"]), int(opportunity["id"])


async def stored_ids(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessions() as session:
        return [str(m) for m in await session.scalars(select(Email.message_id))]


async def linked_to(sessions: async_sessionmaker[AsyncSession], opportunity: int) -> int:
    async with sessions() as session:
        return int(await session.scalar(
            select(func.count(func.distinct(EmailLink.email_id))).where(
                EmailLink.target_type == "opportunity", EmailLink.target_id == opportunity)
        ) or 0)


async def inject(postfix: Postfix, raw: bytes, *recipients: str) -> None:
    # sendmail only writes to the maildrop; a thread keeps an in-process intake answering.
    await asyncio.to_thread(postfix.sendmail, raw, *recipients)


async def delivered(
    postfix: Postfix, sessions: async_sessionmaker[AsyncSession], expected: int,
    within: float = 60,
) -> list[str]:
    """Wait until ``expected`` mails are stored and Postfix's queue is empty (bounces included)."""

    async def done() -> list[str]:
        ids = await stored_ids(sessions)
        return ids if len(ids) >= expected and postfix.queued() == 0 else []

    try:
        return await wait_for(done, within=within, interval=0.1, what=f"{expected} mails")
    except AssertionError:
        print(postfix.log)  # shown by pytest on failure
        raise


def bounced_lines(postfix: Postfix) -> list[str]:
    """The recipients Postfix logged as bounced (the capture's own deliveries included)."""
    return re.findall(r"to=<([^>]*)>.*status=bounced", postfix.log)


@asynccontextmanager
async def serve(
    database_url: str, tmp_path: Path, extra: dict[str, str] | None = None,
    listens_on: int | None = None,
) -> AsyncIterator[int]:
    """`mailsvc serve` as a process, as an operator runs it (``extra`` settings added); yields its
    SMTP port once it (and ``listens_on``, e.g. an LMTP port) accepts connections."""
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "MAILSVC_DATABASE_URL": database_url,
        "MAILSVC_SMTP_PORT": str(port),
        "MAILSVC_API_ENABLED": "false",
        "MAILSVC_BCC_ADDRESS": BCC,
        "MAILSVC_SALES_ADDRESS": SALES,
        "MAILSVC_SUPPORT_ADDRESS": SUPPORT,
        # These tests are about delivery through Postfix; sender trust is test_smtp_trust.py's.
        "MAILSVC_SENDER_VERIFICATION": "off",
        **(extra or {}),
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:  # a file, not a pipe: nobody drains a pipe while mail flows
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailsvc", "serve", env=env,
            stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    async def listening() -> bool:
        assert process.returncode is None, log.read_text()
        for each in (port, listens_on or port):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", each)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
        return True

    try:
        await wait_for(listening, within=120, what="mailsvc serve to listen")
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
    assert process.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()


# --- relay mode -------------------------------------------------------------------------------


async def test_relay_twenty_mails_arrive_once_each_and_are_linked(
    database_url: str, tmp_path: Path
) -> None:
    settings = main_cf(doc_blocks("Relay mode")[0])  # relay_domains + transport_maps
    async with store(database_url) as sessions, serve(database_url, tmp_path) as port:
        number, opportunity = await opportunity_number(sessions)
        settings["transport_maps"] = with_capture(
            settings["transport_maps"].replace(":8025", f":{port}"))
        with running_postfix(settings) as postfix:
            for n in range(20):
                await inject(postfix, mail(n, f"Re: Your quote [{number}]"), BCC)
            ids = await delivered(postfix, sessions, 20)
            assert sorted(ids) == sorted(f"pf-{n}@mailsvc.example" for n in range(20))
            assert await linked_to(sessions, opportunity) == 20
            assert postfix.log.count("status=sent") == 20
            assert postfix.bounces() == []


async def test_relay_bounces_only_the_recipient_refused_with_550(database_url: str) -> None:
    async with running(base_settings(database_url, smtp_port=0)) as (services, port):
        with running_postfix({"relayhost": f"[127.0.0.1]:{port}"}) as postfix:
            await inject(postfix, mail(1, "Both recipients"), BCC, NOT_INTAKE)
            ids = await delivered(postfix, services.sessions, 1)
            assert ids == ["pf-1@mailsvc.example"]
            bounces = postfix.bounces()
            assert len(bounces) == 1
            assert failed_recipients(bounces[0]) == {NOT_INTAKE}
            assert "550 5.1.1" in postfix.log
            assert bounced_lines(postfix) == [NOT_INTAKE]
            assert re.search(rf"to=<{re.escape(BCC)}>.*status=sent", postfix.log)


async def test_relay_store_down_defers_then_every_mail_arrives_once(database_url: str) -> None:
    port = free_port()
    down = base_settings(STORE_DOWN_URL.format(port=free_port()), smtp_port=port)
    with running_postfix({"relayhost": f"[127.0.0.1]:{port}"}) as postfix:
        async with running(down):
            for n in range(10):
                await inject(postfix, mail(n, "While the store is down"), BCC)

            async def all_deferred() -> bool:
                return (postfix.log.count("451 4.3.0") >= 10
                        and postfix.queued("deferred") == 10)

            await wait_for(all_deferred, within=60, interval=0.1, what="10 mails deferred")
        async with running(base_settings(database_url, smtp_port=port)) as (services, _):
            await asyncio.to_thread(postfix.flush)
            ids = await delivered(postfix, services.sessions, 10)
        assert sorted(ids) == sorted(f"pf-{n}@mailsvc.example" for n in range(10))
        assert postfix.bounces() == []
        assert bounced_lines(postfix) == []


# --- pipe mode --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pipe_venv() -> Iterator[Path]:
    """A virtualenv from the system Python that the pipe user can run, with this working tree.

    Made once per session from a copy of the tree (a build in place would leave build/ behind).
    """
    root = Path(tempfile.mkdtemp(prefix="mailsvc-pipe-venv-"))
    os.chmod(root, 0o755)
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "mailsvc", source / "mailsvc",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(root / "venv")], check=True)
    subprocess.run([str(root / "venv" / "bin" / "pip"), "install", "-q", str(source)],
                   check=True, capture_output=True)
    try:
        yield root / "venv"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def pipe_setup(root: Path, venv: Path) -> tuple[dict[str, str], str]:
    """main.cf settings and the master.cf service of the docs, with this test's paths and user."""
    wrapper, master, main = doc_blocks("Pipe mode")[:3]
    script = root / "mailsvc-pipe"
    script.write_text(
        wrapper.replace("/etc/mailsvc/mailsvc.env", str(root / "mailsvc.env"))
        .replace("/var/lib/mailsvc", str(root / "mailsvc"))
        .replace("/opt/mailsvc/venv", str(venv))
    )
    script.chmod(0o755)
    master = (master.replace("user=mailsvc", f"user={PIPE_USER}")
              .replace("/usr/local/bin/mailsvc-pipe", str(script)))
    settings = main_cf(main)
    settings["transport_maps"] = with_capture(settings["transport_maps"])
    return settings, master


def write_env(root: Path, database_url: str) -> None:
    (root / "mailsvc.env").write_text(
        f"MAILSVC_DATABASE_URL={database_url}\nMAILSVC_BCC_ADDRESS={BCC}\n"
        f"MAILSVC_SALES_ADDRESS={SALES}\nMAILSVC_SUPPORT_ADDRESS={SUPPORT}\n"
        "MAILSVC_SENDER_VERIFICATION=off\n"
    )
    (root / "mailsvc.env").chmod(0o644)


async def test_pipe_delivers_defers_while_store_is_down_and_bounces_non_intake(
    database_url: str, pipe_venv: Path
) -> None:
    postfix = Postfix()
    data = postfix.root / "mailsvc"
    data.mkdir()
    if database_url.startswith("sqlite"):  # the pipe user writes the file and its journal
        path = Path(database_url.split(":///", 1)[1])
        shutil.copy(path, data / "mailsvc.db")
        shutil.chown(data / "mailsvc.db", PIPE_USER)
        database_url = f"sqlite+aiosqlite:///{data / 'mailsvc.db'}"
    shutil.chown(data, PIPE_USER)
    postfix.main, postfix.master = pipe_setup(postfix.root, pipe_venv)
    postfix.write_config()
    write_env(postfix.root, STORE_DOWN_URL.format(port=free_port()))
    try:
        postfix.start()
        async with store(database_url) as sessions:
            number, opportunity = await opportunity_number(sessions)
            for n in range(4):
                await inject(postfix, mail(n, f"Re: Your quote [{number}]", "pipe"), BCC)

            async def all_deferred() -> bool:  # `mailsvc ingest` exited 75
                return postfix.queued("deferred") == 4

            await wait_for(all_deferred, within=60, interval=0.1, what="4 mails deferred")
            # What the command printed shows in the log (and would show in a bounce).
            assert postfix.log.count("status=deferred (temporary failure. Command output: "
                                     "store unavailable") >= 4
            assert await stored_ids(sessions) == []

            write_env(postfix.root, database_url)  # the store is back
            stranger = mail(9, f"Re: Your quote [{number}], to a stranger too", "pipe")
            await inject(postfix, stranger, BCC, NOT_INTAKE)
            await asyncio.to_thread(postfix.flush)
            ids = await delivered(postfix, sessions, 5)
            assert sorted(ids) == sorted(f"pipe-{n}@mailsvc.example" for n in (0, 1, 2, 3, 9))
            assert await linked_to(sessions, opportunity) == 5
            async with sessions() as session:  # the wrapper passes ${sender} on
                senders = set(await session.scalars(select(Email.envelope_from)))
            assert senders == {SENDER}
            bounces = postfix.bounces()
            assert len(bounces) == 1, postfix.log
            assert failed_recipients(bounces[0]) == {NOT_INTAKE}  # exit 64
            assert "is not an intake address" in postfix.log
            assert bounced_lines(postfix) == [NOT_INTAKE]
    finally:
        postfix.stop()
        if not os.environ.get("KEEP_POSTFIX"):
            shutil.rmtree(postfix.root, ignore_errors=True)
