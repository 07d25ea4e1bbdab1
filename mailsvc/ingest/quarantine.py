"""Quarantined mail: list it, export its raw bytes, retry it after a fix, or drop it."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mailsvc.crmstore.db import read_session
from mailsvc.crmstore.models import Email, QuarantinedMail
from mailsvc.crmstore.outbox import record_event
from mailsvc.ingest.outcome import Outcome
from mailsvc.ingest.pipeline import Pipeline
from mailsvc.mail import Envelope, RawMail, Role

RETRY_BATCH = 100


async def list_quarantined(
    sessions: async_sessionmaker[AsyncSession], ids: Sequence[int] = (), limit: int | None = None
) -> list[QuarantinedMail]:
    query = select(QuarantinedMail).order_by(QuarantinedMail.id)
    if ids:
        query = query.where(QuarantinedMail.id.in_(ids))
    if limit:
        query = query.limit(limit)
    async with read_session(sessions) as session:
        return list(await session.scalars(query))


def raw_mail(row: QuarantinedMail | Email) -> RawMail:
    """The bytes and envelope as received (kept for quarantined and for stored mail alike)."""
    envelope = Envelope(row.envelope_from, tuple(row.envelope_to), Role(row.intake_role),
                        row.source)
    return RawMail(row.raw, envelope)


async def retry_quarantined(
    pipeline: Pipeline, sessions: async_sessionmaker[AsyncSession], ids: Sequence[int] = ()
) -> list[tuple[int, Outcome]]:
    """Run quarantined mail (all, or the given ids) through the pipeline again."""
    rows = await list_quarantined(sessions, ids)
    results: list[tuple[int, Outcome]] = []
    for start in range(0, len(rows), RETRY_BATCH):
        chunk = rows[start : start + RETRY_BATCH]
        items = [await pipeline.prepare(raw_mail(row)) for row in chunk]
        outcomes = await pipeline.process(items, release=[row.id for row in chunk])
        results.extend((row.id, outcome) for row, outcome in zip(chunk, outcomes, strict=True))
    return results


async def drop_quarantined(
    sessions: async_sessionmaker[AsyncSession], ids: Sequence[int], *, by: str
) -> list[int]:
    """Delete the given quarantined mails for good (raw bytes included); the ids dropped (ids
    that are not in quarantine are skipped). Each drop is an ``email.quarantine_dropped`` event
    naming ``by``. A dropped mail no longer counts as a duplicate: sent again, it is taken in."""
    if not ids:
        return []
    async with sessions() as session, session.begin():
        rows = list(await session.execute(
            select(QuarantinedMail.id, QuarantinedMail.reason, QuarantinedMail.intake_role)
            .where(QuarantinedMail.id.in_(list(ids))).order_by(QuarantinedMail.id)
        ))
        if not rows:
            return []
        await session.execute(
            delete(QuarantinedMail).where(QuarantinedMail.id.in_([row.id for row in rows]))
        )
        for row in rows:
            record_event(session, "email.quarantine_dropped", {
                "quarantine_id": row.id, "reason": row.reason, "intake_role": row.intake_role,
                "dropped_by": by,
            }, subject=f"quarantine/{row.id}")
    return [row.id for row in rows]
