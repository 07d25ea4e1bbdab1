"""Webhook subscriptions, their delivery log, and the dispatcher's place in the outbox."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from mailsvc.crmstore.base import Base, JSONType, Timestamped, utcnow


class WebhookDeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # not sent yet, or waiting for its next attempt
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # refused for good, or out of attempts


class Webhook(Timestamped, Base):
    """One subscription: where events go, which types, and how its deliveries are going.

    ``start_seq``: only outbox events after it are delivered (none from before the subscription
    existed, or from while it was disabled). ``paused_until``: a delivery is waiting for its
    retry; newer ones wait behind it, so a receiver that comes back gets events in order."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    # The event types delivered; None: all.
    event_types: Mapped[list[Any] | None] = mapped_column(JSONType)
    description: Mapped[str | None] = mapped_column(String(500))
    # whsec_<base64>: signs every request; shown once, when the subscription is created.
    secret: Mapped[str] = mapped_column(String(200))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    start_seq: Mapped[int] = mapped_column(Integer, default=0)
    # Deliveries that failed for good since the last success.
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    # The first failed attempt since the last success.
    failing_since: Mapped[datetime | None]
    paused_until: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]


class WebhookDelivery(Timestamped, Base):
    """One event for one subscription: its attempts and how the last one went."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "event_seq"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_seq: Mapped[int] = mapped_column(ForeignKey("outbox.seq", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default=WebhookDeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The last attempt: the receiver's HTTP status, or what went wrong before one.
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_attempt_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]


class WebhookCursor(Base):
    """How far the dispatcher has fanned the outbox out into deliveries (its own marker; the
    AMQP relay's ``sent_at`` is not touched). Every event up to ``position`` has its rows."""

    __tablename__ = "webhook_cursor"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
