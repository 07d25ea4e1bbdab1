"""Writing to customers from a record: ticket replies, opportunity and inbox-lead e-mails.

The acting user comes from the optional ``X-Mailsvc-User`` header (a user's id or e-mail
address) or ``owner_id`` in the body; without either, the record's owner.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header
from pydantic import BaseModel, Field, StringConstraints, field_validator
from sqlalchemy import func, select

from mailsvc.api import schemas as s
from mailsvc.api.deps import IntakeConfig, LinkingConfig, OutboundConfig, Session
from mailsvc.api.routes.common import PathId
from mailsvc.crmstore.models import LinkTarget, User, UserEmail
from mailsvc.errors import Conflict, RuleViolation
from mailsvc.outbound.compose import OutgoingAttachment
from mailsvc.outbound.queue import OutboundPolicy, enqueue, policy_of, record_context

router = APIRouter(tags=["outbound"])

# Plain ASCII addresses: nothing a header could be split or injected with.
Address = Annotated[
    str,
    StringConstraints(max_length=320, pattern=r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}"
                      r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*$"),
]
Body = Annotated[s.Str100000, StringConstraints(min_length=1)]
OneLine = Annotated[s.Str2000, StringConstraints(max_length=500, pattern=r"^[^\r\n]*$")]


class AttachmentIn(s.In):
    filename: Annotated[s.Req255, StringConstraints(pattern=r"^[^\r\n/\\]+$")]
    content_type: Annotated[str, StringConstraints(
        max_length=200, pattern=r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*$")] = (
        "application/octet-stream")
    content_base64: Annotated[str, StringConstraints(max_length=40_000_000)]

    @field_validator("content_base64")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("is not valid base64") from None
        return value


class OutboundIn(s.In):
    body_text: Body
    body_html: Body | None = None
    to: Annotated[list[Address], Field(min_length=1, max_length=50)] | None = None
    cc: Annotated[list[Address], Field(max_length=50)] | None = None
    subject: OneLine | None = None
    attachments: Annotated[list[AttachmentIn], Field(max_length=20)] | None = None
    owner_id: s.Id | None = Field(
        None, description="The acting user, if the X-Mailsvc-User header does not name one.")


class QueuedOut(BaseModel):
    email_id: int
    message_id: str
    status: Literal["queued"] = "queued"


ActingUser = Annotated[
    str | None,
    Header(alias="X-Mailsvc-User", max_length=320,
           description="The acting user: id or e-mail address (sender name, owner)."),
]
RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {"description": "No outbound relay is configured (MAILSVC_OUTBOUND_SMTP_URL)"},
}


async def _actor(session: Session, header: str | None, owner_id: int | None) -> User | None:
    if header is not None and header.strip():
        value = header.strip()
        if value.isdigit():
            user = await session.get(User, int(value)) if int(value) <= s.MAX_ID else None
        else:
            user = await session.scalar(
                select(User).join(UserEmail, UserEmail.user_id == User.id)
                .where(UserEmail.email == value.lower())
            ) or await session.scalar(select(User).where(func.lower(User.email) == value.lower()))
        if user is None:
            raise RuleViolation(f"X-Mailsvc-User: no user {value!r}")
        return user
    if owner_id is not None:
        user = await session.get(User, owner_id)
        if user is None:
            raise RuleViolation(f"owner_id: user {owner_id} does not exist")
        return user
    return None


def outbound_policy(
    session: Session, outbound: OutboundConfig, linking: LinkingConfig, intake: IntakeConfig,
) -> OutboundPolicy:
    """The policy the session carries (mailsvc/outbound/queue.py), else one from the groups."""
    return policy_of(session) or OutboundPolicy.from_settings(outbound, linking, intake)


Policy = Annotated[OutboundPolicy, Depends(outbound_policy)]


async def _send(
    session: Session, policy: OutboundPolicy, target: LinkTarget, record_id: int,
    body: OutboundIn, acting: str | None,
) -> QueuedOut:
    if not policy.enabled:
        raise Conflict("no outbound relay is configured (MAILSVC_OUTBOUND_SMTP_URL): "
                       "nothing was stored or sent")
    context = await record_context(session, policy, target, record_id)
    actor = await _actor(session, acting, body.owner_id)
    if actor is None and context.owner_id is not None:
        actor = await session.get(User, context.owner_id)  # the record's owner writes
    attachments = tuple(
        OutgoingAttachment(a.filename, a.content_type.lower(), base64.b64decode(a.content_base64))
        for a in body.attachments or ()
    )
    queued = await enqueue(
        session, policy, context, text=body.body_text, html=body.body_html, to=body.to,
        cc=body.cc or (), subject=body.subject, attachments=attachments, actor=actor,
    )
    return QueuedOut(email_id=queued.email_id, message_id=queued.message_id)


@router.post("/tickets/{record_id}/replies", status_code=202, responses=RESPONSES,
             summary="Answer the ticket's requester by e-mail (queued, then sent)")
async def reply_to_ticket(
    record_id: PathId, body: OutboundIn, session: Session, policy: Policy,
    acting: ActingUser = None,
) -> QueuedOut:
    return await _send(session, policy, LinkTarget.TICKET, record_id, body, acting)


@router.post("/opportunities/{record_id}/emails", status_code=202, responses=RESPONSES,
             summary="Write to the opportunity's contact by e-mail (queued, then sent)")
async def email_from_opportunity(
    record_id: PathId, body: OutboundIn, session: Session, policy: Policy,
    acting: ActingUser = None,
) -> QueuedOut:
    return await _send(session, policy, LinkTarget.OPPORTUNITY, record_id, body, acting)


@router.post("/inbox-leads/{record_id}/replies", status_code=202, responses=RESPONSES,
             summary="Answer the inbox lead by e-mail (queued, then sent)")
async def reply_to_inbox_lead(
    record_id: PathId, body: OutboundIn, session: Session, policy: Policy,
    acting: ActingUser = None,
) -> QueuedOut:
    return await _send(session, policy, LinkTarget.INBOX_LEAD, record_id, body, acting)
