"""The delivery queue of outbound mail: one row per stored outgoing e-mail, until it is sent."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from mailsvc.crmstore.base import Base, JSONType, Timestamped, utcnow


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"


class OutboundMail(Timestamped, Base):
    """How the delivery of one outgoing e-mail (``emails`` row, raw bytes there) stands.

    ``next_attempt_at`` is when a sender may take it next; a sender that claims it moves it a
    lease ahead, so no other sender takes it while it is being delivered."""

    __tablename__ = "outbound_mail"
    __table_args__ = (
        Index("ix_outbound_mail_due", "status", "next_attempt_at"),
        Index("ix_outbound_mail_ack", "kind", "recipient", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email_id: Mapped[int] = mapped_column(
        ForeignKey("emails.id", ondelete="CASCADE"), unique=True
    )
    # reply (a user answered from a record) or ack (the automatic acknowledgement of a ticket)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.QUEUED.value)
    mail_from: Mapped[str] = mapped_column(String(320))
    rcpt_to: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    # The first recipient, lower case: acknowledgements are limited per recipient and window.
    recipient: Mapped[str] = mapped_column(String(320))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_reply: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
