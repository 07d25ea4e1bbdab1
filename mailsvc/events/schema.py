"""The CloudEvents 1.0 envelope every event travels in."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

SOURCE = "urn:mailsvc"
TYPE_PREFIX = "com.mailsvc."

# Every event type (routing key) mailsvc records: the catalogue webhook subscriptions choose from.
# docs/asyncapi.yaml describes each (tests/unit/test_asyncapi.py checks that the two agree).
EVENT_TYPES: frozenset[str] = frozenset({
    "account.archived", "account.became_customer", "account.created", "account.restored",
    "account.updated",
    "activity.completed", "activity.created", "activity.deleted", "activity.updated",
    "activity_plan.scheduled",
    "api_key.created", "api_key.revoked",
    "budget.created",
    "contact.bouncing", "contact.created", "contact.updated",
    "email.linked", "email.quarantine_dropped", "email.quarantined", "email.received",
    "email.relinked", "email.send_failed", "email.sent", "email.unlinked",
    "inbox_lead.archived", "inbox_lead.company_linked", "inbox_lead.converted",
    "inbox_lead.created", "inbox_lead.person_linked", "inbox_lead.status_changed",
    "inbox_lead.updated",
    "invoice.cancelled", "invoice.created", "invoice.deleted", "invoice.paid", "invoice.updated",
    "opportunity.converted_to_deal", "opportunity.created", "opportunity.deleted",
    "opportunity.lost", "opportunity.stage_changed", "opportunity.subscribed",
    "opportunity.unsubscribed", "opportunity.updated", "opportunity.won",
    "order.cancelled", "order.confirmed", "order.created", "order.deleted", "order.delivered",
    "order.updated",
    "pipeline.created", "pipeline.updated",
    "privacy.erased",
    "product.created", "product.updated",
    "quote.accepted", "quote.created", "quote.deleted", "quote.rejected", "quote.sent",
    "quote.updated",
    "ticket.created", "ticket.updated",
    "user.created", "user.updated",
    "webhook.created", "webhook.deleted", "webhook.disabled", "webhook.updated",
})


def cloudevent(
    event_id: str, event_type: str, time: datetime, data: dict[str, Any], subject: str | None
) -> dict[str, Any]:
    """The JSON envelope; ``id`` is the outbox id, stable across re-deliveries."""
    envelope: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": SOURCE,
        "type": TYPE_PREFIX + event_type,
        "time": time.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": data,
    }
    if subject:
        envelope["subject"] = subject
    return envelope


def encode(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":"), default=str).encode()
