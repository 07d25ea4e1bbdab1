"""Stored e-mails: list, read, link and unlink by hand."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from sqlalchemy import exists, select
from sqlalchemy.orm import load_only, selectinload

from mailsvc.api import schemas as s
from mailsvc.api import views
from mailsvc.api.deps import Session
from mailsvc.api.listing import equality_filters, page
from mailsvc.api.routes.common import PathId
from mailsvc.crmstore import services
from mailsvc.crmstore.models import Email, EmailLink, LinkTarget
from mailsvc.errors import NotFound
from mailsvc.outbound.queue import delivery_of

router = APIRouter(tags=["emails"])


def _columns(model: type[s.EmailOut]) -> Any:
    """Load only what the answer shows: never the raw bytes, headers or bodies it leaves out
    (a page of 50 mails must not read 50 x 25 MB). Anything else touched raises."""
    # ``links`` is a relationship, ``delivery`` lives in the outbound queue (filled below).
    names = [name for name in model.model_fields if name not in {"links", "delivery"}]
    return load_only(*(getattr(Email, name) for name in names), raiseload=True)


SUMMARY = _columns(s.EmailOut)
DETAIL = _columns(s.EmailDetailOut)


class EmailQuery(s.ListQuery):
    from_email: s.Str320 | None = None
    outcome: s.Str50 | None = None
    kind: s.Str50 | None = None
    intake_role: s.Str50 | None = None
    linked: bool | None = None
    received_from: s.When | None = None
    received_to: s.When | None = None


@router.get("/emails")
async def list_emails(
    query: Annotated[EmailQuery, Query()], session: Session
) -> s.Page[s.EmailOut]:
    conditions = equality_filters(Email, query)
    if query.linked is not None:
        has_link = exists().where(EmailLink.email_id == Email.id)
        conditions.append(has_link if query.linked else ~has_link)
    if query.received_from:
        conditions.append(Email.received_at >= query.received_from)
    if query.received_to:
        conditions.append(Email.received_at < query.received_to)
    rows, total = await page(
        session, Email, query, conditions=conditions, search=(Email.subject, Email.from_email),
        sorts=("id", "received_at", "sent_at"), default_sort="-received_at",
        statement=select(Email).options(SUMMARY, selectinload(Email.links)),
    )
    return s.Page(items=[views.email(r) for r in rows], total=total, limit=query.limit,
                  offset=query.offset)


async def _email(session: Session, email_id: int, *, detail: bool = False) -> Email:
    email = await session.scalar(
        select(Email).options(DETAIL if detail else SUMMARY, selectinload(Email.links))
        .where(Email.id == email_id).execution_options(populate_existing=True)
    )
    if email is None:
        raise NotFound(f"e-mail {email_id} does not exist")
    return email


@router.get("/emails/{email_id}")
async def get_email(email_id: PathId, session: Session) -> s.EmailDetailOut:
    out = views.email(await _email(session, email_id, detail=True), detail=True)
    assert isinstance(out, s.EmailDetailOut)
    delivery = await delivery_of(session, email_id)  # mail we sent: how its delivery stands
    if delivery is not None:
        out.delivery = s.DeliveryOut.model_validate(delivery)
    return out


@router.post("/emails/{email_id}/links", status_code=201,
             summary="Link the e-mail to a record by hand (rule 'manual')")
async def link(email_id: PathId, body: s.LinkIn, session: Session) -> s.EmailOut:
    await services.link_email(session, email_id, body.target_type, body.target_id)
    return views.email(await _email(session, email_id))


@router.delete("/emails/{email_id}/links/{target_type}/{target_id}", status_code=204,
               summary="Remove a link from the e-mail")
async def unlink(
    email_id: PathId, target_type: LinkTarget, target_id: PathId, session: Session
) -> Response:
    await services.unlink_email(session, email_id, target_type, target_id)
    return Response(status_code=204)
