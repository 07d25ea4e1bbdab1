"""IMAP intake against a private Dovecot: ingest, flag/move after commit, restart, crash, IDLE.

Every wait is on a condition with a deadline far above what a busy machine needs; the IDLE tests
set the IDLE timeout far above that deadline, so a mail that waited for it fails the test.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import func, select

from mailsvc.bootstrap import Services, open_services
from mailsvc.config import Settings
from mailsvc.crmstore.models import Email, MailboxState, QuarantinedMail
from mailsvc.ingest.imap import Connection, MailboxPoller, build_pollers
from tests.conftest import BCC, base_settings
from tests.support.dovecot import PASSWORD, Dovecot, running_dovecot
from tests.support.waiting import wait_for

pytestmark = pytest.mark.imap

# How long any condition may take on a loaded machine; a stuck poller fails it.
DEADLINE = 120.0
# The longest IDLE RFC 2177 allows: a mail that waited for the IDLE to end misses DEADLINE.
LONG_IDLE = 1740.0


async def until(probe: Callable[[], Awaitable[Any]], what: str) -> Any:
    return await wait_for(probe, within=DEADLINE, interval=0.05, what=what)


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with running_dovecot() as server:
        yield server


def mailbox(
    server: Dovecot, name: str = "bcc", user: str = "alice", **overrides: Any,
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": name, "host": "127.0.0.1", "port": server.plain_port, "tls": "none",
        "username": user, "password": PASSWORD, "role": "bcc", "poll_interval": 30,
        "backoff_initial": 0.05, "backoff_max": 0.5, "timeout": 60,
    }
    values.update(overrides)
    return values


UNUSABLE = b"Message-ID: <imap-2@mailsvc.example>\r\nX-Junk: " + b"\x01" * 200 + b"\r\n\r\nx\r\n"


def message(n: int, size: int = 0) -> bytes:
    return (
        f"From: Anna Seller <anna.seller@mailsvc.example>\r\n"
        f"To: Carla Customer <carla{n}@acme.example>\r\nSubject: quote {n}\r\n"
        f"Message-ID: <imap-{n}@mailsvc.example>\r\n\r\nHello Carla,\r\n{'x' * size}\r\n"
    ).encode()


@asynccontextmanager
async def polling(
    settings: Settings, poller_type: type[MailboxPoller] | None = None,
) -> AsyncIterator[tuple[Services, list[MailboxPoller]]]:
    """The pipeline and the IMAP pollers, as `mailsvc serve` runs them (or of a test's kind)."""
    async with open_services(settings, migrate=False) as services:
        await services.pipeline.start()
        pollers = build_pollers(services.pipeline, services.sessions, settings.imap)
        if poller_type is not None:
            pollers = [poller_type(p.mailbox, services.pipeline, services.sessions, BCC,
                                   max_bytes=settings.max_message_bytes) for p in pollers]
        tasks = [asyncio.create_task(p.run()) for p in pollers]
        try:
            yield services, pollers
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await services.pipeline.stop()


async def count(services: Services, model: Any) -> int:
    async with services.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def stored_message_ids(services: Services) -> list[str]:
    async with services.sessions() as session:
        return sorted(m or "" for m in await session.scalars(select(Email.message_id)))


def at_least(services: Services, model: Any, n: int) -> Callable[[], Any]:
    async def probe() -> bool:
        return await count(services, model) >= n
    return probe


async def flags(server: Dovecot, folder: str = "INBOX") -> dict[bytes, list[str]]:
    return await asyncio.to_thread(server.folder_flags, "alice", folder)


async def test_mail_is_ingested_then_flagged_seen_and_quarantine_is_moved(
    dovecot: Dovecot, database_url: str,
) -> None:
    dovecot.append(message(1))  # already there when the poller starts
    dovecot.append(UNUSABLE)  # control bytes all over its header: quarantined
    settings = base_settings(database_url, imap_mailboxes=[mailbox(dovecot)])
    async with polling(settings) as (services, [poller]):
        await until(at_least(services, Email, 1), what="first mail stored")
        await until(at_least(services, QuarantinedMail, 1), what="big mail quarantined")
        await asyncio.to_thread(dovecot.append, message(3))
        await until(at_least(services, Email, 2), what="new mail stored")

        async def settled() -> bool:
            inbox = await flags(dovecot)
            return set(inbox) == {b"<imap-1@mailsvc.example>", b"<imap-3@mailsvc.example>"} \
                and all("\\Seen" in f for f in inbox.values())

        await until(settled, what="inbox flagged \\Seen")
        assert list(await flags(dovecot, "Quarantine")) == [b"<imap-2@mailsvc.example>"]
        async with services.sessions() as session:
            email = await session.scalar(select(Email).where(Email.message_id.like("%imap-3%")))
            assert email is not None
            assert (email.source, email.intake_role, email.envelope_to) == ("imap", "bcc", [BCC])

        async def state_recorded() -> bool:  # recorded right after the flags are set
            async with services.sessions() as session:
                state = await session.get(MailboxState, "bcc/INBOX")
                return state is not None and state.last_uid == 3

        await until(state_recorded, what="last UID recorded")
        assert poller.counts["quarantined"] == 1 and sum(poller.counts.values()) == 3


async def test_a_mail_above_the_size_limit_is_not_downloaded_and_left_in_quarantine(
    dovecot: Dovecot, sqlite_url: str,
) -> None:
    dovecot.append_all([message(1, size=5000), message(2)])
    settings = base_settings(sqlite_url, max_message_bytes=2048, imap_mailboxes=[mailbox(dovecot)])
    async with polling(settings) as (services, [poller]):
        await until(at_least(services, Email, 1), what="the small mail stored")

        async def moved() -> bool:
            return list(await flags(dovecot, "Quarantine")) == [b"<imap-1@mailsvc.example>"]

        await until(moved, what="the large mail left in the quarantine folder")
        assert await count(services, Email) == 1
        assert await count(services, QuarantinedMail) == 0  # never downloaded
        assert poller.counts["too_large"] == 1


async def test_processed_mail_is_moved_to_the_processed_folder(
    dovecot: Dovecot, sqlite_url: str,
) -> None:
    for n in range(1, 4):
        dovecot.append(message(n))
    settings = base_settings(sqlite_url, imap_mailboxes=[
        mailbox(dovecot, processed="move", processed_folder="Done")])
    async with polling(settings) as (services, _):
        await until(at_least(services, Email, 3), what="three mails stored")

        async def moved() -> bool:
            return not await flags(dovecot) and len(await flags(dovecot, "Done")) == 3

        await until(moved, what="mails moved to Done")


async def test_a_restart_processes_nothing_twice(dovecot: Dovecot, sqlite_url: str) -> None:
    for n in range(1, 6):
        dovecot.append(message(n))
    settings = base_settings(sqlite_url, imap_mailboxes=[mailbox(dovecot)])
    async with polling(settings) as (services, [first]):
        await until(at_least(services, Email, 5), what="five mails stored")
        await until(lambda: _true(first.waiting), what="poller caught up")
    async with polling(settings) as (services, [second]):
        await until(lambda: _true(second.waiting), what="poller caught up again")
        assert second.connects == 1
        assert sum(second.counts.values()) == 0, "nothing is fetched again"
        await asyncio.to_thread(dovecot.append, message(6))
        await until(at_least(services, Email, 6), what="the new mail stored")
        assert sum(second.counts.values()) == 1 and "duplicate" not in second.counts


async def _true(value: bool) -> bool:
    return value


class KilledWhileFetching(MailboxPoller):
    """Crashes the Dovecot (set as ``server``) as it is about to fetch uid 3, once."""

    server: Dovecot

    def _fetch(
        self, connection: Connection, uids: Sequence[int], max_bytes: int | None,
    ) -> tuple[dict[int, bytes], dict[int, int]]:
        if 3 in uids and not getattr(self, "killed", False):
            self.killed = True
            self.server.kill()
        return super()._fetch(connection, uids, max_bytes)


async def test_dovecot_killed_mid_run_loses_and_duplicates_nothing(
    dovecot: Dovecot, database_url: str,
) -> None:
    total = 20
    dovecot.append_all([message(n) for n in range(1, total)])
    settings = base_settings(database_url, imap_mailboxes=[mailbox(dovecot, fetch_batch=1)])
    KilledWhileFetching.server = dovecot
    async with polling(settings, KilledWhileFetching) as (services, [poller]):
        await until(lambda: _true(poller.last_error is not None), what="the crash noticed")
        assert await count(services, Email) == 2, "killed mid-run, after two mails"
        await asyncio.to_thread(dovecot.start)
        await asyncio.to_thread(dovecot.append, message(total))
        await until(at_least(services, Email, total), what="all mails stored")

        async def all_seen() -> bool:
            inbox = await flags(dovecot)
            return len(inbox) == total and all("\\Seen" in f for f in inbox.values())

        await until(all_seen, what="all flagged \\Seen")
        assert poller.connects >= 2
        ids = await stored_message_ids(services)
        assert ids == sorted(f"imap-{n}@mailsvc.example" for n in range(1, total + 1))
        assert await count(services, Email) == total


async def test_while_the_store_is_down_mail_stays_unflagged_in_the_mailbox(
    dovecot: Dovecot, sqlite_url: str,
) -> None:
    for n in range(1, 4):
        dovecot.append(message(n))
    down = base_settings("postgresql+asyncpg://postgres@127.0.0.1:1/none",
                         imap_mailboxes=[mailbox(dovecot)])
    async with polling(down) as (_, [poller]):
        await until(lambda: _true(poller.connects >= 2), what="retries")
        assert "store unavailable" in (poller.last_error or "")
    assert all("\\Seen" not in f for f in (await flags(dovecot)).values())
    async with polling(base_settings(sqlite_url, imap_mailboxes=[mailbox(dovecot)])) as (
        services, _,
    ):
        await until(at_least(services, Email, 3), what="stored once the store is back")

        async def all_seen() -> bool:
            return all("\\Seen" in f for f in (await flags(dovecot)).values())

        await until(all_seen, what="flagged after the commit")


async def test_idle_ingests_a_new_mail_without_waiting_for_a_poll_or_the_idle_timeout(
    dovecot: Dovecot, sqlite_url: str,
) -> None:
    settings = base_settings(sqlite_url, imap_mailboxes=[
        mailbox(dovecot, poll_interval=3600, idle_timeout=LONG_IDLE)])
    async with polling(settings) as (services, [poller]):
        await until(lambda: _true(poller.waiting), what="poller in IDLE")
        await asyncio.to_thread(dovecot.append, message(1))
        await until(at_least(services, Email, 1), what="mail stored through IDLE")
        assert poller.connects == 1


class AppendsAroundTheSearch(MailboxPoller):
    """Appends ``raw`` to the ``server`` once, just before or after a UID SEARCH finding nothing.

    After: the mail arrives between the search and the start of IDLE, so Dovecot reports it
    together with the IDLE continuation. Before: the search does not see it yet, and Dovecot
    reports it at the end of the search, and not again when IDLE starts.
    """

    server: Dovecot
    raw: bytes
    before: bool
    appended = False

    def _new_uids(self, connection: Connection, last_uid: int) -> tuple[list[int], bool]:
        # Once the first mail is in: the next search would find nothing.
        due = last_uid >= 1 and not self.appended
        if due and self.before:
            self._append()
        uids, reported = super()._new_uids(connection, last_uid)
        if due and not self.before:
            assert not uids
            self._append()
        return uids, reported

    def _append(self) -> None:
        self.server.append(self.raw)  # over its own connection; returns once it is in
        self.appended = True


@pytest.mark.parametrize("before", [False, True], ids=["after-search", "during-search"])
async def test_a_mail_arriving_between_the_search_and_idle_does_not_wait_for_the_idle_timeout(
    dovecot: Dovecot, sqlite_url: str, before: bool,
) -> None:
    dovecot.append(message(1))
    settings = base_settings(sqlite_url, imap_mailboxes=[
        mailbox(dovecot, poll_interval=3600, idle_timeout=LONG_IDLE)])

    class Poller(AppendsAroundTheSearch):
        server, raw = dovecot, message(2)

    Poller.before = before
    async with polling(settings, Poller) as (services, [poller]):
        await until(at_least(services, Email, 2), what="the mail appended around the search")
        assert isinstance(poller, Poller) and poller.appended
        assert poller.connects == 1 and poller.last_error is None


async def test_a_server_gone_during_idle_is_noticed_at_once(
    dovecot: Dovecot, sqlite_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    settings = base_settings(sqlite_url, imap_mailboxes=[
        mailbox(dovecot, poll_interval=3600, idle_timeout=LONG_IDLE)])
    async with polling(settings) as (services, [poller]):
        await until(lambda: _true(poller.waiting), what="poller in IDLE")
        await asyncio.to_thread(dovecot.kill)
        await until(lambda: _true(poller.last_error is not None), what="the crash noticed")
        assert "the server closed the connection" in caplog.text
        await asyncio.to_thread(dovecot.start)
        await asyncio.to_thread(dovecot.append, message(1))
        await until(at_least(services, Email, 1), what="mail stored after the restart")


async def test_without_idle_the_folder_is_polled(dovecot: Dovecot, sqlite_url: str) -> None:
    settings = base_settings(sqlite_url, imap_mailboxes=[
        mailbox(dovecot, idle=False, poll_interval=0.2)])
    async with polling(settings) as (services, [poller]):
        await until(lambda: _true(poller.waiting), what="poller waiting")
        await asyncio.to_thread(dovecot.append, message(1))
        await until(at_least(services, Email, 1), what="mail stored by polling")


async def test_ssl_and_starttls_verified_against_the_test_ca(
    dovecot: Dovecot, sqlite_url: str,
) -> None:
    dovecot.append(message(1))
    dovecot.append(message(2), user="bob")
    settings = base_settings(sqlite_url, imap_mailboxes=[
        mailbox(dovecot, "tls", tls="ssl", port=dovecot.tls_port, ca_file=str(dovecot.ca_file)),
        mailbox(dovecot, "starttls", user="bob", tls="starttls", ca_file=str(dovecot.ca_file)),
    ])
    async with polling(settings) as (services, pollers):
        await until(at_least(services, Email, 2), what="both mails stored")
        assert all(p.last_error is None for p in pollers)


async def test_an_unknown_ca_fails_with_a_clear_error(
    dovecot: Dovecot, sqlite_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    dovecot.append(message(1))
    settings = base_settings(sqlite_url, imap_mailboxes=[
        mailbox(dovecot, "tls", tls="ssl", port=dovecot.tls_port)])  # system CAs only
    with caplog.at_level(logging.ERROR, logger="mailsvc.ingest.imap"):
        async with polling(settings) as (services, [poller]):
            await until(lambda: _true(poller.last_error is not None), what="TLS failure")
            assert await count(services, Email) == 0
    assert "TLS certificate of 127.0.0.1:" in caplog.text
    assert "not trusted (unable to get local issuer certificate)" in caplog.text
    assert "for a private CA set ca_file" in caplog.text


async def test_wrong_credentials_do_not_stall_another_mailbox(
    dovecot: Dovecot, sqlite_url: str,
) -> None:
    for n in range(1, 4):
        dovecot.append(message(n))
    settings = base_settings(sqlite_url, imap_mailboxes=[
        mailbox(dovecot, "broken", user="bob", password="wrong"),
        mailbox(dovecot, "good", user="alice"),
    ])
    async with polling(settings) as (services, [broken, good]):
        await until(at_least(services, Email, 3), what="the good mailbox goes on")
        await until(lambda: _true(broken.last_error is not None), what="login refused")
        assert "login as bob refused" in (broken.last_error or "")
        assert good.last_error is None and broken.connects == 0


def unstorable(n: int) -> bytes:
    """A mail whose values overflow the store's columns: a 400-character name, a huge subject."""
    return (
        f"From: {'Z' * 400} <{'z' * 300}@acme.example>\r\n"
        f"To: sales@crm.example\r\nSubject: {'S' * 2000}\r\n"
        f"Message-ID: <imap-{n}-{'m' * 900}@mailsvc.example>\r\n\r\nHello\r\n"
    ).encode()


async def test_a_mail_that_cannot_be_stored_is_passed_by_and_the_rest_stored(
    dovecot: Dovecot, database_url: str,
) -> None:
    dovecot.append_all([message(1), unstorable(2), message(3)])
    settings = base_settings(database_url, imap_mailboxes=[mailbox(dovecot, fetch_batch=1)])
    async with polling(settings) as (services, [poller]):
        await wait_for(lambda: _true(poller.waiting), within=DEADLINE, what="poller caught up")
        # Stored with its values fitted, or quarantined with its reason: either way kept.
        assert await count(services, Email) + await count(services, QuarantinedMail) == 3
        assert {"imap-1@mailsvc.example", "imap-3@mailsvc.example"} <= set(
            await stored_message_ids(services))
        assert poller.connects == 1 and poller.last_error is None
        assert not await flags(dovecot) or all(
            "\\Seen" in f for f in (await flags(dovecot)).values())
