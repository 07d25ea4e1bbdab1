"""The outbox relay: publishes pending events to a durable topic exchange, with confirms.

A row is stamped ``sent_at`` only after the broker confirmed it *and routed it to a queue*: events
are published ``mandatory``, so one that no queue is bound for comes back (basic.return) and stays
in the outbox, parked with ``last_error = "unroutable: ..."`` and retried every
``unroutable_retry`` seconds, while the other events go on in order. On PostgreSQL rows are claimed
with ``FOR UPDATE SKIP LOCKED`` so several mailsvc processes can relay side by side.

The relay also keeps an honest account of the broker for /readyz: when it last completed a round
trip (a confirmed publish, or a probe while idle), and what failed last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aiormq.exceptions import PublishError
from sqlalchemy import ColumnElement, and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mailsvc import metrics
from mailsvc.crmstore.db import read_session
from mailsvc.crmstore.models import OutboxEvent
from mailsvc.events.schema import cloudevent, encode

logger = logging.getLogger(__name__)

UNROUTABLE = "unroutable: "
BACKOFF_INITIAL = 0.2
# A broker that answered no probe for this long (plus one poll) is reported unavailable.
PROBE_TIMEOUT = 5.0


class BrokerUnavailable(ConnectionError):
    """The broker did not answer, or did not confirm a publish."""


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    """What /readyz says about the broker: true at the moment it is asked."""

    state: str  # "ok", "connecting", "unavailable"
    last_ok_seconds_ago: float | None  # the last completed round trip with the broker
    last_error: str | None


class Relay:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        amqp_url: str,
        exchange_name: str,
        batch_size: int = 200,
        poll_seconds: float = 2.0,
        *,
        publish_timeout: float = 10.0,
        reconnect_max: float = 5.0,
        unroutable_retry: float = 30.0,
    ) -> None:
        self._sessions = sessions
        self._amqp_url = amqp_url
        self._exchange_name = exchange_name
        self._batch_size = batch_size
        self._poll_seconds = poll_seconds
        self._publish_timeout = publish_timeout
        self._reconnect_max = reconnect_max
        self._unroutable_retry = unroutable_retry
        self._wake = asyncio.Event()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._last_ok: float | None = None
        self._last_parked_try = time.monotonic()
        self.last_error: str | None = None
        self.connected = False

    def wake(self) -> None:
        """Called after a commit that wrote events: publish now instead of at the next poll."""
        self._wake.set()

    def status(self) -> BrokerStatus:
        """Connected *and* a round trip completed lately; a hung broker turns stale within
        ``PROBE_TIMEOUT`` plus one poll, a closed one at once."""
        age = None if self._last_ok is None else time.monotonic() - self._last_ok
        fresh = age is not None and age <= self.stale_after
        if self.connected and fresh:
            state = "ok"
        elif self._last_ok is None and self.last_error is None:
            state = "connecting"
        else:
            state = "unavailable"
        return BrokerStatus(state, None if age is None else round(age, 1), self.last_error)

    @property
    def stale_after(self) -> float:
        return self._poll_seconds + min(PROBE_TIMEOUT, self._publish_timeout)

    async def run(self) -> None:
        """Publish until cancelled; reconnects with a short, capped backoff while the broker is
        away, so events flow again within seconds of its return."""
        backoff = BACKOFF_INITIAL
        heartbeat = asyncio.create_task(self._heartbeat(), name="relay-heartbeat")
        try:
            while True:
                try:
                    await self._connect()
                    backoff = BACKOFF_INITIAL
                    await self._publish_forever()
                except BrokerUnavailable as exc:
                    await self._broker_down(exc)
                except Exception as exc:
                    # The store, not the broker: keep the broker connection (the heartbeat
                    # keeps its state true meanwhile).
                    logger.warning("relay: store unavailable (%s); retrying", exc)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # jitter, within the cap
                backoff = min(backoff * 2, self._reconnect_max)
        finally:  # cancelled
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            await self.close()

    async def _heartbeat(self) -> None:
        """Probe the idle broker each poll, even while publishing waits on a slow store."""
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                await self._probe_if_idle()
            except BrokerUnavailable as exc:
                self.connected = False
                self.last_error = f"{type(exc.__cause__ or exc).__name__}: {exc}"[:500]

    async def _publish_forever(self) -> None:
        while True:
            sent = await self.publish_pending()
            if time.monotonic() - self._last_parked_try >= self._unroutable_retry:
                self._last_parked_try = time.monotonic()
                await self.publish_pending(parked=True)
            if sent < self._batch_size:
                await self._sleep()

    async def _broker_down(self, exc: BrokerUnavailable) -> None:
        cause = exc.__cause__ or exc
        self.last_error = f"{type(cause).__name__}: {cause}"[:500]
        logger.warning("relay: broker unavailable (%s); reconnecting", self.last_error)
        await self.close()

    async def _sleep(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._poll_seconds)
        self._wake.clear()

    async def _probe_if_idle(self) -> None:
        """No publish lately: one cheap round trip, so an idle relay still knows the broker
        answers (a black-holed broker otherwise looks connected until AMQP heartbeats give up)."""
        if self._last_ok is not None and time.monotonic() - self._last_ok < self._poll_seconds:
            return
        if self._channel is None:
            return
        try:
            # Declaring the exchange again is idempotent and also restores it on a reset broker.
            await self._channel.declare_exchange(
                self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True,
                timeout=min(PROBE_TIMEOUT, self._publish_timeout),
            )
        except Exception as exc:
            raise BrokerUnavailable(f"no answer to a probe: {exc!r}") from exc
        self._ok()

    def _ok(self) -> None:
        self._last_ok = time.monotonic()
        self.connected = True

    async def _connect(self) -> None:
        if self._exchange is not None:
            return
        try:
            self._connection = await aio_pika.connect_robust(
                self._amqp_url, timeout=self._publish_timeout,
                reconnect_interval=self._reconnect_max,
            )
            # on_return_raises: a mandatory message no queue took fails its confirm
            # (PublishError).
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._exchange = await self._channel.declare_exchange(
                self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True,
                timeout=self._publish_timeout,
            )
        except Exception as exc:
            raise BrokerUnavailable(f"cannot connect: {exc!r}") from exc
        self._ok()
        self.last_error = None
        logger.info("relay: connected, exchange %s", self._exchange_name)

    async def close(self) -> None:
        self._exchange = None
        self._channel = None
        self.connected = False
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                await asyncio.wait_for(connection.close(), self._publish_timeout)
            except Exception as exc:  # closing a dead connection may fail; nothing to keep
                logger.debug("relay: close failed: %s", exc)

    async def publish_pending(self, *, parked: bool = False) -> int:
        """Publish one batch; returns how many events the broker confirmed and routed.

        ``parked`` picks the events that came back unroutable before. PostgreSQL keeps the
        claimed rows locked while publishing (other relays skip them); SQLite has a single
        writer, so it reads, publishes and stamps in two short transactions.
        """
        await self._connect()
        async with self._sessions() as session:
            hold_lock = session.get_bind().dialect.name == "postgresql"
            async with session.begin():
                events = await self._claim(session, hold_lock, parked)
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
        unroutable = {e.type: r for e, r in zip(events, results, strict=True)
                      if isinstance(r, PublishError)}
        broken = [r for r in failures if not isinstance(r, PublishError)]
        if not broken:
            self._ok()  # the broker answered every publish
        if unroutable:
            logger.warning(
                "relay: event(s) unroutable (no queue bound for %s); kept in the outbox, "
                "retried every %ss", ", ".join(sorted(unroutable)), self._unroutable_retry,
            )
        if broken:
            raise BrokerUnavailable(
                f"broker did not confirm {len(broken)} event(s): {broken[0]!r}"
            ) from broken[0]
        return len(events) - len(failures)

    async def _claim(self, session: AsyncSession, lock: bool, parked: bool) -> list[OutboxEvent]:
        query = (
            select(OutboxEvent)
            .where(OutboxEvent.sent_at.is_(None), _parked() if parked else ~_parked())
            .order_by(OutboxEvent.seq)
            .limit(self._batch_size)
        )
        if lock:
            query = query.with_for_update(skip_locked=True)
        return list((await session.scalars(query)).all())

    async def _publish(self, events: list[OutboxEvent]) -> list[object]:
        """Publish all, then await all confirms together (one round trip, not one per event)."""
        started = time.perf_counter()
        results = await self._publish_all(events)
        unroutable = sum(isinstance(r, PublishError) for r in results)
        failed = sum(isinstance(r, BaseException) for r in results)
        metrics.record_relay_batch(len(events), time.perf_counter() - started,
                                   published=len(events) - failed, unroutable=unroutable,
                                   unconfirmed=failed - unroutable)
        return results

    async def _publish_all(self, events: list[OutboxEvent]) -> list[object]:
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
                mandatory=True,
                timeout=self._publish_timeout,
            )
            for e in events
        ]
        return list(await asyncio.gather(*confirmations, return_exceptions=True))

    async def _mark(
        self, session: AsyncSession, events: list[OutboxEvent], results: list[object]
    ) -> None:
        confirmed = [e.seq for e, r in zip(events, results, strict=True)
                     if not isinstance(r, BaseException)]
        if confirmed:
            await session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.seq.in_(confirmed))
                .values(sent_at=datetime.now(UTC))
            )
        failed: dict[str, list[int]] = {}
        for e, r in zip(events, results, strict=True):
            if isinstance(r, BaseException):
                failed.setdefault(_describe_failure(e, r), []).append(e.seq)
        for error, seqs in failed.items():
            await session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.seq.in_(seqs))
                .values(attempts=OutboxEvent.attempts + 1, last_error=error)
            )


def _parked() -> ColumnElement[bool]:
    """Events that came back unroutable: retried on their own, so they never block the rest."""
    return and_(OutboxEvent.last_error.is_not(None), OutboxEvent.last_error.startswith(UNROUTABLE))


def _describe_failure(event: OutboxEvent, error: BaseException) -> str:
    if isinstance(error, PublishError):
        return f"{UNROUTABLE}no queue is bound to exchange for routing key {event.type}"
    return f"{type(error).__name__}: {error}"[:2000]


async def pending_count(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with read_session(sessions) as session:
        count = await session.scalar(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.sent_at.is_(None))
        )
        return int(count or 0)


async def unroutable_types(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """Pending events the broker could not route to any queue, counted by type (routing key)."""
    async with read_session(sessions) as session:
        rows = await session.execute(
            select(OutboxEvent.type, func.count())
            .where(OutboxEvent.sent_at.is_(None), _parked())
            .group_by(OutboxEvent.type)
        )
        return {str(kind): int(count) for kind, count in rows.all()}
