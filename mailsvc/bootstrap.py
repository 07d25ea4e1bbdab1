"""Wires the real parts together (engine, pipeline, relay) from one Settings object."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mailsvc.config import Settings
from mailsvc.crmstore.db import create_engine, create_session_factory
from mailsvc.crmstore.migrate import current_revision, head_revision, upgrade
from mailsvc.errors import ConfigError, StoreUnavailable
from mailsvc.events.relay import Relay
from mailsvc.ingest.pipeline import Pipeline
from mailsvc.outbound.queue import configure_sessions

if TYPE_CHECKING:
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


async def ensure_schema(engine: AsyncEngine, settings: Settings) -> None:
    """Upgrade the schema (MAILSVC_AUTO_MIGRATE=true, the default) or refuse an old one."""
    try:
        if settings.auto_migrate:
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


def build_relay(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> Relay | None:
    if settings.amqp_url is None:
        return None
    return Relay(
        sessions,
        settings.amqp_url.get_secret_value(),
        settings.amqp_exchange,
        batch_size=settings.relay_batch_size,
        poll_seconds=settings.relay_poll_seconds,
    )


@asynccontextmanager
async def open_services(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Services]:
    engine = create_engine(settings.database_url)
    try:
        if migrate:
            await ensure_schema(engine, settings)
        sessions = create_session_factory(engine)
        configure_sessions(sessions, settings)  # outbound mail's policy (mailsvc/outbound)
        relay = build_relay(settings, sessions)
        pipeline = Pipeline(sessions, settings, on_commit=relay.wake if relay else None)
        yield Services(settings, engine, sessions, pipeline, relay)
    finally:
        await engine.dispose()
