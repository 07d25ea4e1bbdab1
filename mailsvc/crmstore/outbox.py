"""Record events in the outbox, inside the caller's transaction (the relay publishes them later)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.models import OutboxEvent


def record_event(
    session: AsyncSession, event_type: str, data: Mapping[str, Any], subject: str | None = None
) -> OutboxEvent:
    """Add an event to the session; it becomes visible to the relay when the caller commits."""
    event = OutboxEvent(type=event_type, subject=subject, data=dict(data))
    session.add(event)
    return event
