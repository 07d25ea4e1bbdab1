"""Webhook subscriptions and their delivery log (administrators only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field, StringConstraints, field_validator
from sqlalchemy import func, select

from mailsvc.api import schemas as s
from mailsvc.api.deps import AppSettings, Session
from mailsvc.api.routes.common import Limit, Offset, PathId
from mailsvc.crmstore.services.common import get_or_404
from mailsvc.crmstore.webhook_models import Webhook, WebhookDelivery, WebhookDeliveryStatus
from mailsvc.errors import RuleViolation
from mailsvc.events import subscriptions
from mailsvc.events.schema import EVENT_TYPES
from mailsvc.events.webhook_rules import (
    MAX_URL_LENGTH,
    TargetRefused,
    check_secret,
    check_url,
    secret_hint,
)

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

Url = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL_LENGTH)]
EventTypes = Annotated[list[Annotated[str, StringConstraints(max_length=100)]],
                       Field(min_length=1, max_length=len(EVENT_TYPES))]
Description = Annotated[str, StringConstraints(max_length=500)]


def _url(value: str) -> str:
    try:
        return check_url(value)
    except TargetRefused as exc:
        raise ValueError(str(exc)) from None


def _types(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    unknown = sorted(set(value) - EVENT_TYPES)
    if unknown:
        raise ValueError(f"unknown event type(s) {', '.join(map(repr, unknown))}; the catalogue "
                         "is docs/asyncapi.yaml (e.g. 'email.linked', 'ticket.created')")
    return value


class WebhookIn(s.In):
    url: Url = Field(description="Where events are POSTed: an http:// or https:// URL.")
    event_types: EventTypes | None = Field(
        description="The event types to deliver (routing keys such as `email.linked`); "
                    "null: every type.")
    secret: Annotated[str, StringConstraints(max_length=200)] | None = Field(
        None, description="`whsec_` and the base64 of 24 to 64 random bytes; left out: one is "
                          "made and returned once, in this answer.")
    description: Description | None = None

    _check_url = field_validator("url")(_url)
    _check_types = field_validator("event_types")(_types)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        return None if value is None else check_secret(value)


class WebhookPatch(s.Patch):
    url: Url | None = None
    event_types: EventTypes | None = None
    description: Description | None = None
    enabled: bool | None = Field(
        None, description="true re-enables a disabled subscription (from now on); false "
                          "disables it.")

    _check_url = field_validator("url")(lambda v: None if v is None else _url(v))
    _check_types = field_validator("event_types")(_types)


class WebhookOut(BaseModel):
    id: int
    url: str
    event_types: list[str] | None
    description: str | None
    enabled: bool
    secret_hint: str = Field(description="The secret's prefix and last characters only.")
    disabled_at: datetime | None
    disabled_reason: str | None
    consecutive_failures: int = Field(
        description="Deliveries in a row that failed for good since the last success.")
    failing_since: datetime | None
    paused_until: datetime | None = Field(description="A delivery's retry is due then; newer "
                                                      "events wait behind it.")
    last_success_at: datetime | None
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="Shown this once: keep it to verify the signatures.")


class DeliveryOut(BaseModel):
    id: int
    event_id: str = Field(description="The CloudEvent `id`, also the `webhook-id` header.")
    event_type: str
    event_seq: int
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status: int | None = Field(description="The receiver's HTTP status on the last "
                                                "attempt (null: no answer).")
    last_error: str | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None = Field(description="Null once delivered or failed.")
    delivered_at: datetime | None
    failed_at: datetime | None
    created_at: datetime


def _out(hook: Webhook) -> dict[str, Any]:
    return {
        "id": hook.id, "url": hook.url, "event_types": hook.event_types,
        "description": hook.description, "enabled": hook.enabled,
        "secret_hint": secret_hint(hook.secret), "disabled_at": hook.disabled_at,
        "disabled_reason": hook.disabled_reason,
        "consecutive_failures": hook.consecutive_failures, "failing_since": hook.failing_since,
        "paused_until": hook.paused_until, "last_success_at": hook.last_success_at,
        "created_at": hook.created_at,
    }


def _delivery(row: WebhookDelivery) -> DeliveryOut:
    pending = row.status == WebhookDeliveryStatus.PENDING.value
    return DeliveryOut(
        id=row.id, event_id=row.event_id, event_type=row.event_type, event_seq=row.event_seq,
        status=row.status,
        attempts=row.attempts, last_status=row.last_status, last_error=row.last_error,
        last_attempt_at=row.last_attempt_at,
        next_attempt_at=row.next_attempt_at if pending else None,
        delivered_at=row.delivered_at, failed_at=row.failed_at, created_at=row.created_at,
    )


@router.post("", status_code=201, summary="Subscribe a URL to events")
async def create_webhook(body: WebhookIn, session: Session,
                         settings: AppSettings) -> WebhookCreated:
    created = await subscriptions.create_webhook(
        session, body.url, body.event_types, secret=body.secret, description=body.description,
        allow_private=settings.webhook_allow_private,
    )
    return WebhookCreated(**_out(created.webhook), secret=created.secret)


@router.get("", summary="Webhook subscriptions")
async def list_webhooks(session: Session, limit: Limit = 50,
                        offset: Offset = 0) -> s.Page[WebhookOut]:
    total = await session.scalar(select(func.count()).select_from(Webhook)) or 0
    rows = (await session.scalars(
        select(Webhook).order_by(Webhook.id).limit(limit).offset(offset))).all()
    return s.Page(items=[WebhookOut(**_out(h)) for h in rows], total=total, limit=limit,
                  offset=offset)


@router.get("/{webhook_id}", summary="A webhook subscription")
async def get_webhook(webhook_id: PathId, session: Session) -> WebhookOut:
    return WebhookOut(**_out(await get_or_404(session, Webhook, webhook_id, "webhook")))


@router.patch("/{webhook_id}", summary="Change a subscription, or re-enable a disabled one")
async def update_webhook(webhook_id: PathId, body: WebhookPatch, session: Session,
                         settings: AppSettings) -> WebhookOut:
    changes = body.model_dump(exclude_unset=True)
    nulls = [field for field in ("url", "enabled") if field in changes and changes[field] is None]
    if nulls:
        raise RuleViolation(f"{', '.join(nulls)}: may not be null")
    hook = await subscriptions.update_webhook(session, webhook_id, changes,
                                              allow_private=settings.webhook_allow_private)
    return WebhookOut(**_out(hook))


@router.delete("/{webhook_id}", status_code=204,
               summary="Delete a subscription and its delivery log")
async def delete_webhook(webhook_id: PathId, session: Session) -> Response:
    await subscriptions.delete_webhook(session, webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", summary="The delivery log, newest first")
async def list_deliveries(
    webhook_id: PathId, session: Session, limit: Limit = 50, offset: Offset = 0,
    status: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
) -> s.Page[DeliveryOut]:
    await get_or_404(session, Webhook, webhook_id, "webhook")
    conditions = [WebhookDelivery.webhook_id == webhook_id]
    if status is not None:
        conditions.append(WebhookDelivery.status == status)
    total = await session.scalar(
        select(func.count()).select_from(WebhookDelivery).where(*conditions)) or 0
    rows = (await session.scalars(
        select(WebhookDelivery).where(*conditions)
        .order_by(WebhookDelivery.event_seq.desc(), WebhookDelivery.id.desc())
        .limit(limit).offset(offset))).all()
    return s.Page(items=[_delivery(r) for r in rows], total=total, limit=limit, offset=offset)
