"""Readiness: can this instance accept mail right now? Every check has its own deadline.

Ready means the database answers (within ``DATABASE_CHECK_SECONDS``): that is what SMTP 250
depends on. The broker is reported, not required: while it is away events wait in the outbox and
mail is still accepted, so a load balancer must not take the instance out because events are late.
IMAP mailboxes are reported too. A check never hangs: a database check still running after its
deadline counts as failed, and the next request waits on that same check instead of piling up
another one.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mailsvc.bootstrap import Services
from mailsvc.crmstore.db import read_session

DATABASE_CHECK_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    checks: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {"status": "ok" if self.ready else "unavailable", "checks": self.checks}


class DatabaseCheck:
    """``SELECT 1`` with a deadline; at most one in flight."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], timeout: float = DATABASE_CHECK_SECONDS
    ) -> None:
        self._sessions = sessions
        self._timeout = timeout
        self._running: asyncio.Task[None] | None = None

    async def __call__(self) -> str:
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._select_one(), name="readyz-database")
            self._running.add_done_callback(_consume)
        # No cancel at the deadline: that could cut a database command half-way; the check ends
        # on its own within the engine's own timeouts.
        done, _ = await asyncio.wait({self._running}, timeout=self._timeout)
        if not done:
            return f"timeout: no answer within {self._timeout:g}s"
        error = self._running.exception()
        if error is not None:
            return f"error: {type(error).__name__}"
        return "ok"

    async def _select_one(self) -> None:
        async with read_session(self._sessions) as session:
            await session.execute(text("SELECT 1"))


def _consume(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        task.exception()  # retrieved here so a late failure is not logged as "never retrieved"


class ReadinessChecks:
    """Kept on the app for its life, so a slow database check is shared by every request."""

    def __init__(
        self, services: Services, database_timeout: float = DATABASE_CHECK_SECONDS
    ) -> None:
        self._services = services
        self._database_timeout = database_timeout
        self._database = DatabaseCheck(services.sessions, database_timeout)

    async def check(self) -> Readiness:
        services = self._services
        checks: dict[str, Any] = {"database": await self._database()}
        if services.relay is None:
            checks["broker"] = "not configured"
        else:
            broker = services.relay.status()
            checks["broker"] = broker.state
            checks["broker_last_ok_seconds_ago"] = broker.last_ok_seconds_ago
            if broker.last_error is not None and broker.state != "ok":
                checks["broker_last_error"] = broker.last_error
        if services.mailboxes:
            # Reported, not required: one mailbox down must not take the SMTP intake offline.
            checks["mailboxes"] = {p.mailbox.name: p.status() for p in services.mailboxes}
        if checks["database"] == "ok":
            # Reported, not required: a backlog means deciding is behind, not that intake stopped.
            checks["intake_backlog"] = await intake_backlog(services, self._database_timeout)
        return Readiness(checks["database"] == "ok", checks)


async def intake_backlog(
    services: Services, deadline: float = DATABASE_CHECK_SECONDS
) -> dict[str, Any]:
    """Accepted mail not decided yet (count, age of the oldest), read within ``deadline``
    seconds; also sets the gauges."""
    from mailsvc import metrics
    from mailsvc.ingest.decider import backlog

    try:
        async with asyncio.timeout(deadline):
            found = await backlog(services.pipeline.writer)
    except Exception as exc:
        return {"error": type(exc).__name__}
    metrics.record_backlog(found.count, found.age_seconds())
    return found.to_json()


async def store_gauges(services: Services, deadline: float = DATABASE_CHECK_SECONDS) -> None:
    """Outbox depth and age, quarantine size: read within ``deadline`` seconds for /metrics."""
    from sqlalchemy import func, select

    from mailsvc import metrics
    from mailsvc.crmstore.base import utcnow
    from mailsvc.crmstore.models import OutboxEvent, QuarantinedMail

    try:
        async with asyncio.timeout(deadline), read_session(services.sessions) as session:
            pending, oldest = (await session.execute(
                select(func.count(), func.min(OutboxEvent.created_at))
                .where(OutboxEvent.sent_at.is_(None))
            )).one()
            quarantined = await session.scalar(select(func.count()).select_from(QuarantinedMail))
    except Exception:  # the scrape still answers; the gauges keep their last values
        return
    age = 0.0
    if isinstance(oldest, datetime):
        stamp = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
        age = max(0.0, (utcnow() - stamp).total_seconds())
    metrics.record_store_gauges(int(pending or 0), age, int(quarantined or 0))
