"""The sender: takes due mail from the delivery queue and hands it to the outbound relay.

A row is claimed in a short transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the write lock
on SQLite) that moves its next attempt a lease ahead, so no other sender takes it while it is on
the wire; the SMTP answer is recorded in a second transaction. A mail is sent twice only if the
process dies between the relay's 250 and that commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiosmtplib
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mailsvc.config import OutboundSettings
from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import Email
from mailsvc.crmstore.outbound_models import DeliveryStatus, OutboundMail
from mailsvc.crmstore.outbox import record_event
from mailsvc.outbound.compose import Verdict, retry_delay, verdict
from mailsvc.outbound.queue import mark_failed
from mailsvc.relay_url import RelayTarget, parse_relay_url

logger = logging.getLogger(__name__)

PENDING = (DeliveryStatus.QUEUED.value, DeliveryStatus.DEFERRED.value)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    email_id: int
    message_id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    raw: bytes


@dataclass(frozen=True, slots=True)
class Attempt:
    """What the relay said: the verdict and its reply (or the connection error)."""

    verdict: Verdict
    reply: str


class Sender:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], outbound: OutboundSettings,
        *, hostname: str, batch_size: int = 20,
    ) -> None:
        """``hostname``: the name we greet the relay with (MAILSVC_SMTP_HOSTNAME)."""
        if outbound.smtp_url is None:
            raise ValueError("the sender needs MAILSVC_OUTBOUND_SMTP_URL")
        self._sessions = sessions
        self._target: RelayTarget = parse_relay_url(outbound.smtp_url.get_secret_value())
        self._hostname = hostname
        self._timeout = outbound.timeout_seconds
        self._retry_for = timedelta(hours=outbound.retry_hours)
        self._initial = outbound.retry_initial_seconds
        self._poll = outbound.poll_seconds
        # A claimed mail is left alone this long: a send takes at most a few timeouts.
        self._lease = timedelta(seconds=4 * self._timeout + 60)
        self._batch_size = batch_size
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled; a store that is away is retried, never fatal."""
        logger.info("sender: delivering through %s", self._target.describe())
        while True:
            batch = asyncio.ensure_future(self._deliver_logged())
            try:
                done = await asyncio.shield(batch)
            except asyncio.CancelledError:
                # Stopping: finish the mail on the wire and record its answer (bounded by the
                # SMTP timeout), give the rest of the batch back, then stop.
                self._stopping = True
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(batch, self._timeout + 10)
                raise
            if done < self._batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll)
                self._wake.clear()

    async def _deliver_logged(self) -> int:
        try:
            return await self.deliver_due()
        except Exception as exc:
            logger.warning("sender: store unavailable (%s); retrying", exc)
            return 0

    async def deliver_due(self) -> int:
        """One batch of due mail: claim, send one by one, record each answer. Returns how many
        were tried."""
        claimed = await self._claim(utcnow())
        for number, item in enumerate(claimed):
            if self._stopping:
                await self._release([c.id for c in claimed[number:]])
                return number
            attempt = await self._send(item)
            await self._record(item, attempt, utcnow())
        return len(claimed)

    async def _release(self, ids: list[int]) -> None:
        """Claimed but not tried: due again at once, for the next sender."""
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(OutboundMail)
                .where(OutboundMail.id.in_(ids), OutboundMail.status.in_(PENDING))
                .values(next_attempt_at=utcnow())
            )

    async def _claim(self, now: datetime) -> list[Claimed]:
        async with self._sessions() as session, session.begin():
            query = (
                select(OutboundMail.id)
                .where(OutboundMail.status.in_(PENDING), OutboundMail.next_attempt_at <= now)
                .order_by(OutboundMail.next_attempt_at, OutboundMail.id)
                .limit(self._batch_size)
            )
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = list((await session.scalars(query)).all())
            if not ids:
                return []
            await session.execute(
                update(OutboundMail).where(OutboundMail.id.in_(ids))
                .values(next_attempt_at=now + self._lease)
            )
            rows = await session.execute(
                select(OutboundMail.id, OutboundMail.email_id, Email.message_id,
                       OutboundMail.mail_from, OutboundMail.rcpt_to, Email.raw)
                .join(Email, Email.id == OutboundMail.email_id)
                .where(OutboundMail.id.in_(ids)).order_by(OutboundMail.id)
            )
            return [
                Claimed(row_id, email_id, message_id or "", mail_from, tuple(rcpts), raw)
                for row_id, email_id, message_id, mail_from, rcpts, raw in rows
            ]

    async def _send(self, item: Claimed) -> Attempt:
        target = self._target
        try:
            # The client itself, not aiosmtplib.send: an acknowledgement's null return path
            # ("MAIL FROM:<>") is an empty sender, which send() refuses.
            client = aiosmtplib.SMTP(
                hostname=target.host, port=target.port, use_tls=target.implicit_tls,
                start_tls={"required": True, "opportunistic": None, "none": False}[
                    target.starttls],
                username=target.username, password=target.password, timeout=self._timeout,
                local_hostname=self._hostname,
            )
            async with client:
                refused, reply = await client.sendmail(item.mail_from, list(item.rcpt_to),
                                                       item.raw)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            text = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            worst: Verdict = "failed" if all(verdict(c) == "failed" for c in codes) else "deferred"
            return Attempt(worst, text)
        except aiosmtplib.SMTPResponseException as exc:
            return Attempt(verdict(exc.code), f"{exc.code} {exc.message}")
        except (aiosmtplib.SMTPException, OSError, TimeoutError, socket.gaierror) as exc:
            return Attempt("deferred", f"{type(exc).__name__}: {exc}" if str(exc)
                           else type(exc).__name__)
        text = f"250 {reply}"  # aiosmtplib hands over the final reply's text only
        if refused:
            text += " (refused: " + "; ".join(
                f"{address}: {r.code} {r.message}" for address, r in refused.items()) + ")"
        return Attempt("sent", text)

    async def _record(self, item: Claimed, attempt: Attempt, now: datetime) -> None:
        async with self._sessions() as session, session.begin():
            outbound = await session.get(OutboundMail, item.id, with_for_update=True)
            if outbound is None or outbound.status not in PENDING:
                return  # deleted, or a bounce failed it meanwhile
            outbound.attempts += 1
            outbound.last_reply = attempt.reply[:2000]
            if attempt.verdict == "sent":
                outbound.status = DeliveryStatus.SENT.value
                outbound.sent_at = now
                record_event(session, "email.sent", {
                    "email_id": item.email_id, "message_id": item.message_id,
                    "kind": outbound.kind, "recipients": list(item.rcpt_to),
                    "attempts": outbound.attempts, "reply": outbound.last_reply,
                }, subject=f"email/{item.email_id}")
                logger.info("sent e-mail %s (%s)", item.email_id, item.message_id)
            elif attempt.verdict == "failed":
                mark_failed(session, outbound, item.message_id, attempt.reply, "rejected", now)
                logger.warning("e-mail %s rejected: %s", item.email_id, attempt.reply)
            elif now - outbound.created_at >= self._retry_for:
                mark_failed(session, outbound, item.message_id, attempt.reply, "expired", now)
                logger.warning("e-mail %s given up after %s attempts: %s", item.email_id,
                               outbound.attempts, attempt.reply)
            else:
                outbound.status = DeliveryStatus.DEFERRED.value
                outbound.next_attempt_at = now + timedelta(
                    seconds=retry_delay(outbound.attempts, self._initial))
                logger.info("e-mail %s deferred (attempt %s): %s", item.email_id,
                            outbound.attempts, attempt.reply)
