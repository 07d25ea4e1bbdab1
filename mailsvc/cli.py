"""The ``mailsvc`` command line: serve, ingest, import, reprocess, seed-demo, db, events."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from mailsvc.bootstrap import Services, build_webhooks, open_services
from mailsvc.config import LinkingSettings, Settings, load_settings
from mailsvc.entry import exit_now
from mailsvc.errors import ConfigError, MailsvcError, StoreUnavailable
from mailsvc.ingest.outcome import Outcome
from mailsvc.logs import configure_logging
from mailsvc.mail import ARCHIVE_SOURCE, Envelope, RawMail, Role
from mailsvc.ports import Listener, PortUnavailable, check_free, check_socket, serve_listeners

if TYPE_CHECKING:
    from mailsvc.ingest.files import Importer

# sysexits(3)
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69  # serve: a port to listen on is taken (or not ours to take)
EX_TEMPFAIL = 75
EX_CONFIG = 78
CLICK_USAGE = 2  # what click exits with on a usage error; we answer EX_USAGE instead

app = typer.Typer(help="E-mail intake for a CRM.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
quarantine_app = typer.Typer(help="Mail that could not be processed.", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")
keys_app = typer.Typer(help="API keys of users.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
err = Console(stderr=True, soft_wrap=True)
logger = logging.getLogger("mailsvc")

T = TypeVar("T")


def _settings(config_exit: int = EX_CONFIG) -> Settings:
    """The settings, or exit with ``config_exit`` and a message naming the wrong variable."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(config_exit) from None
    configure_logging(settings.logging.level, settings.logging.format)
    return settings


def _run(coro: Coroutine[Any, Any, T], config_exit: int = EX_CONFIG) -> T:
    try:
        return asyncio.run(coro)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(config_exit) from None
    except StoreUnavailable as exc:
        err.print(f"[red]store unavailable: {exc}[/red]")
        raise typer.Exit(EX_TEMPFAIL) from None
    except PortUnavailable as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EX_UNAVAILABLE) from None


@app.command()
def serve(
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Processes sharing the SMTP port [default: MAILSVC_WORKERS]."),
    ] = None,
    worker_index: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run the SMTP (and LMTP) intake, the IMAP pollers, the event relay, the API and the decide
    workers until SIGTERM / Ctrl-C."""
    from mailsvc.supervisor import (
        exit_with_parent,
        plan_processes,
        plan_worker,
        supervise,
        worker_settings,
    )

    settings = _settings()
    decide_workers = settings.intake.effective_decide_workers(settings.store)
    if worker_index is not None:
        exit_with_parent()
        plan = plan_worker(settings, worker_index)
        _run(_serve(worker_settings(settings, plan), relay=plan.relay,
                    webhooks=plan.index == 0, decide_here=decide_workers == 0))
        exit_now(EX_OK)
    count = workers or settings.intake.workers
    single = count == 1 and decide_workers == 0
    _check_ports(serve_listeners(settings.api, settings.smtp, shared_smtp=not single),
                 settings.smtp.lmtp_socket)
    if single:
        _run(_serve(settings, decide_here=True))
        return
    _run(_migrate(settings))  # once, before the workers start
    exit_now(supervise(plan_processes(count, decide_workers)))


def _check_ports(listeners: list[Listener], unix_socket: Path | None = None) -> None:
    """Before the schema is touched or a worker starts: every port (and the LMTP socket) can be
    bound, or one line naming it and its setting, and exit 69 (EX_UNAVAILABLE)."""
    try:
        check_free(listeners)
        if unix_socket is not None:
            check_socket(unix_socket)
    except PortUnavailable as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EX_UNAVAILABLE) from None


@app.command()
def decide(
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Decide processes [default: MAILSVC_DECIDE_WORKERS]."),
    ] = None,
    migrate: Annotated[bool, typer.Option(hidden=True)] = True,
) -> None:
    """Run only decide workers: claim accepted mail from the store, decide and store it, until
    SIGTERM / Ctrl-C (for hosts that add deciding capacity to a shared PostgreSQL)."""
    from mailsvc.supervisor import decide_command, exit_with_parent, supervise

    settings = _settings()
    count = workers or max(1, settings.intake.effective_decide_workers(settings.store))
    if count == 1:
        if not migrate:  # a supervised worker
            exit_with_parent()
        _run(_decide(settings, migrate=migrate))
        if not migrate:  # a supervised worker
            exit_now(EX_OK)
        return
    if migrate:
        _run(_migrate(settings))
    exit_now(supervise({f"decide-{i}": decide_command() for i in range(count)}))


async def _decide(settings: Settings, *, migrate: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    from mailsvc.ingest.decider import Decider, parse_pool

    jobs = settings.intake.effective_decide_jobs(settings.store)
    if settings.intake.decide_nice:
        # Accepting answers SMTP clients while they wait; deciding catches up from the store.
        os.nice(settings.intake.decide_nice)  # before the parse pool: it inherits the priority
    from mailsvc.crmstore.intake_writer import DECIDE_APPLICATION

    # Its event loop serves nobody else: SQLite statements run in place, not in a thread.
    async with open_services(settings, migrate=migrate, application_name=DECIDE_APPLICATION,
                             sqlite_in_loop=True) as services:
        with parse_pool(jobs) as pool:
            decider = Decider(services.pipeline, parse_pool=pool)
            logger.info("decide worker running (%d parsing process(es))", jobs)
            try:
                await decider.run(stop)
            finally:
                await decider.close()
        logger.info("decide worker stopped after %d mail(s)", decider.decided)


async def _migrate(settings: Settings) -> None:
    from mailsvc.bootstrap import ensure_schema
    from mailsvc.crmstore.db import create_engine

    engine = create_engine(settings.store.url)
    try:
        await ensure_schema(engine, settings.store)
    finally:
        await engine.dispose()


async def _serve(settings: Settings, *, relay: bool = True, webhooks: bool = True,
                 decide_here: bool = False) -> None:
    from mailsvc.ingest.imap import build_pollers
    from mailsvc.ingest.lmtp import start_lmtp
    from mailsvc.ingest.smtp import start_smtp
    from mailsvc.ports import api_listener, bind_listening

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_services(settings) as services:
        await services.pipeline.start(decide=decide_here)
        # The API port is bound before SMTP accepts: a taken port stops the start, no mail taken.
        api_sockets = bind_listening(api_listener(settings.api)) if settings.api.enabled else []
        try:
            smtp = await start_smtp(services.pipeline, settings.smtp)
        except PortUnavailable:
            for sock in api_sockets:
                sock.close()
            raise
        try:
            lmtp = await start_lmtp(services.pipeline, settings.smtp)
        except PortUnavailable:
            smtp.close()
            for sock in api_sockets:
                sock.close()
            raise
        services.mailboxes = build_pollers(services.pipeline, services.sessions, settings.imap)
        pollers = [
            asyncio.create_task(poller.run(), name=f"imap-{poller.mailbox.name}")
            for poller in services.mailboxes
        ]
        tasks = _background_tasks(services, settings, relay=relay, webhooks=webhooks,
                                  api_sockets=api_sockets)
        await stop.wait()
        logger.info("shutting down: no new mail, finishing what is in flight")
        smtp.close()
        lmtp.close()
        for poller in pollers:  # a mail committed but not yet flagged is replayed as duplicate
            poller.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
        await smtp.wait_closed()
        await lmtp.wait_closed()
        await services.pipeline.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        logger.info("stopped")


def _background_tasks(services: Services, settings: Settings, *, relay: bool, webhooks: bool,
                      api_sockets: list[socket.socket]) -> list[asyncio.Task[None]]:
    """What `mailsvc serve` runs beside the listeners: relay, webhooks, API, retention, sender."""
    from mailsvc.crmstore.privacy import retention_loop

    tasks: list[asyncio.Task[None]] = []
    if services.relay is not None and relay:
        tasks.append(asyncio.create_task(services.relay.run(), name="relay"))
    elif services.relay is None:
        logger.info("no MAILSVC_AMQP_URL: events wait in the outbox (`mailsvc events`)")
    if webhooks:  # with or without a broker (docs/events.md#webhooks)
        tasks.append(asyncio.create_task(build_webhooks(services).run(), name="webhooks"))
    if settings.api.enabled:
        tasks.append(asyncio.create_task(_serve_api(services, api_sockets), name="api"))
    if settings.privacy.retention_days is not None:
        tasks.append(asyncio.create_task(retention_loop(services.sessions, settings.privacy)))
    if settings.outbound.smtp_url is not None:  # outbound mail (docs/outbound.md)
        from mailsvc.outbound.sender import Sender

        sender = Sender(services.sessions, settings.outbound, hostname=settings.smtp.hostname)
        tasks.append(asyncio.create_task(sender.run(), name="sender"))
    return tasks


async def _serve_api(services: Services, sockets: list[socket.socket]) -> None:
    from mailsvc.api.server import serve_api

    await serve_api(services, sockets)


def _role_for(linking: LinkingSettings, address: str | None) -> tuple[Role, str]:
    address = (address or linking.bcc_address[0]).lower()
    role = linking.intake_roles.role_of(address)
    if role is None:
        known = ", ".join(sorted(linking.intake_roles))
        err.print(f"[red]--to {address} is not an intake address (known: {known})[/red]")
        raise typer.Exit(EX_USAGE)
    return role, address


@app.command()
def ingest(
    files: Annotated[list[str], typer.Argument(help="Message files, or - for standard input.")],
    to: Annotated[
        str | None, typer.Option("--to", help="The intake address (default: the Smart BCC).")
    ] = None,
    sender: Annotated[str | None, typer.Option("--from", help="The envelope sender.")] = None,
) -> None:
    """Process messages through the pipeline; prints one JSON object per message. Beside a
    running decide worker they are only accepted here and the worker's decisions are printed.

    Exit status (sysexits): 0 done, 65 a message had nothing usable (it is kept in quarantine),
    66 a file is missing, 75 try again later: the store is unavailable or the configuration is
    wrong (an MTA defers the mail instead of bouncing it while the settings get fixed).
    """
    from mailsvc.ingest.handover import InputError, read_inputs

    settings = _settings(config_exit=EX_TEMPFAIL)
    role, address = _role_for(settings.linking, to)
    try:
        raws = read_inputs(files, address, role, sender)
    except InputError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EX_NOINPUT) from None
    from mailsvc.entry import ingest_mails

    raise typer.Exit(ingest_mails(settings, raws))


def ingest_inline(settings: Settings, raws: list[RawMail]) -> int:
    """Accept and decide the mails in this process; print the outcomes; the exit status.
    (`mailsvc ingest` beside a running decide worker only accepts: ``ingest/handover.py``.)"""
    from mailsvc import metrics
    from mailsvc.ingest.handover import print_outcomes

    metrics.disable()  # one process per mail: nobody scrapes it
    configure_logging(settings.logging.level, settings.logging.format)
    try:
        outcomes = _run(_ingest(settings, raws), config_exit=EX_TEMPFAIL)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except Exception as exc:  # never die with a traceback: an MTA would bounce the mail
        err.print(f"[red]temporary failure: {exc!r}[/red]")
        return EX_TEMPFAIL
    return print_outcomes(outcomes)


async def _ingest(settings: Settings, raws: list[RawMail]) -> list[Outcome]:
    async with open_services(settings) as services:
        return await services.pipeline.accept_and_decide(raws)


@app.command("import")
def import_mail(
    paths: Annotated[list[Path], typer.Argument(help=".eml files, directories, mbox, Maildir.")],
    to: Annotated[
        str | None, typer.Option("--to", help="The intake address (default: the Smart BCC).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Messages per transaction.")] = 200,
    jobs: Annotated[
        int | None, typer.Option(min=1, help="Parsing processes [default: one per core].")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    archive: Annotated[
        bool,
        typer.Option("--archive", help="Old mail, kept as history: dated by the mail, tickets "
                     "closed, no acknowledgements, events flagged historical."),
    ] = False,
) -> None:
    """Import existing mail; safe to re-run (what is stored already counts as duplicate).

    Directories are walked recursively for *.eml files, mbox files and Maildir folders. With
    --archive the mail is history: tickets are created closed, nothing is reopened or answered,
    records are dated by their mail and their events say "historical": true.
    Exit status (sysexits): 0 done, 64 --to is not an intake address, 66 a path is missing or
    holds no mail, 75 the store is unavailable (run the same command again later).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from mailsvc.ingest.files import Importer, discover

    settings = _settings()
    role, address = _role_for(settings.linking, to)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        err.print(f"[red]no such file or directory: {', '.join(missing)}[/red]")
        raise typer.Exit(EX_NOINPUT)
    found = discover(paths)
    if not found.messages:
        err.print(f"[red]no mail found ({len(found.skipped)} other file(s) skipped)[/red]")
        raise typer.Exit(EX_NOINPUT)
    # One log line per message would drown the progress bar; outcomes go to the summary.
    logging.getLogger("mailsvc.ingest.pipeline").setLevel(logging.WARNING)
    progress = Progress("{task.description}", BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=err, disable=quiet)
    task = progress.add_task("importing", total=len(found.messages))
    started = time.monotonic()
    runs: list[Importer] = []  # kept outside go(): the summary shows what committed, even on 75

    from mailsvc.ingest.decider import Decider, ParsePool, parse_pool

    async def go(pool: ParsePool | None) -> None:
        # Its event loop serves nobody else: SQLite statements run in place, not in a thread.
        async with open_services(settings, sqlite_in_loop=True) as services:
            decider = Decider(services.pipeline, parse_pool=pool)
            await decider.refresh_statistics()  # SQLite: lookups stay index lookups
            source = ARCHIVE_SOURCE if archive else "file"
            run = Importer(services.pipeline, Envelope(None, (address,), role, source),
                           batch_size, on_progress=lambda n: progress.advance(task, n),
                           decider=decider)
            runs.append(run)
            try:
                await run.run(found.messages)
            finally:
                await decider.close()

    # Starting parsing processes costs more than a small import gains from them. They start
    # before the store is opened, so they are ready when the first mail is.
    parallel = jobs or (max(1, os.cpu_count() or 1) if len(found.messages) >= 200 else 1)
    try:
        with progress, parse_pool(parallel) as pool:
            _run(go(pool))
    finally:
        found.close()
        if runs:
            _print_import_summary(runs[0], len(found.skipped), time.monotonic() - started)


def _print_import_summary(run: Importer, skipped: int, seconds: float) -> None:
    table = Table(title="import")
    table.add_column("outcome")
    table.add_column("messages", justify="right")
    for kind, n in sorted(run.counts.items(), key=lambda item: -item[1]):
        table.add_row(kind, str(n))
    total = sum(run.counts.values())
    table.add_row("total", str(total), style="bold")
    if skipped:
        table.add_row("files skipped (not mail)", str(skipped))
    console = Console()
    console.print(table)
    console.print(f"{total} message(s) in {seconds:.1f}s, {total / max(seconds, 1e-9):.0f}/s")


@app.command("seed-demo")
def seed_demo(
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Create a small demo dataset (users, accounts, contacts, an opportunity, a ticket)."""
    from mailsvc.crmstore.demo import seed

    settings = _settings()

    async def go() -> dict[str, list[dict[str, Any]]]:
        async with (
            open_services(settings) as services,
            services.sessions() as session,
            session.begin(),
        ):
            linking = settings.linking
            return await seed(session, linking.opportunity_prefix, linking.ticket_prefix)

    created = _run(go())
    if as_json:
        sys.stdout.write(json.dumps(created, ensure_ascii=False, indent=2) + "\n")
        return
    console = Console()
    for kind, rows in created.items():
        table = Table(title=kind)
        for column in rows[0]:
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(v) for v in row.values()))
        console.print(table)


@app.command("import-contacts")
def import_contacts(
    file: Annotated[Path, typer.Argument(help="A CSV file with a header row.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check only, save nothing.")] = False,
    owner: Annotated[
        str | None, typer.Option("--owner", help="E-mail of the user who owns the new rows.")
    ] = None,
    allow_duplicates: Annotated[bool, typer.Option(
        "--allow-duplicates", help="Create people whose address exists already (reported).")
    ] = False,
) -> None:
    """Import accounts and contacts from CSV; duplicates are reported, not created.

    Column mapping: see docs/crm.md (company, domain, first_name, last_name, email, phone, role,
    street, zip, city, country, industry, size, tags, owner; English or German headers).
    """
    from mailsvc.contacts_import import ImportFileError, read_file, summary_tables
    from mailsvc.contacts_import import import_contacts as run_import

    settings = _settings()
    try:
        text = read_file(file)
    except OSError as exc:
        err.print(f"[red]cannot read {file}: {exc.strerror}[/red]")
        raise typer.Exit(EX_NOINPUT) from None
    try:
        report = _run(run_import(settings, text, name=file.name, dry_run=dry_run,
                                 owner_email=owner, allow_duplicates=allow_duplicates))
    except ImportFileError as exc:
        err.print(f"[red]{file}: {exc}[/red]")
        raise typer.Exit(EX_DATAERR) from None
    for table in summary_tables(report, dry_run):
        Console().print(table)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Upgrade the database schema to the version this mailsvc needs."""
    from mailsvc.crmstore.db import create_engine
    from mailsvc.crmstore.migrate import current_revision, upgrade

    settings = _settings()

    async def go() -> str | None:
        engine = create_engine(settings.store.url)
        try:
            await upgrade(engine)
            return await current_revision(engine)
        finally:
            await engine.dispose()

    typer.echo(f"schema at {_run(go())}")


@db_app.command("current")
def db_current(
    as_json: Annotated[bool, typer.Option("--json", help="A JSON object.")] = False,
) -> None:
    """Show the schema revision of the database and the one this mailsvc needs."""
    from mailsvc.crmstore.db import create_engine
    from mailsvc.crmstore.migrate import current_revision, head_revision

    settings = _settings()

    async def go() -> str | None:
        engine = create_engine(settings.store.url)
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    current, needed = _run(go()), head_revision()
    if as_json:
        typer.echo(json.dumps({"current": current, "needed": needed,
                               "up_to_date": current == needed}))
    else:
        typer.echo(f"database: {current or 'empty'}; needed: {needed}")


@app.command()
def events(
    limit: Annotated[int, typer.Option(help="How many to show.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event.")] = False,
) -> None:
    """List events waiting in the outbox (not yet confirmed by the broker)."""
    from sqlalchemy import select

    from mailsvc.crmstore.db import read_session
    from mailsvc.crmstore.models import OutboxEvent
    from mailsvc.events.relay import pending_count

    settings = _settings()

    async def go() -> tuple[int, list[OutboxEvent]]:
        async with open_services(settings) as services:
            count = await pending_count(services.sessions)
            async with read_session(services.sessions) as session:
                rows = await session.scalars(
                    select(OutboxEvent).where(OutboxEvent.sent_at.is_(None))
                    .order_by(OutboxEvent.seq).limit(limit)
                )
                return count, list(rows)

    count, rows = _run(go())
    if as_json:
        for row in rows:
            typer.echo(json.dumps({
                "id": row.id, "type": row.type, "subject": row.subject,
                "created_at": row.created_at.isoformat(), "attempts": row.attempts,
                "last_error": row.last_error, "data": row.data,
            }, default=str))
        return
    table = Table(title=f"{count} event(s) waiting")
    for column in ("id", "type", "subject", "created_at", "attempts", "last_error"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.id, row.type, row.subject or "", row.created_at.isoformat(),
                      str(row.attempts), row.last_error or "")
    Console().print(table)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """The intake backlog (accepted, not decided yet), whether a decide worker runs, events
    waiting, quarantined mail."""
    from sqlalchemy import func, select

    from mailsvc.crmstore.db import read_session
    from mailsvc.crmstore.models import QuarantinedMail
    from mailsvc.events.relay import pending_count
    from mailsvc.ingest.decider import backlog

    settings = _settings()

    async def go() -> dict[str, Any]:
        async with open_services(settings) as services:
            waiting = await backlog(services.pipeline.writer)
            async with read_session(services.sessions) as session:
                quarantined = await session.scalar(select(func.count(QuarantinedMail.id)))
            return {"intake_backlog": waiting.to_json(),
                    "decide_workers_running": await services.pipeline.writer.deciders_running(),
                    "outbox_pending": await pending_count(services.sessions),
                    "quarantined": int(quarantined or 0)}

    found = _run(go())
    if as_json:
        sys.stdout.write(json.dumps(found) + "\n")
        return
    waiting = found["intake_backlog"]
    typer.echo(f"intake backlog: {waiting['count']} mail(s) accepted, not decided yet; "
               f"oldest {waiting['oldest_age_seconds']:.1f}s")
    typer.echo("decide workers: " + ("running" if found["decide_workers_running"] else
                                     "none running (`mailsvc ingest` decides itself)"))
    typer.echo(f"outbox: {found['outbox_pending']} event(s) waiting")
    typer.echo(f"quarantine: {found['quarantined']} mail(s)")


@app.command()
def relay(
    webhooks: Annotated[bool, typer.Option(
        help="Also deliver webhooks (one process among those on a database is enough).")] = True,
) -> None:
    """Run only the event relay (outbox -> RabbitMQ) and the webhook dispatcher (outbox -> HTTP)
    until SIGTERM or Ctrl-C."""
    settings = _settings()
    if settings.events.amqp_url is None and not webhooks:
        err.print("[red]MAILSVC_AMQP_URL is not set (and --no-webhooks): nothing to do[/red]")
        raise typer.Exit(EX_CONFIG)

    async def go() -> None:
        async with open_services(settings) as services:
            work = [build_webhooks(services).run()] if webhooks else []
            if services.relay is not None:
                work.append(services.relay.run())
            else:
                logger.info("no MAILSVC_AMQP_URL: only webhooks are delivered")

            async def all_of() -> None:
                await asyncio.gather(*work)

            await _until_stopped(all_of())

    _run(go())


async def _until_stopped(work: Coroutine[Any, Any, object]) -> None:
    """Run ``work`` until SIGTERM or Ctrl-C, then cancel it and wait for it to end."""
    task = asyncio.create_task(work)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@app.command()
def send(
    once: Annotated[bool, typer.Option(help="Deliver what is due now, then exit.")] = False,
) -> None:
    """Only deliver outbound mail (replies, acknowledgements) until SIGTERM or Ctrl-C."""
    from mailsvc.outbound.sender import Sender

    settings = _settings()
    if settings.outbound.smtp_url is None:
        err.print("[red]MAILSVC_OUTBOUND_SMTP_URL is not set[/red]")
        raise typer.Exit(EX_CONFIG)

    async def go() -> int:
        async with open_services(settings) as services:
            sender = Sender(services.sessions, settings.outbound, hostname=settings.smtp.hostname)
            if once:
                total = 0
                while (done := await sender.deliver_due()) > 0:
                    total += done
                return total
            await _until_stopped(sender.run())
            return 0

    tried = _run(go())
    if once:
        print(json.dumps({"tried": tried}))


@quarantine_app.command("list")
def quarantine_list(
    limit: Annotated[int, typer.Option(help="How many to show.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per entry.")] = False,
) -> None:
    """List quarantined mail with the reason."""
    from mailsvc.ingest.quarantine import list_quarantined

    settings = _settings()

    async def go() -> list[Any]:
        async with open_services(settings) as services:
            return await list_quarantined(services.sessions, limit=limit)

    rows = _run(go())
    if as_json:
        for row in rows:
            typer.echo(json.dumps({
                "id": row.id, "received_at": row.received_at.isoformat(),
                "role": row.intake_role, "source": row.source, "size": row.size,
                "reason": row.reason,
            }))
        return
    table = Table(title=f"{len(rows)} quarantined")
    for column in ("id", "received_at", "role", "source", "size", "reason"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row.id), row.received_at.isoformat(timespec="seconds"),
                      row.intake_role, row.source, str(row.size), row.reason)
    Console().print(table)


@quarantine_app.command("export")
def quarantine_export(
    quarantine_id: Annotated[int, typer.Argument(help="The quarantine id.")],
) -> None:
    """Write the raw bytes of a quarantined mail to stdout."""
    from mailsvc.ingest.quarantine import list_quarantined

    settings = _settings()

    async def go() -> list[Any]:
        async with open_services(settings) as services:
            return await list_quarantined(services.sessions, [quarantine_id])

    rows = _run(go())
    if not rows:
        err.print(f"[red]no quarantined mail with id {quarantine_id}[/red]")
        raise typer.Exit(EX_NOINPUT)
    sys.stdout.buffer.write(rows[0].raw)


@quarantine_app.command("retry")
def quarantine_retry(
    ids: Annotated[list[int] | None, typer.Argument(help="Quarantine ids (default: all).")] = None,
) -> None:
    """Run quarantined mail through the pipeline again (after a fix); prints one JSON line each."""
    from mailsvc.ingest.quarantine import retry_quarantined

    settings = _settings()

    async def go() -> list[tuple[int, Outcome]]:
        async with open_services(settings) as services:
            return await retry_quarantined(services.pipeline, services.sessions, ids or ())

    for quarantine_id, outcome in _run(go()):
        line = {"retried": quarantine_id, **outcome.to_json()}
        sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")


@quarantine_app.command("drop")
def quarantine_drop(
    ids: Annotated[list[int], typer.Argument(help="Quarantine ids.")],
) -> None:
    """Delete quarantined mail for good (an email.quarantine_dropped event each); prints one JSON
    line each. Exit 66 when none of the ids is in quarantine."""
    from mailsvc.ingest.quarantine import drop_quarantined

    settings = _settings()

    async def go() -> list[int]:
        async with open_services(settings) as services:
            return await drop_quarantined(services.sessions, ids, by="cli")

    dropped = _run(go())
    for quarantine_id in ids:
        sys.stdout.write(json.dumps({"quarantine_id": quarantine_id,
                                     "dropped": quarantine_id in dropped}) + "\n")
    if not dropped:
        err.print("[red]none of these ids is in quarantine[/red]")
        raise typer.Exit(EX_NOINPUT)


@app.command()
def reprocess(
    ids: Annotated[list[int] | None, typer.Argument(help="E-mail ids.")] = None,
    unlinked: Annotated[
        bool, typer.Option("--unlinked", help="Mails that were ignored or have no links.")
    ] = False,
    since: Annotated[
        datetime | None,
        typer.Option("--since", formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"],
                     help="Mails received on or after DATE (UTC)."),
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every stored mail.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON line per mail instead of the summary.")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Decide stored mail again from its raw bytes after rules or CRM data changed; only the
    automatic links change (manual links stay, nothing is created, no mail is sent).

    Selectors combine (a mail must match all given). Exit status (sysexits): 0 done (mails that
    failed are counted as failed), 64 no selector, 75 the store is unavailable.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from mailsvc.ingest.reprocess import RESULTS, Reprocessed, Result, Selection, count_selected
    from mailsvc.ingest.reprocess import reprocess as run_reprocess

    selection = Selection(tuple(ids or ()), unlinked,
                          since.replace(tzinfo=UTC) if since else None, everything)
    if selection.empty or (everything and (ids or unlinked or since)):
        err.print("[red]name what to reprocess: EMAIL_ID ..., --unlinked and/or --since DATE, "
                  "or --all alone[/red]")
        raise typer.Exit(EX_USAGE)
    settings = _settings()
    progress = Progress("{task.description}", BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=err, disable=quiet or as_json)
    task = progress.add_task("reprocessing", total=None)
    failed: list[Reprocessed] = []

    def on_batch(results: list[Reprocessed]) -> None:
        progress.advance(task, len(results))
        failed.extend(r for r in results if r.result == "failed")
        if as_json:
            for result in results:
                sys.stdout.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
            sys.stdout.flush()

    async def go() -> Counter[Result]:
        async with open_services(settings) as services:
            progress.update(task, total=await count_selected(services.sessions, selection))
            return await run_reprocess(services.pipeline, services.sessions, selection,
                                       on_batch=on_batch)

    with progress:
        counts = _run(go())
    if as_json:
        return
    table = Table(title="reprocess")
    table.add_column("result")
    table.add_column("mails", justify="right")
    for name in RESULTS:
        table.add_row(name, str(counts[name]))
    table.add_row("total", str(sum(counts.values())), style="bold")
    Console().print(table)
    for result in failed:
        err.print(f"e-mail {result.email_id} failed: {result.reason}")


@app.command()
def erase(
    contact: Annotated[
        int | None, typer.Option("--contact", min=1, metavar="ID", help="The contact's id.")
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", metavar="ADDR", help="An e-mail address.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be erased.")
    ] = False,
) -> None:
    """Erase a person's personal data: their mail (raw bytes, bodies, attachments), their
    contact data and what pending events say about them; leaves an audit entry and a
    `privacy.erased` event (docs/privacy.md). Prints one JSON object with the counts.

    Exit status: 0 done, 64 neither or both of --contact and --address, 66 no such contact,
    75 the store is unavailable.
    """
    from mailsvc.crmstore.privacy import erase as run_erase
    from mailsvc.errors import NotFound, RuleViolation

    if (contact is None) == (address is None):
        err.print("[red]name the person with exactly one of --contact ID or --address ADDR[/red]")
        raise typer.Exit(EX_USAGE)
    settings = _settings()

    async def go() -> dict[str, Any]:
        async with open_services(settings) as services, services.sessions() as session:
            async with session.begin():
                report = await run_erase(session, contact_id=contact, address=address,
                                         actor="cli", dry_run=dry_run,
                                         protected=settings.linking.intake_roles)
            return report.to_json()

    try:
        result = _run(go())
    except NotFound as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EX_NOINPUT) from None
    except RuleViolation as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EX_USAGE) from None
    sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")


@app.command()
def retention() -> None:
    """Remove raw bytes, headers, bodies and attachments of mail older than
    MAILSVC_RETENTION_DAYS (nothing when unset); `mailsvc serve` does this every
    MAILSVC_RETENTION_INTERVAL_SECONDS. Prints one JSON object with the counts."""
    from mailsvc.crmstore.privacy import enforce_retention

    settings = _settings()
    if settings.privacy.retention_days is None:
        err.print("MAILSVC_RETENTION_DAYS is not set: all mail is kept")

    async def go() -> dict[str, Any]:
        async with open_services(settings) as services:
            report = await enforce_retention(services.sessions, settings.privacy)
        return {"emails": report.emails, "attachments": report.attachments,
                "quarantined": report.quarantined,
                "cutoff": report.cutoff.isoformat() if report.cutoff else None}

    sys.stdout.write(json.dumps(_run(go())) + "\n")


# ---------------------------------------------------------------- keys: API keys of users
@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", help="The user's e-mail address.")],
    role: Annotated[str | None, typer.Option(
        "--role", help="admin, sales or support (default: the user's role).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="A label, e.g. the device.")] = None,
) -> None:
    """Create an API key for a user and print it once (only its hash is stored)."""
    from mailsvc.crmstore.models import UserRole
    from mailsvc.crmstore.services import access, find_user
    from mailsvc.crmstore.services.common import Actor, act_as

    if role is not None and role not in {r.value for r in UserRole}:
        err.print(f"[red]--role must be admin, sales or support, not {role!r}[/red]")
        raise typer.Exit(EX_USAGE)
    settings = _settings()

    async def go() -> tuple[int, str] | None:
        async with (open_services(settings) as services, services.sessions() as session,
                    session.begin()):
            act_as(session, Actor(user_id=None, role=UserRole.ADMIN.value, via="cli"))
            found = await find_user(session, user)
            if found is None:
                return None
            issued = await access.create_api_key(
                session, found.id, role=UserRole(role) if role else None, name=name)
            return issued.record.id, issued.secret

    try:
        created = _run(go())
    except MailsvcError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EX_DATAERR) from None
    if created is None:
        err.print(f"[red]{user} is not a user (create the user first: POST /api/v1/users)[/red]")
        raise typer.Exit(EX_USAGE)
    err.print(f"API key {created[0]} for {user}; shown this once, store it now:")
    print(created[1])


@keys_app.command("list")
def keys_list(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's keys.")] = None,
) -> None:
    """List API keys (never the keys themselves)."""
    from mailsvc.crmstore.services import access, find_user

    settings = _settings()

    async def go() -> list[tuple[str, ...]]:
        async with open_services(settings) as services, services.sessions() as session:
            user_id = None
            if user is not None:
                found = await find_user(session, user)
                if found is None:
                    return []
                user_id = found.id
            return [(str(k.id), str(k.user_id), k.prefix + "...", str(k.role), k.name or "",
                     k.created_at.isoformat(timespec="seconds"),
                     k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "")
                    for k in await access.list_api_keys(session, user_id)]

    table = Table(title="API keys")
    for column in ("id", "user", "key", "role", "name", "created", "revoked"):
        table.add_column(column)
    for row in _run(go()):
        table.add_row(*row)
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="The key's id.")]) -> None:
    """Revoke an API key: it stops working at once."""
    from mailsvc.crmstore.models import UserRole
    from mailsvc.crmstore.services import access
    from mailsvc.crmstore.services.common import Actor, act_as

    settings = _settings()

    async def go() -> None:
        async with (open_services(settings) as services, services.sessions() as session,
                    session.begin()):
            act_as(session, Actor(user_id=None, role=UserRole.ADMIN.value, via="cli"))
            await access.revoke_api_key(session, key_id)

    try:
        _run(go())
    except MailsvcError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EX_DATAERR) from None
    err.print(f"API key {key_id} revoked")


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per check.")] = False,
) -> None:
    """Check the database and schema, the broker, each IMAP mailbox, the intake addresses and
    disk space; print what is wrong and how to fix it. Exit 1 if a check fails."""
    from mailsvc.doctor import run_checks

    settings = _settings()
    findings = _run(run_checks(settings))
    for finding in findings:
        if as_json:
            typer.echo(json.dumps({"check": finding.check, "status": finding.status,
                                   "detail": finding.detail, "fix": finding.fix}))
        else:
            typer.echo(finding.line())
    if any(f.status == "fail" for f in findings):
        raise typer.Exit(1)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"mailsvc {version('mailsvc')}")
        raise typer.Exit(EX_OK)


@app.callback()
def _main(
    _version_flag: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True,
                           help="Print the version and exit.")
    ] = False,
) -> None:
    """E-mail intake for a CRM."""


def main() -> None:
    """The console script: usage errors exit 64 (EX_USAGE) with one message, never a traceback."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except typer.TyperException as exc:  # click's usage errors and bad parameters
        exc.show()  # type: ignore[attr-defined]
        status = int(getattr(exc, "exit_code", CLICK_USAGE))
        sys.exit(EX_USAGE if status == CLICK_USAGE else status)
    except MailsvcError as exc:
        err.print(f"[red]{exc}[/red]")
        sys.exit(EX_TEMPFAIL)
    sys.exit(code if isinstance(code, int) else EX_OK)
