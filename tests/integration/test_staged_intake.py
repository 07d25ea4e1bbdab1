"""The staged intake: accepted mail is durable before the 250, decided once, in arrival order, by
real decide processes that may be killed at any moment."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email.message import EmailMessage
from typing import IO, Any

import aiosmtplib
import pytest
from sqlalchemy import func, select, text

from mailsvc.bootstrap import Services, open_services
from mailsvc.config import Settings
from mailsvc.crmstore.models import (
    Email,
    EmailLink,
    InboxLead,
    LinkTarget,
    OutboxEvent,
)
from mailsvc.ingest.decider import Decider, parse_pool
from mailsvc.ingest.parse import mail_key
from mailsvc.ingest.smtp import start_smtp
from mailsvc.mail import Envelope, RawMail
from tests.conftest import BCC, SALES, SUPPORT
from tests.support.waiting import intake_rows, undecided, wait_for

SALES_ENVELOPE = Envelope("someone@outside.example", (SALES,), "sales", "smtp")


def mail(sender: str, message_id: str, subject: str, in_reply_to: str | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = SALES
    message["Subject"] = subject
    message["Message-ID"] = f"<{message_id}>"
    if in_reply_to:
        message["In-Reply-To"] = f"<{in_reply_to}>"
        message["References"] = f"<{in_reply_to}>"
    message.set_content(f"Hello,\n\nthis is {message_id}.\n\nRegards\n" + "x" * 2000)
    return bytes(message)


def conversations(senders: int, replies: int) -> list[bytes]:
    """Each new sender's first mail, then its replies in the same thread (in arrival order)."""
    mails = []
    for s in range(senders):
        sender = f"Person {s} <person{s}@prospect{s}.example>"
        first = f"first-{s}@prospect{s}.example"
        mails.append(mail(sender, first, f"Question {s}"))
        mails.extend(
            mail(sender, f"reply-{s}-{r}@prospect{s}.example", f"Re: Question {s}", first)
            for r in range(replies)
        )
    return mails


async def scalar(services: Services, query: Any) -> int:
    async with services.sessions() as session:
        return int(await session.scalar(query) or 0)


async def count(services: Services, model: Any) -> int:
    return await scalar(services, select(func.count()).select_from(model))


async def events(services: Services, kind: str) -> int:
    return await scalar(
        services, select(func.count()).select_from(OutboxEvent).where(OutboxEvent.type == kind)
    )


async def assert_each_conversation_is_one_lead(services: Services, senders: int, size: int) -> None:
    """One lead per sender, every mail of the conversation linked to it, each mail stored once
    and published once."""
    assert await undecided(services) == 0
    assert await count(services, Email) == senders * size
    assert await count(services, InboxLead) == senders
    assert await events(services, "email.received") == senders * size
    async with services.sessions() as session:
        per_lead = dict((await session.execute(
            select(EmailLink.target_id, func.count()).where(
                EmailLink.target_type == LinkTarget.INBOX_LEAD
            ).group_by(EmailLink.target_id)
        )).all())
    assert sorted(per_lead.values()) == [size] * senders


@asynccontextmanager
async def smtp_intake(
    settings: Settings, *, decide: bool = True
) -> AsyncIterator[tuple[Services, int]]:
    async with open_services(settings, migrate=False) as services:
        await services.pipeline.start(decide=decide)
        server = await start_smtp(services.pipeline, settings.smtp)
        try:
            yield services, server.sockets[0].getsockname()[1]
        finally:
            server.close()
            await server.wait_closed()
            await services.pipeline.stop()


async def send(port: int, data: bytes, rcpt: str = SALES) -> tuple[int, str]:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
        errors, reply = await client.sendmail("someone@outside.example", [rcpt], data)
    assert errors == {}
    return 250, reply


async def test_a_mail_accepted_but_not_decided_yet_is_a_duplicate(
    make_settings: Callable[..., Settings],
) -> None:
    # No decide loop anywhere: the mail stays accepted, not decided.
    async with smtp_intake(make_settings(smtp_port=0), decide=False) as (services, port):
        data = mail("New Person <new@prospect.example>", "dup-1@prospect.example", "Hello")
        _, first = await send(port, data)
        assert "queued as" in first
        _, again = await send(port, data)
        assert "duplicate" in again
        assert await undecided(services) == 1
        assert await count(services, Email) == 0
        assert await count(services, OutboxEvent) == 0
        # The same bytes through another adapter: the same key, the same answer.
        other = await services.pipeline.accept(RawMail(data, Envelope(None, (BCC,), "bcc", "imap")))
        assert other.kind == "duplicate"
        [row] = await intake_rows(services)
        assert row.dedup_key == mail_key(data)
        assert (row.mail_from, row.rcpt_tos, row.role, row.source) == (
            "someone@outside.example", [SALES], "sales", "smtp"
        )
        # Decided now (here), once; accepted again afterwards: still a duplicate.
        decided = await services.pipeline.decider.drain({row.id: row.dedup_key})
        assert decided[row.id].kind == "lead_created"
        assert (await services.pipeline.accept(RawMail(data, SALES_ENVELOPE))).kind == "duplicate"
        assert await count(services, Email) == 1
        assert await undecided(services) == 0
        assert await events(services, "email.received") == 1


async def test_an_accept_commit_that_hangs_answers_451_within_the_timeout(
    sqlite_url: str,
) -> None:
    import sqlite3

    from mailsvc.crmstore.intake_writer import intake_path
    from tests.conftest import base_settings

    settings = base_settings(sqlite_url, smtp_port=0, accept_timeout_seconds=1.0)
    async with smtp_intake(settings, decide=False) as (services, port):
        assert await undecided(services) == 0  # the intake file is there
        blocker = sqlite3.connect(intake_path(sqlite_url.split(":///", 1)[1]),
                                  isolation_level=None)
        data = mail("Late Person <late@prospect.example>", "late-1@prospect.example", "Hello")
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the intake's write lock
        try:
            with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                await send(port, data)
            assert refused.value.code == 451
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

        # The 451 came from the timeout, not from the store giving up: the commit went on and
        # lands once the lock is free; the sender's retry is then a duplicate, nothing twice.
        async def committed_late() -> bool:
            return await undecided(services) == 1

        await wait_for(committed_late, within=60, what="the late accept commit")
        _, reply = await send(port, data)
        assert "duplicate" in reply
        assert await undecided(services) == 1


async def test_a_burst_of_a_first_mail_and_five_replies_lands_as_one_lead(
    make_settings: Callable[..., Settings],
) -> None:
    """Sent at once over six SMTP connections and decided in small batches (by two claimers on
    PostgreSQL): the outcome is the one-by-one outcome, one lead with six mails."""
    settings = make_settings(smtp_port=0, decide_batch_size=2)
    async with smtp_intake(settings) as (services, port):
        second: asyncio.Task[None] | None = None
        stop = asyncio.Event()
        if not settings.is_sqlite:
            second = asyncio.create_task(Decider(services.pipeline).run(stop))
        try:
            replies = await asyncio.gather(*(send(port, data) for data in conversations(1, 5)))
            assert all("queued as" in reply for _, reply in replies)

            async def decided() -> bool:
                return await count(services, Email) == 6 and await undecided(services) == 0

            await wait_for(decided, within=120, what="six mails decided")
        finally:
            stop.set()
            if second is not None:
                await second
        await assert_each_conversation_is_one_lead(services, senders=1, size=6)


async def test_a_decider_parses_in_its_pool_once_the_pool_is_up_with_the_same_outcome(
    make_settings: Callable[..., Settings],
) -> None:
    """The parsing processes start in the background (the decider parses itself meanwhile);
    once they are up, a batch is parsed there, and ahead of the step that applies it on SQLite,
    and the conversations come out as they do one by one."""
    settings = make_settings(decide_batch_size=20)
    with parse_pool(2) as pool:
        assert pool is not None

        async def up() -> bool:
            return pool.ready()

        await wait_for(up, within=180, what="the parsing processes up")
        submitted = pool.submitted
        async with open_services(settings, migrate=False) as services:
            decider = Decider(services.pipeline, parse_pool=pool)
            try:
                accepted = await services.pipeline.accept_many(
                    [RawMail(data, SALES_ENVELOPE) for data in conversations(6, 9)]
                )
                outcomes = await services.pipeline.decide_accepted(accepted, decider)
            finally:
                await decider.close()
            assert [o.kind for o in outcomes].count("lead_created") == 6
            await assert_each_conversation_is_one_lead(services, senders=6, size=10)
        assert pool.submitted > submitted  # parsed there, not here


async def test_a_parsing_process_killed_mid_batch_loses_no_mail(
    make_settings: Callable[..., Settings],
) -> None:
    """A parsing process dies (SIGKILL: the OOM killer, an operator) while a batch waits to be
    parsed: new processes take over, the batch is parsed again, and every conversation comes
    out as one by one; nothing is quarantined for it."""
    settings = make_settings(decide_batch_size=60)
    with parse_pool(2) as pool:
        assert pool is not None

        async def up() -> bool:
            return pool.ready()

        await wait_for(up, within=180, what="the parsing processes up")
        first = pool.pids()
        # Both processes busy, so the batch handed over next is still in the pool when one dies.
        busy = [pool.submit(time.sleep, 60) for _ in first]
        async with open_services(settings, migrate=False) as services:
            decider = Decider(services.pipeline, parse_pool=pool)
            try:
                accepted = await services.pipeline.accept_many(
                    [RawMail(data, SALES_ENVELOPE) for data in conversations(12, 9)]
                )
                submitted = pool.submitted
                deciding = asyncio.create_task(
                    services.pipeline.decide_accepted(accepted, decider))

                async def handed_over() -> bool:
                    assert not deciding.done()
                    return pool.submitted > submitted

                await wait_for(handed_over, within=120, what="a batch handed to the pool")
                os.kill(min(first), signal.SIGKILL)
                outcomes = await deciding
            finally:
                await decider.close()
                await asyncio.gather(*busy, return_exceptions=True)
            assert [o.kind for o in outcomes].count("lead_created") == 12
            assert not [o for o in outcomes if o.kind == "quarantined"]
            await assert_each_conversation_is_one_lead(services, senders=12, size=10)
            assert not first & pool.pids()  # a new set of processes took over


async def test_submit_waits_for_the_decision_and_reports_it(
    make_settings: Callable[..., Settings],
) -> None:
    async with smtp_intake(make_settings(smtp_port=0)) as (services, _):
        data = mail("Help Seeker <help@prospect.example>", "help-1@prospect.example", "Broken")
        outcome = await services.pipeline.submit(
            RawMail(data, Envelope(None, (SUPPORT,), "support", "imap"))
        )
        assert outcome.kind == "ticket_created"
        assert outcome.email_id is not None and outcome.links["ticket"] is not None


async def test_the_backlog_is_visible_in_readyz_metrics_and_the_cli(
    make_settings: Callable[..., Settings], database_url: str,
) -> None:
    import httpx

    from mailsvc.api.app import create_app

    async with open_services(make_settings(), migrate=False) as services:
        await accept(services, conversations(1, 2))  # three mails, nobody deciding
        transport = httpx.ASGITransport(app=create_app(services))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 200  # a backlog never makes the instance unready
            backlog = ready.json()["checks"]["intake_backlog"]
            assert backlog["count"] == 3 and backlog["oldest_age_seconds"] >= 0
            metrics = (await client.get("/metrics")).text
            assert "mailsvc_intake_backlog_messages 3.0" in metrics
            assert "mailsvc_intake_backlog_oldest_seconds" in metrics
        status = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "mailsvc", "status", "--json"],
            env={"PATH": os.environ["PATH"], "MAILSVC_DATABASE_URL": database_url},
            capture_output=True, check=True, timeout=120,
        )
        assert json.loads(status.stdout)["intake_backlog"]["count"] == 3
        assert json.loads(status.stdout)["decide_workers_running"] is False
        await services.pipeline.decider.drain({})  # nothing asked for: returns at once
        while await services.pipeline.decider.step():
            pass
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/readyz")).json()["checks"]["intake_backlog"] == {
                "count": 0, "oldest_age_seconds": 0.0
            }


async def test_a_mail_that_fails_to_decide_is_retried_then_quarantined_and_blocks_nobody(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mailsvc.crmstore.models import QuarantinedMail
    from mailsvc.ingest import pipeline as pipeline_module

    real_decide = pipeline_module.decide

    def failing(mail: Any, *args: Any, **kwargs: Any) -> Any:
        if mail.message_id and mail.message_id.startswith("first-1@"):
            raise RuntimeError("a bug this mail trips")
        return real_decide(mail, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "decide", failing)
    async with open_services(make_settings(decide_max_attempts=3), migrate=False) as services:
        await accept(services, conversations(3, 0))  # first-0, first-1 (poison), first-2
        decider = services.pipeline.decider
        first = await decider.step()
        assert sorted(o.kind for o in first.values()) == ["lead_created", "lead_created"]
        [poison] = await intake_rows(services)
        assert poison.attempts == 1
        assert "a bug this mail trips" in (poison.last_error or "")
        assert await decider.step() == {}  # tried again (alone now): still failing, counted
        last = await decider.step()  # out of attempts: quarantined with the reason
        assert [o.kind for o in last.values()] == ["quarantined"]
        assert "processing error" in (next(iter(last.values())).reason or "")
        assert await undecided(services) == 0
        assert await count(services, QuarantinedMail) == 1
        assert await count(services, Email) == 2


# ------------------------------------------------------------------ real decide processes


def decide_process(database_url: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
    # Its log goes to a file, not a pipe: a worker logging a line per mail would fill a pipe
    # nobody reads until the end, and block on its next line.
    log = tempfile.TemporaryFile()  # noqa: SIM115 - kept open for log_of, closed with the test run
    process = subprocess.Popen(
        [sys.executable, "-m", "mailsvc", "decide", "--workers", "1", *args],
        env={
            "PATH": os.environ["PATH"],
            "MAILSVC_DATABASE_URL": database_url,
            "MAILSVC_BCC_ADDRESS": BCC,
            "MAILSVC_SALES_ADDRESS": SALES,
            "MAILSVC_SUPPORT_ADDRESS": SUPPORT,
            **env,
        },
        stdout=subprocess.DEVNULL, stderr=log,
    )
    _LOGS[process.pid] = log
    return process


_LOGS: dict[int, IO[bytes]] = {}


def log_of(process: subprocess.Popen[bytes]) -> str:
    """What the process has written to stderr so far."""
    log = _LOGS[process.pid]
    log.seek(0)
    return log.read().decode()


def stop(process: subprocess.Popen[bytes]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    return log_of(process)


async def accept(services: Services, mails: list[bytes]) -> None:
    for start in range(0, len(mails), 100):
        chunk = [RawMail(data, SALES_ENVELOPE) for data in mails[start:start + 100]]
        accepted = await services.pipeline.accept_many(chunk)
        assert all(a.outcome.kind == "accepted" for a in accepted)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listed:
            return [int(child) for child in listed.read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


async def test_the_parsing_processes_of_a_killed_decide_worker_end_with_it(
    sqlite_url: str,
) -> None:
    """SIGKILLed, a decide worker cannot shut its parsing processes down: they (and the fork
    server they come from) notice it is gone and end, instead of waiting for work for ever."""
    worker = decide_process(sqlite_url, MAILSVC_DECIDE_JOBS="2")
    try:
        async def parsing() -> list[int]:
            assert worker.poll() is None, log_of(worker)
            servers = _children(worker.pid)
            found = [*servers, *(p for server in servers for p in _children(server))]
            return found if len(found) >= 3 else []  # the fork server and two processes

        spawned = await wait_for(parsing, within=180, what="the parsing processes up")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=60)

    async def all_gone() -> bool:
        return not any(_alive(pid) for pid in spawned)

    await wait_for(all_gone, within=120, interval=0.2, what="the parsing processes gone")


async def test_a_killed_decide_worker_loses_nothing_and_decides_each_mail_once(
    database_url: str, make_settings: Callable[..., Settings],
) -> None:
    senders, size = 20, 6
    async with open_services(make_settings(), migrate=False) as services:
        await accept(services, conversations(senders, size - 1))
        worker = decide_process(database_url, MAILSVC_DECIDE_BATCH_SIZE="3")
        try:

            async def some_decided() -> bool:
                assert worker.poll() is None, log_of(worker)
                return await count(services, Email) > 0

            await wait_for(some_decided, within=180, interval=0.01, what="the first decisions")
            worker.send_signal(signal.SIGKILL)  # mid-way: some decided, some not
            worker.wait(timeout=60)
        finally:
            if worker.poll() is None:
                worker.kill()
        assert await undecided(services) > 0, "the kill came too late to prove anything"
        worker = decide_process(database_url, MAILSVC_DECIDE_BATCH_SIZE="3")
        try:

            async def all_decided() -> bool:
                assert worker.poll() is None, log_of(worker)
                return await undecided(services) == 0

            await wait_for(all_decided, within=300, what="the backlog decided after restart")
        finally:
            log = stop(worker)
        assert "Traceback" not in log, log
        await assert_each_conversation_is_one_lead(services, senders, size)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_decide_processes_decide_a_thousand_mails_each_once(
    database_url: str, make_settings: Callable[..., Settings],
) -> None:
    senders, size = 100, 10
    async with open_services(make_settings(), migrate=False) as services:
        await accept(services, conversations(senders, size - 1))
        workers = [decide_process(database_url, MAILSVC_DECIDE_BATCH_SIZE="50") for _ in range(2)]
        logs: list[str] = []
        try:

            async def all_decided() -> bool:
                for worker in workers:
                    assert worker.poll() is None, (
                        log_of(worker)
                    )
                return await undecided(services) == 0

            await wait_for(all_decided, within=600, interval=0.2, what="1,000 mails decided")
        finally:
            logs = [stop(worker) for worker in workers]
        for log in logs:
            assert "Traceback" not in log, log
        # What each process says it decided adds up to the thousand: none decided twice.
        decided = [int(line.rsplit("after ", 1)[1].split(" ")[0])
                   for log in logs for line in log.splitlines() if "decide worker stopped" in line]
        assert len(decided) == 2 and sum(decided) == senders * size
        await assert_each_conversation_is_one_lead(services, senders, size)


@asynccontextmanager
async def stalled_holder(database_url: str, **server_settings: str) -> AsyncIterator[int]:
    """A session that took the apply lock and then fell silent in the middle of a request (its
    path to the server frozen by a proxy): the server waits for the rest for ever, with the lock.
    Yields its server pid."""
    import asyncpg
    from sqlalchemy.engine import make_url

    from mailsvc.ingest.decider import APPLY_LOCK
    from tests.support.proxy import FaultProxy

    url = make_url(database_url)
    with FaultProxy(url.port or 5432, url.host or "127.0.0.1") as proxy:
        holder = await asyncpg.connect(
            host="127.0.0.1", port=proxy.port, user=url.username, database=url.database,
            server_settings={"application_name": "mailsvc", **server_settings},
        )
        pid = await holder.fetchval("SELECT pg_backend_pid()")
        await holder.execute("BEGIN")
        await holder.fetchval("SELECT pg_advisory_xact_lock($1)", APPLY_LOCK)

        async def send_forever() -> None:
            with contextlib.suppress(Exception):
                await holder.executemany(
                    "SELECT length($1::text)", [("x" * 200_000,) for _ in range(200)]
                )

        sending = asyncio.create_task(send_forever())
        await asyncio.sleep(0.05)  # part of the request is through
        proxy.half_open()
        direct = await asyncpg.connect(url.render_as_string(hide_password=False)
                                       .replace("+asyncpg", ""))
        try:
            async def waiting_for_rest() -> bool:
                state = await direct.fetchval(
                    "SELECT wait_event FROM pg_stat_activity WHERE pid = $1", pid
                )
                return state == "ClientRead"

            await wait_for(waiting_for_rest, within=60, what="the holder stalled mid-request")
            yield pid
        finally:
            await direct.execute("SELECT pg_terminate_backend($1)", pid)
            await direct.close()
            sending.cancel()
            holder.terminate()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_transaction_stalled_mid_request_is_ended_by_the_worker_it_blocks(
    database_url: str, make_settings: Callable[..., Settings],
) -> None:
    # Neither statement_timeout nor idle_in_transaction_session_timeout ends a session that waits
    # for the rest of a request, and its proxy keeps TCP alive: without help it holds the apply
    # lock, and the whole intake, for ever.
    settings = make_settings(db_idle_in_transaction_timeout_seconds=1.0)
    async with open_services(settings, migrate=False) as services:
        await accept(services, conversations(2, 1))
        async with stalled_holder(database_url) as pid:
            decider = services.pipeline.decider

            async def all_decided() -> bool:
                await decider.step()
                return await undecided(services) == 0

            await wait_for(all_decided, within=120, what="the backlog decided past the stall")
            async with services.sessions() as session:
                gone = await session.scalar(
                    text("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": pid},
                )
            assert gone
        await assert_each_conversation_is_one_lead(services, 2, 2)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_only_our_own_silent_sessions_are_ended(
    database_url: str, make_settings: Callable[..., Settings],
) -> None:
    from mailsvc.crmstore.db import end_stalled_transactions

    settings = make_settings()
    async with open_services(settings, migrate=False) as services:
        async with (
            stalled_holder(database_url, application_name="another-app") as pid,
            services.sessions() as session,
        ):
            assert pid not in await end_stalled_transactions(session, 0)
        async with stalled_holder(database_url) as pid, services.sessions() as session:
            assert await end_stalled_transactions(session, 3600) == []  # not silent long
            assert await end_stalled_transactions(session, 0) == [pid]
