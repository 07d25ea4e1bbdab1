"""The webhook dispatcher: fans the outbox out into deliveries and sends them over HTTP.

It reads the same transactional outbox as the AMQP relay, in ``seq`` order, with a cursor of its
own (``webhook_cursor``); the relay's ``sent_at`` is never touched, so webhooks work with or
without a broker. Two steps, each in short transactions:

- **fan out**: the events after the cursor become one ``webhook_deliveries`` row per matching
  enabled subscription (``INSERT ... ON CONFLICT DO NOTHING``: doing it twice is harmless). On
  PostgreSQL a transaction may commit an event with a lower ``seq`` after a higher one became
  visible; so a hole in the sequence is remembered and looked at again until it fills or
  ``GAP_GRACE_SECONDS`` pass (a rolled-back insert leaves a hole for ever), and the cursor stays
  below the oldest open hole.
- **send**: due deliveries are claimed (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and leased, then
  sent one subscription at a time in event order, several subscriptions at once. A retry pauses
  the subscription until then, so the newer events wait behind it and arrive in order.

A request is a CloudEvent in structured mode, signed as Standard Webhooks says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

import certifi
import httpcore
import httpx
from sqlalchemy import Select, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mailsvc import __version__, metrics
from mailsvc.config import Settings
from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import OutboxEvent
from mailsvc.crmstore.outbox import record_event
from mailsvc.crmstore.webhook_models import (
    Webhook,
    WebhookCursor,
    WebhookDelivery,
    WebhookDeliveryStatus,
)
from mailsvc.events.schema import cloudevent, encode
from mailsvc.events.webhook_rules import (
    CONTENT_TYPE,
    DisablePolicy,
    RetryPolicy,
    TargetRefused,
    Verdict,
    check_address,
    retry_after_seconds,
    signature_headers,
    verdict,
    wanted,
)

logger = logging.getLogger(__name__)

CURSOR = "webhooks"
PENDING = WebhookDeliveryStatus.PENDING.value
# How long a hole in the outbox sequence is waited for: longer than any transaction that writes
# events runs (the database's statement and idle timeouts end them well before).
GAP_GRACE_SECONDS = 300.0
MAX_GAPS = 10_000  # holes remembered at most (a huge jump is a rolled-back bulk insert)
FAN_OUT_BATCH = 500
CLAIM_BATCH = 100


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery on its way: where to, signed with what, and the request body."""

    id: int
    webhook_id: int
    url: str
    secret: str
    event_id: str
    event_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one request went: the verdict, the HTTP status (None: no answer), the error."""

    verdict: Verdict
    status: int | None
    error: str | None
    retry_after: float | None = None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves the host itself and connects only to addresses webhooks may reach, so a name
    cannot be pointed at an inner service between a check and the connection (TLS still checks
    the certificate against the name)."""

    def __init__(self, allow_private: bool) -> None:
        self._allow_private = allow_private
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109 (the interface's)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:  # every one: a name with one inner address is refused
            check_address(ip_address(address.split("%")[0]), self._allow_private)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address,
                                                     socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last or httpcore.ConnectError(f"{host} has no address")

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None,  # noqa: ASYNC109 (the interface's)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise TargetRefused("webhooks are not sent to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def build_client(settings: Settings) -> httpx.AsyncClient:
    """The HTTP client of the dispatcher: guarded connections, no redirects, no proxies from the
    environment, a bound on every phase of a request."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(  # the same pool, with the guarded backend
        ssl_context=ssl.create_default_context(cafile=certifi.where()),
        max_connections=settings.webhook_concurrency * 2,
        network_backend=GuardedBackend(settings.webhook_allow_private),
    )
    return httpx.AsyncClient(
        transport=transport, follow_redirects=False, trust_env=False,
        timeout=httpx.Timeout(settings.webhook_timeout_seconds),
        headers={"user-agent": f"mailsvc/{__version__} (webhooks)"},
    )


class WebhookDispatcher:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], settings: Settings,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._sessions = sessions
        self._client = client or build_client(settings)
        self._timeout = settings.webhook_timeout_seconds
        self._poll = settings.webhook_poll_seconds
        self._retry = RetryPolicy(settings.webhook_max_attempts,
                                  settings.webhook_retry_initial_seconds,
                                  settings.webhook_retry_max_seconds)
        self._disable = DisablePolicy(settings.webhook_disable_after_failures,
                                      settings.webhook_disable_after_hours * 3600)
        self._limit = asyncio.Semaphore(settings.webhook_concurrency)
        # A claimed delivery is left alone this long: a request takes at most its timeout.
        self._lease = timedelta(seconds=2 * self._timeout + 30)
        self._wake = asyncio.Event()
        self._scanned_to: int | None = None
        self._gaps: dict[int, float] = {}

    def wake(self) -> None:
        """Called after a commit that wrote events: look now instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Dispatch until cancelled; a store that is away is retried, never fatal."""
        logger.info("webhooks: dispatching the outbox")
        try:
            while True:
                try:
                    busy = await self.step()
                except Exception as exc:
                    logger.warning("webhooks: store unavailable (%s); retrying", exc)
                    busy = False
                if not busy:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._poll)
                    self._wake.clear()
        finally:
            await self._client.aclose()

    async def step(self) -> bool:
        """Fan out new events, send what is due; True if there may be more right away."""
        fanned = await self.fan_out()
        sent = await self.deliver_due()
        return fanned >= FAN_OUT_BATCH or sent >= CLAIM_BATCH

    # --- fan out ------------------------------------------------------------------------------

    async def fan_out(self) -> int:
        """One batch of new events into delivery rows; returns how many events were read."""
        async with self._sessions() as session, session.begin():
            cursor = await self._cursor(session)
            if self._scanned_to is None or self._scanned_to < cursor.position:
                self._scanned_to = cursor.position
                self._gaps.clear()
            columns = (OutboxEvent.seq, OutboxEvent.id, OutboxEvent.type)
            new = list((await session.execute(
                select(*columns).where(OutboxEvent.seq > self._scanned_to)
                .order_by(OutboxEvent.seq).limit(FAN_OUT_BATCH)
            )).all())
            filled = list((await session.execute(
                select(*columns).where(OutboxEvent.seq.in_(sorted(self._gaps)))
            )).all()) if self._gaps else []
            self._note_gaps([row.seq for row in new], time.monotonic())
            for row in filled:
                self._gaps.pop(row.seq, None)
            events = [(int(row.seq), str(row.id), str(row.type)) for row in [*filled, *new]]
            if events:
                await self._insert_deliveries(session, events)
            position = min(self._gaps) - 1 if self._gaps else self._scanned_to
            if position > cursor.position:
                cursor.position = position
                cursor.updated_at = utcnow()
            return len(new)

    def _note_gaps(self, seqs: list[int], now: float) -> None:
        """Remember the holes before and between ``seqs`` (read in order), forget old ones."""
        assert self._scanned_to is not None
        expected = self._scanned_to + 1
        for seq in seqs:
            if seq - expected <= MAX_GAPS - len(self._gaps):
                for missing in range(expected, seq):
                    self._gaps[missing] = now
            expected = seq + 1
        if seqs:
            self._scanned_to = seqs[-1]
        for seq in [s for s, seen in self._gaps.items() if now - seen > GAP_GRACE_SECONDS]:
            del self._gaps[seq]

    async def _cursor(self, session: AsyncSession) -> WebhookCursor:
        """The cursor row, locked on PostgreSQL (one dispatcher fans out at a time); made on
        first use just before the oldest subscription's start (or the newest event)."""
        postgres = session.get_bind().dialect.name == "postgresql"
        query = select(WebhookCursor).where(WebhookCursor.name == CURSOR)
        if postgres:
            query = query.with_for_update()
        cursor = await session.scalar(query)
        if cursor is not None:
            return cursor
        newest = await session.scalar(select(func.max(OutboxEvent.seq))) or 0
        oldest_start = await session.scalar(select(func.min(Webhook.start_seq)))
        start = min(newest, oldest_start) if oldest_start is not None else newest
        values = {"name": CURSOR, "position": int(start), "updated_at": utcnow()}
        await session.execute(_insert_ignore(session, WebhookCursor).values(**values))
        cursor = await session.scalar(query.execution_options(populate_existing=True))
        assert cursor is not None
        return cursor

    async def _insert_deliveries(
        self, session: AsyncSession, events: list[tuple[int, str, str]],
    ) -> None:
        hooks = (await session.execute(
            select(Webhook.id, Webhook.start_seq, Webhook.event_types)
            .where(Webhook.enabled.is_(True))
        )).all()
        now = utcnow()
        rows = [
            {"webhook_id": hook_id, "event_seq": seq, "event_id": event_id,
             "event_type": event_type, "status": PENDING, "attempts": 0,
             "next_attempt_at": now, "created_at": now}
            for seq, event_id, event_type in events
            for hook_id, start_seq, types in hooks
            if seq > start_seq and wanted(types, event_type)
        ]
        if rows:
            await session.execute(_insert_ignore(session, WebhookDelivery), rows)

    # --- send ---------------------------------------------------------------------------------

    async def deliver_due(self) -> int:
        """Claim due deliveries and send them; returns how many were claimed."""
        claimed = await self._claim(utcnow())
        groups: dict[int, list[Claimed]] = {}
        for item in claimed:
            groups.setdefault(item.webhook_id, []).append(item)
        await asyncio.gather(*(self._deliver_group(items) for items in groups.values()))
        return len(claimed)

    async def _deliver_group(self, items: list[Claimed]) -> None:
        """One subscription's deliveries, in event order; after a retry or a disable, the rest
        go back (they wait behind the retry)."""
        for number, item in enumerate(items):
            async with self._limit:
                attempt = await self._send(item)
            go_on = await self._record(item, attempt, utcnow())
            if not go_on:
                await self._release([i.id for i in items[number + 1:]])
                return

    async def _claim(self, now: datetime) -> list[Claimed]:
        async with self._sessions() as session, session.begin():
            query: Select[Any] = (
                select(WebhookDelivery.id)
                .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                .where(WebhookDelivery.status == PENDING,
                       WebhookDelivery.next_attempt_at <= now,
                       Webhook.enabled.is_(True),
                       (Webhook.paused_until.is_(None)) | (Webhook.paused_until <= now))
                .order_by(WebhookDelivery.event_seq, WebhookDelivery.id)
                .limit(CLAIM_BATCH)
            )
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(of=WebhookDelivery, skip_locked=True)
            ids = list((await session.scalars(query)).all())
            if not ids:
                return []
            await session.execute(
                update(WebhookDelivery).where(WebhookDelivery.id.in_(ids))
                .values(next_attempt_at=now + self._lease)
            )
            rows = await session.execute(
                select(WebhookDelivery.id, Webhook.id, Webhook.url, Webhook.secret,
                       OutboxEvent.id, OutboxEvent.type, OutboxEvent.created_at,
                       OutboxEvent.data, OutboxEvent.subject)
                .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                .join(OutboxEvent, OutboxEvent.seq == WebhookDelivery.event_seq)
                .where(WebhookDelivery.id.in_(ids))
                .order_by(WebhookDelivery.event_seq, WebhookDelivery.id)
            )
            return [
                Claimed(delivery_id, hook_id, url, secret, event_id, event_type,
                        encode(cloudevent(event_id, event_type, created, data, subject)))
                for (delivery_id, hook_id, url, secret, event_id, event_type, created, data,
                     subject) in rows
            ]

    async def _release(self, ids: list[int]) -> None:
        """Claimed, not sent: due again (behind a paused subscription's retry, if any)."""
        if not ids:
            return
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(ids), WebhookDelivery.status == PENDING)
                .values(next_attempt_at=utcnow())
            )

    async def _send(self, item: Claimed) -> Attempt:
        """One POST; its answer or error as an ``Attempt`` (the body is never read)."""
        headers = {"content-type": CONTENT_TYPE,
                   **signature_headers(item.secret, item.event_id, utcnow(), item.body)}
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                request = self._client.build_request("POST", item.url, content=item.body,
                                                     headers=headers)
                response = await self._client.send(request, stream=True)
                await response.aclose()
            code = response.status_code
            result = Attempt(verdict(code), code, None if code < 300 else _describe(response),
                             retry_after_seconds(response.headers.get("retry-after")))
        except TargetRefused as exc:
            result = Attempt("failed", None, f"refused target: {exc}")
        except (TimeoutError, httpx.TimeoutException):
            result = Attempt("retry", None, f"no answer within {self._timeout:g} s")
        except (httpx.HTTPError, OSError, ValueError) as exc:
            result = Attempt("retry", None, f"{type(exc).__name__}: {exc}"[:2000])
        metrics.record_webhook_attempt(result.verdict, time.perf_counter() - started)
        return result

    async def _record(self, item: Claimed, attempt: Attempt, now: datetime) -> bool:
        """Write the attempt down; False when the subscription's other deliveries must wait
        (a retry is pending, it was disabled or deleted)."""
        async with self._sessions() as session, session.begin():
            delivery = await session.get(WebhookDelivery, item.id, with_for_update=True)
            hook = await session.get(Webhook, item.webhook_id, with_for_update=True)
            if delivery is None or hook is None or delivery.status != PENDING:
                return False  # deleted meanwhile
            delivery.attempts += 1
            delivery.last_attempt_at = now
            delivery.last_status = attempt.status
            delivery.last_error = attempt.error
            if attempt.verdict == "delivered":
                delivery.status = WebhookDeliveryStatus.DELIVERED.value
                delivery.delivered_at = now
                hook.consecutive_failures = 0
                hook.failing_since = None
                hook.paused_until = None
                hook.last_success_at = now
                return hook.enabled
            hook.failing_since = hook.failing_since or now
            go_on = True
            if attempt.verdict == "failed" or self._retry.exhausted(delivery.attempts):
                delivery.status = WebhookDeliveryStatus.FAILED.value
                delivery.failed_at = now
                hook.consecutive_failures += 1
                hook.paused_until = None
                logger.warning("webhook %s: delivery of event %s failed for good: %s",
                               hook.id, item.event_id, attempt.error)
            else:
                delay = self._retry.delay(delivery.attempts, random.uniform(0.5, 1.0),
                                          attempt.retry_after)
                delivery.next_attempt_at = hook.paused_until = now + timedelta(seconds=delay)
                go_on = False
                logger.info("webhook %s: event %s will be tried again in %.1f s (%s)",
                            hook.id, item.event_id, delay, attempt.error)
            reason = self._disable.reason(hook.consecutive_failures, hook.failing_since, now)
            if reason is not None and hook.enabled:
                _disable(session, hook, reason, now)
                return False
            return go_on and hook.enabled


def _disable(session: AsyncSession, hook: Webhook, reason: str, now: datetime) -> None:
    hook.enabled = False
    hook.disabled_at = now
    hook.disabled_reason = reason
    hook.paused_until = None
    record_event(session, "webhook.disabled", {
        "id": hook.id, "host": urlsplit(hook.url).hostname, "event_types": hook.event_types,
        "reason": reason, "consecutive_failures": hook.consecutive_failures,
        "failing_since": hook.failing_since.isoformat() if hook.failing_since else None,
    }, subject=f"webhook/{hook.id}")
    metrics.record_webhook_disabled()
    logger.warning("webhook %s disabled: %s", hook.id, reason)


def _describe(response: httpx.Response) -> str:
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def _insert_ignore(session: AsyncSession, model: Any) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the session's dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return pg_insert(model).on_conflict_do_nothing()
    if session.get_bind().dialect.name == "sqlite":
        return sqlite_insert(model).on_conflict_do_nothing()
    return insert(model)
