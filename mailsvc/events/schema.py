"""The CloudEvents 1.0 envelope every event travels in."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

SOURCE = "urn:mailsvc"
TYPE_PREFIX = "com.mailsvc."


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
