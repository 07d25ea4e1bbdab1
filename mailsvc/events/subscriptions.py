"""Webhook subscriptions: create, change, re-enable, delete (in the caller's transaction)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import OutboxEvent
from mailsvc.crmstore.outbox import record_event
from mailsvc.crmstore.services.common import get_or_404
from mailsvc.crmstore.webhook_models import Webhook, WebhookDelivery, WebhookDeliveryStatus
from mailsvc.errors import RuleViolation
from mailsvc.events.webhook_rules import TargetRefused, check_host, check_url, new_secret


@dataclass(frozen=True, slots=True)
class Created:
    """A subscription just made: ``secret`` is shown this once."""

    webhook: Webhook
    secret: str


def _target(url: str, allow_private: bool) -> str:
    try:
        check_host(check_url(url), allow_private)
    except TargetRefused as exc:
        raise RuleViolation(f"url: {exc}") from None
    return url


async def last_seq(session: AsyncSession) -> int:
    """The newest event's position: a subscription starts after it."""
    return int(await session.scalar(select(func.max(OutboxEvent.seq))) or 0)


def _about(hook: Webhook) -> dict[str, Any]:
    """What an event says of a subscription: never its secret, nor its URL's path and query
    (they may carry a token), only the host."""
    return {"id": hook.id, "host": urlsplit(hook.url).hostname,
            "event_types": hook.event_types}


async def create_webhook(
    session: AsyncSession, url: str, event_types: Sequence[str] | None, *,
    secret: str | None = None, description: str | None = None, allow_private: bool = False,
) -> Created:
    secret = secret or new_secret()
    hook = Webhook(
        url=_target(url, allow_private),
        event_types=sorted(set(event_types)) if event_types is not None else None,
        secret=secret, description=description, enabled=True, start_seq=await last_seq(session),
        consecutive_failures=0,
    )
    session.add(hook)
    await session.flush()
    record_event(session, "webhook.created", _about(hook), subject=f"webhook/{hook.id}")
    await session.flush()
    hook.start_seq = await last_seq(session)  # from the next event on, not its own creation
    return Created(hook, secret)


async def update_webhook(
    session: AsyncSession, webhook_id: int, changes: Mapping[str, Any], *,
    allow_private: bool = False,
) -> Webhook:
    """Change the URL, the types, the description; ``enabled`` true re-enables a disabled
    subscription (its failure count starts again; events from while it was off are not sent,
    its pending deliveries are), false disables it by hand."""
    hook = await get_or_404(session, Webhook, webhook_id, "webhook")
    changed = []
    if "url" in changes and changes["url"] != hook.url:
        hook.url = _target(str(changes["url"]), allow_private)
        changed.append("url")
    if "event_types" in changes:
        types = changes["event_types"]
        new = sorted(set(types)) if types is not None else None
        if new != hook.event_types:
            hook.event_types = new
            changed.append("event_types")
    if "description" in changes and changes["description"] != hook.description:
        hook.description = changes["description"]
        changed.append("description")
    enabled = changes.get("enabled")
    if enabled is True and not hook.enabled:
        hook.enabled = True
        hook.disabled_at = None
        hook.disabled_reason = None
        hook.consecutive_failures = 0
        hook.failing_since = None
        hook.paused_until = None
        await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == hook.id,
                   WebhookDelivery.status == WebhookDeliveryStatus.PENDING.value)
            .values(next_attempt_at=utcnow())
        )
        changed.append("enabled")
    elif enabled is False and hook.enabled:
        hook.enabled = False
        hook.disabled_at = utcnow()
        hook.disabled_reason = "disabled through the API"
        changed.append("enabled")
    if changed:
        record_event(session, "webhook.updated",
                     {**_about(hook), "enabled": hook.enabled, "changed": changed},
                     subject=f"webhook/{hook.id}")
    if enabled is True and "enabled" in changed:
        await session.flush()
        hook.start_seq = await last_seq(session)  # from the next event on
    return hook


async def delete_webhook(session: AsyncSession, webhook_id: int) -> None:
    """Delete a subscription and its delivery log; nothing more is sent to it (a request on the
    wire finishes, its answer is dropped)."""
    hook = await get_or_404(session, Webhook, webhook_id, "webhook")
    about = _about(hook)
    await session.delete(hook)
    await session.flush()
    record_event(session, "webhook.deleted", about, subject=f"webhook/{webhook_id}")
