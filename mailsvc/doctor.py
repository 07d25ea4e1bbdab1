"""`mailsvc doctor`: checks what a running mailsvc depends on and says how to fix what is wrong.

Each check is a small function returning a ``Finding``; none of them changes anything (the
broker check declares nothing new: it only looks for the exchange).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mailsvc.config import (
    EventsSettings,
    ImapMailbox,
    LinkingSettings,
    Settings,
    StoreSettings,
)

Status = Literal["ok", "warn", "fail"]
CHECK_TIMEOUT_SECONDS = 10.0
LOW_DISK_BYTES = 1024**3


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" (fix: {self.fix})" if self.fix and self.status != "ok" else ""
        return f"{self.status.upper():4} {self.check}: {self.detail}{fix}"


async def run_checks(settings: Settings) -> list[Finding]:
    """Every check, each bounded by a timeout, in a stable order."""
    checks: list[tuple[str, Callable[[], Awaitable[Finding]]]] = [
        ("database", lambda: check_database(settings.store)),
        ("broker", lambda: check_broker(settings.events)),
        ("events", lambda: check_events(settings.store, settings.events)),
        *[(f"imap {m.name}", _imap_check(m)) for m in settings.imap.mailboxes],
    ]
    findings = [check_intake_addresses(settings.linking), check_disk(settings.store)]
    for name, check in checks:
        try:
            findings.append(await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS))
        except TimeoutError:
            findings.append(Finding(name, "fail", f"no answer within {CHECK_TIMEOUT_SECONDS:g}s",
                                    "check the host, port and firewall"))
    return findings


def _imap_check(mailbox: ImapMailbox) -> Callable[[], Awaitable[Finding]]:
    return lambda: asyncio.to_thread(check_imap, mailbox)


async def check_database(store: StoreSettings) -> Finding:
    from mailsvc.crmstore.db import create_engine
    from mailsvc.crmstore.migrate import current_revision, head_revision

    engine = create_engine(store.url)
    try:
        current = await current_revision(engine)
    except Exception as exc:
        return Finding("database", "fail", f"cannot connect: {_short(exc)}",
                       "check MAILSVC_DATABASE_URL and that the server runs")
    finally:
        await engine.dispose()
    head = head_revision()
    if current != head:
        return Finding("database", "fail", f"schema at {current or 'empty'}, needs {head}",
                       "run `mailsvc db upgrade`")
    detail = f"reachable, schema at {current}"
    if store.is_sqlite:
        intake = await _sqlite_intake(store)
        if isinstance(intake, Finding):
            return intake
        detail += f"; {intake}"
    return Finding("database", "ok", detail)


async def _sqlite_intake(store: StoreSettings) -> Finding | str:
    """The SQLite intake file beside the store opens (the process may create it there): a
    failing Finding, or what it holds."""
    from mailsvc.crmstore.intake_writer import (
        IntakeUnavailable,
        SqliteIntake,
        intake_path,
        sqlite_path,
    )

    path = sqlite_path(store.url)
    writer = SqliteIntake(path, store.sqlite_busy_timeout_seconds)
    try:
        waiting, _ = await writer.backlog()
    except IntakeUnavailable as exc:
        where = intake_path(path) if path else "an in-memory database"
        return Finding("database", "fail", f"the intake file ({where}) cannot be opened: {exc}",
                       "mailsvc (and an MTA's pipe user) must be able to write the database's "
                       "directory: the intake file and its journal live beside the database")
    finally:
        await writer.close()
    return f"intake file {intake_path(path or '')}: {waiting} mail(s) waiting for a decision"


async def check_events(store: StoreSettings, events: EventsSettings) -> Finding:
    """Events the broker returned because no queue is bound for their routing key."""
    from mailsvc.crmstore.db import create_engine, create_session_factory
    from mailsvc.events.relay import unroutable_types

    engine = create_engine(store.url)
    try:
        waiting = await unroutable_types(create_session_factory(engine))
    except Exception as exc:
        return Finding("events", "warn", f"cannot read the outbox: {_short(exc)}")
    finally:
        await engine.dispose()
    if not waiting:
        return Finding("events", "ok", "no event waits for a queue to be bound")
    kinds = ", ".join(f"{kind} ({count})" for kind, count in sorted(waiting.items()))
    return Finding(
        "events", "warn", f"no queue is bound for: {kinds}; these events wait in the outbox",
        f"bind a queue to exchange {events.exchange!r} for them (or a catch-all `#`)",
    )


async def check_broker(events: EventsSettings) -> Finding:
    if events.amqp_url is None:
        return Finding("broker", "warn", "MAILSVC_AMQP_URL is not set: events wait in the outbox",
                       "set MAILSVC_AMQP_URL to publish events")
    import aio_pika

    try:
        connection = await aio_pika.connect(events.amqp_url.get_secret_value(), timeout=5)
    except Exception as exc:
        return Finding("broker", "fail", f"cannot connect: {_short(exc)}",
                       "check MAILSVC_AMQP_URL and that RabbitMQ runs")
    try:
        channel = await connection.channel()
        try:
            await channel.get_exchange(events.exchange, ensure=True)
        except Exception:
            return Finding(
                "broker", "warn",
                f"connected; exchange {events.exchange!r} not declared yet",
                "start `mailsvc serve` or `mailsvc relay` once: the relay declares it",
            )
    finally:
        await connection.close()
    return Finding("broker", "ok", f"connected, exchange {events.exchange!r} exists")


def check_imap(mailbox: ImapMailbox) -> Finding:
    from imapclient import IMAPClient

    from mailsvc.ingest.imap import log_in, tls_context

    name = f"imap {mailbox.name}"
    where = f"{mailbox.host}:{mailbox.effective_port}"
    try:
        context = tls_context(mailbox) if mailbox.tls != "none" else None
        client = IMAPClient(mailbox.host, port=mailbox.effective_port, ssl=mailbox.tls == "ssl",
                            ssl_context=context, timeout=CHECK_TIMEOUT_SECONDS)
    except Exception as exc:
        return Finding(name, "fail", f"cannot connect to {where}: {_short(exc)}",
                       "check host, port and tls of the mailbox")
    try:
        if mailbox.tls == "starttls":
            client.starttls(context)
        log_in(client, mailbox)  # a password, or an OAuth2 token
        client.select_folder(mailbox.folder, readonly=True)
    except Exception as exc:
        return Finding(name, "fail", f"{where}: {_short(exc)}",
                       "check username, password (or password_file) and folder")
    finally:
        with contextlib.suppress(Exception):  # the verdict is made; closing is best effort
            client.shutdown()
    return Finding(name, "ok", f"logged in at {where}, folder {mailbox.folder!r}")


def check_intake_addresses(linking: LinkingSettings) -> Finding:
    roles = {"bcc": linking.bcc_address, "sales": linking.sales_address,
             "support": linking.support_address}
    seen: dict[str, str] = {}
    for role, addresses in roles.items():
        for address in addresses:
            if address in seen:
                return Finding("intake addresses", "fail",
                               f"{address} is both {seen[address]} and {role}",
                               "give each intake role its own address")
            seen[address] = role
    listed = ", ".join(f"{role}={','.join(a)}" for role, a in roles.items())
    return Finding("intake addresses", "ok", listed)


def check_disk(store: StoreSettings) -> Finding:
    path = _database_dir(store.url)
    free = shutil.disk_usage(path).free
    detail = f"{free / 1024**3:.1f} GiB free at {path}"
    if free < LOW_DISK_BYTES:
        return Finding("disk", "warn", detail, "free space: raw mail is kept for every message")
    return Finding("disk", "ok", detail)


def _database_dir(url: str) -> Path:
    if url.startswith("sqlite") and ":///" in url:
        return (Path(url.split(":///", 1)[1]).expanduser().resolve().parent)
    return Path.cwd()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
