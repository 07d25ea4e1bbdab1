"""The outbox relay: publishes pending events to a durable topic exchange, with confirms.

A row is stamped ``sent_at`` only after the broker confirmed it. On PostgreSQL rows are claimed with
``FOR UPDATE SKIP LOCKED`` so several mailsvc processes can relay side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from datetime import UTC, datetime

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mailsvc.crmstore.db import read_session
from mailsvc.crmstore.models import OutboxEvent
from mailsvc.events.schema import cloudevent, encode

logger = logging.getLogger(__name__)


class Relay:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        amqp_url: str,
        exchange_name: str,
        batch_size: int = 200,
        poll_seconds: float = 2.0,
    ) -> None:
        self._sessions = sessions
        self._amqp_url = amqp_url
        self._exchange_name = exchange_name
        self._batch_size = batch_size
        self._poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self.connected = False

    def wake(self) -> None:
        """Called after a commit that wrote events: publish now instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Publish until cancelled; reconnects with backoff while the broker is away."""
        backoff = 0.5
        while True:
            try:
                await self._connect()
                backoff = 0.5
                while True:
                    sent = await self.publish_pending()
                    if sent < self._batch_size:
                        await self._sleep()
            except asyncio.CancelledError:
                await self.close()
                raise
            except Exception as exc:
                self.connected = False
                logger.warning("relay: broker or store unavailable (%s); retrying", exc)
                await self.close()
                await asyncio.sleep(backoff + random.uniform(0, backoff))
                backoff = min(backoff * 2, 30.0)

    async def _sleep(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._poll_seconds)
        self._wake.clear()

    async def _connect(self) -> None:
        if self._exchange is not None:
            return
        self._connection = await aio_pika.connect_robust(self._amqp_url, timeout=10)
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await channel.declare_exchange(
            self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self.connected = True
        logger.info("relay: connected, exchange %s", self._exchange_name)

    async def close(self) -> None:
        self._exchange = None
        self.connected = False
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                await connection.close()
            except Exception as exc:  # closing a dead connection may fail; nothing to keep
                logger.debug("relay: close failed: %s", exc)

    async def publish_pending(self) -> int:
        """Publish one batch; returns how many events the broker confirmed.

        PostgreSQL keeps the claimed rows locked while publishing (other relays skip them); SQLite
        has a single writer, so it reads, publishes and stamps in two short transactions.
        """
        await self._connect()
        async with self._sessions() as session:
            hold_lock = session.get_bind().dialect.name == "postgresql"
            async with session.begin():
                events = await self._claim(session, hold_lock)
                if hold_lock and events:
                    results = await self._publish(events)
                    await self._mark(session, events, results)
            if events and not hold_lock:
                results = await self._publish(events)
                async with session.begin():
                    await self._mark(session, events, results)
        if not events:
            return 0
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise ConnectionError(f"broker did not confirm {len(failures)} event(s): {failures[0]}")
        return len(events)

    async def _claim(self, session: AsyncSession, lock: bool) -> list[OutboxEvent]:
        query = (
            select(OutboxEvent)
            .where(OutboxEvent.sent_at.is_(None))
            .order_by(OutboxEvent.seq)
            .limit(self._batch_size)
        )
        if lock:
            query = query.with_for_update(skip_locked=True)
        return list((await session.scalars(query)).all())

    async def _publish(self, events: list[OutboxEvent]) -> list[object]:
        """Publish all, then await all confirms together (one round trip, not one per event)."""
        assert self._exchange is not None
        exchange = self._exchange
        confirmations = [
            exchange.publish(
                aio_pika.Message(
                    body=encode(cloudevent(e.id, e.type, e.created_at, e.data, e.subject)),
                    content_type="application/cloudevents+json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=e.id,
                    type=e.type,
                    timestamp=e.created_at,
                ),
                routing_key=e.type,
                timeout=30,
            )
            for e in events
        ]
        return list(await asyncio.gather(*confirmations, return_exceptions=True))

    async def _mark(
        self, session: AsyncSession, events: list[OutboxEvent], results: list[object]
    ) -> None:
        confirmed = [e.seq for e, r in zip(events, results, strict=True)
                     if not isinstance(r, BaseException)]
        failed = [(e.seq, r) for e, r in zip(events, results, strict=True)
                  if isinstance(r, BaseException)]
        if confirmed:
            await session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.seq.in_(confirmed))
                .values(sent_at=datetime.now(UTC))
            )
        if failed:
            await session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.seq.in_([seq for seq, _ in failed]))
                .values(attempts=OutboxEvent.attempts + 1, last_error=str(failed[0][1])[:2000])
            )


async def pending_count(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with read_session(sessions) as session:
        count = await session.scalar(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.sent_at.is_(None))
        )
        return int(count or 0)
