"""Quarantined mail: list it, export its raw bytes, and retry it after a fix."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mailsvc.crmstore.db import read_session
from mailsvc.crmstore.models import Email, QuarantinedMail
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
