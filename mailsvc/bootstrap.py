"""Wires the real parts together (engine, pipeline, relay, webhooks) from one Settings object."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mailsvc.config import EventsSettings, Settings, StoreSettings
from mailsvc.crmstore.db import create_engine, create_session_factory
from mailsvc.crmstore.revision import database_revision, script_head
from mailsvc.crmstore.services.assignment import AssignmentPolicy, configure_assignment
from mailsvc.errors import ConfigError, StoreUnavailable
from mailsvc.ingest.pipeline import Pipeline
from mailsvc.outbound.queue import configure_sessions

if TYPE_CHECKING:
    from mailsvc.events.relay import Relay
    from mailsvc.events.webhooks import WebhookDispatcher
    from mailsvc.ingest.imap import MailboxPoller

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    pipeline: Pipeline
    relay: Relay | None
    # The IMAP pollers `mailsvc serve` runs, so /readyz can tell how each mailbox is doing.
    mailboxes: list[MailboxPoller] = field(default_factory=list)
    # Told after each commit that wrote events (the relay; the webhook dispatcher once started).
    wakers: list[Callable[[], None]] = field(default_factory=list)


async def ensure_schema(engine: AsyncEngine, store: StoreSettings) -> None:
    """Upgrade the schema (MAILSVC_AUTO_MIGRATE=true, the default) or refuse an old one.

    The usual case, a current schema, is told without loading Alembic: the database's
    ``alembic_version`` against the head of the migration scripts."""
    try:
        head = script_head()
        if head is not None and await database_revision(engine) == head:
            return
    except (SQLAlchemyError, OSError) as exc:
        raise StoreUnavailable(f"database not reachable: {exc}") from exc
    from mailsvc.crmstore.migrate import current_revision, head_revision, upgrade

    try:
        if store.auto_migrate:
            await upgrade(engine)
            return
        current = await current_revision(engine)
    except (SQLAlchemyError, OSError) as exc:
        raise StoreUnavailable(f"database not reachable: {exc}") from exc
    if current != head_revision():
        raise ConfigError(
            f"database schema is at {current or 'nothing'}, this mailsvc needs {head_revision()}: "
            "run `mailsvc db upgrade` (or set MAILSVC_AUTO_MIGRATE=true)"
        )


def build_relay(events: EventsSettings, sessions: async_sessionmaker[AsyncSession]) -> Relay | None:
    if events.amqp_url is None:
        return None
    from mailsvc.events.relay import Relay

    return Relay(
        sessions,
        events.amqp_url.get_secret_value(),
        events.exchange,
        batch_size=events.batch_size,
        poll_seconds=events.poll_seconds,
        publish_timeout=events.publish_timeout_seconds,
        reconnect_max=events.reconnect_max_seconds,
        unroutable_retry=events.unroutable_retry_seconds,
    )


def build_webhooks(services: Services) -> WebhookDispatcher:
    """The webhook dispatcher (docs/events.md#webhooks): it runs with or without a broker, so
    every process that relays starts one; imported only here, so short commands never load the
    HTTP client."""
    from mailsvc.events.webhooks import WebhookDispatcher

    dispatcher = WebhookDispatcher(services.sessions, services.settings)
    services.wakers.append(dispatcher.wake)
    return dispatcher


@asynccontextmanager
async def open_services(
    settings: Settings, *, migrate: bool = True, application_name: str | None = None,
    sqlite_in_loop: bool = False,
) -> AsyncIterator[Services]:
    """The wired service; ``application_name`` names its PostgreSQL sessions (default
    ``mailsvc``; decide workers: ``mailsvc-decide``). ``sqlite_in_loop``: SQLite statements run
    in the event loop's thread (``crmstore/db.InLoopConnection``; decide workers)."""
    engine = create_engine(settings.store.url, settings.store.timeouts(), application_name,
                           sqlite_in_loop=sqlite_in_loop)
    try:
        if migrate:
            await ensure_schema(engine, settings.store)
        sessions = create_session_factory(engine)
        # outbound mail's policy (mailsvc/outbound)
        configure_sessions(sessions, settings.outbound, settings.linking, settings.intake)
        configure_assignment(sessions, AssignmentPolicy(
            mode=settings.linking.ticket_assignment, by_type=settings.linking.ticket_assignees))
        relay = build_relay(settings.events, sessions)
        wakers: list[Callable[[], None]] = [relay.wake] if relay else []

        def wake_all() -> None:
            for wake in wakers:
                wake()

        pipeline = Pipeline(
            sessions, intake=settings.intake, linking=settings.linking, trust=settings.trust,
            store=settings.store, on_commit=wake_all,
        )
        try:
            yield Services(settings, engine, sessions, pipeline, relay, wakers=wakers)
        finally:
            await pipeline.stop()  # a no-op when the caller stopped it (or never started it)
            await pipeline.close()
    finally:
        await engine.dispose()
