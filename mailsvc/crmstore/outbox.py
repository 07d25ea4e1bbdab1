"""Record events in the outbox, inside the caller's transaction (the relay publishes them later)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.bulk import insert_rows
from mailsvc.crmstore.models import OutboxEvent


def record_event(
    session: AsyncSession, event_type: str, data: Mapping[str, Any], subject: str | None = None,
    *, batch: list[dict[str, Any]] | None = None,
) -> None:
    """Add an event to the session; it becomes visible to the relay when the caller commits.

    With ``batch`` the event is only collected there; ``write_events`` then inserts a whole
    group's events with one statement.
    """
    actor = session.info.get("mailsvc.actor")
    if actor is not None and "actor" not in data:
        # The API or CLI put its caller on the session (services.common.act_as).
        data = {**data, "actor": actor.as_event()}
    if session.info.get(HISTORICAL):
        data = {**data, "historical": True}
    if batch is not None:
        batch.append({"type": event_type, "subject": subject, "data": dict(data)})
        return
    session.add(OutboxEvent(type=event_type, subject=subject, data=dict(data)))


HISTORICAL = "mailsvc.historical"


@contextmanager
def historical_events(session: AsyncSession, on: bool = True) -> Iterator[None]:
    """Events recorded meanwhile describe the past (mail of an archive import): their data says
    ``"historical": true``, so consumers can keep them out of notifications and live counts."""
    before = session.info.get(HISTORICAL, False)
    session.info[HISTORICAL] = on
    try:
        yield
    finally:
        session.info[HISTORICAL] = before


async def write_events(session: AsyncSession, batch: Sequence[Mapping[str, Any]]) -> None:
    """The events collected with ``record_event(..., batch=...)``, in order, after what the
    session holds already."""
    if not batch:
        return
    await session.flush()
    await insert_rows(session, OutboxEvent, batch)
