"""Stored e-mails on records: the timeline, and linking / unlinking by hand."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer, selectinload

from mailsvc.crmstore.base import Base
from mailsvc.crmstore.models import (
    Account,
    Contact,
    Email,
    EmailLink,
    InboxLead,
    LinkTarget,
    Opportunity,
    Ticket,
    User,
)
from mailsvc.crmstore.outbox import record_event
from mailsvc.crmstore.services.activities import log_email_activity
from mailsvc.crmstore.services.common import actor_id, get_or_404
from mailsvc.errors import Conflict, NotFound

TARGET_MODELS: dict[LinkTarget, type[Base]] = {
    LinkTarget.ACCOUNT: Account,
    LinkTarget.CONTACT: Contact,
    LinkTarget.OWNER: User,
    LinkTarget.OPPORTUNITY: Opportunity,
    LinkTarget.TICKET: Ticket,
    LinkTarget.INBOX_LEAD: InboxLead,
}
MANUAL = "manual"


async def ensure_target(session: AsyncSession, target_type: LinkTarget, target_id: int) -> None:
    await get_or_404(session, TARGET_MODELS[target_type], target_id,
                     str(target_type).replace("_", " "))


async def link_email(
    session: AsyncSession, email_id: int, target_type: LinkTarget, target_id: int,
) -> EmailLink:
    """Link a mail to a record by hand, for what automatic linking could not decide."""
    await get_or_404(session, Email, email_id, "e-mail")
    await ensure_target(session, target_type, target_id)
    exists = await session.scalar(select(EmailLink.id).where(
        EmailLink.email_id == email_id, EmailLink.target_type == target_type,
        EmailLink.target_id == target_id))
    if exists:
        raise Conflict(f"e-mail {email_id} is linked to {target_type} {target_id} already")
    link = EmailLink(email_id=email_id, target_type=target_type, target_id=target_id,
                     rule=MANUAL, created_by_id=actor_id(session))
    session.add(link)
    await session.flush()
    await log_email_activity(session, email_id)
    record_event(session, "email.linked",
                 {"email_id": email_id, "target_type": str(target_type), "target_id": target_id,
                  "rule": MANUAL}, subject=f"email/{email_id}")
    return link


async def unlink_email(
    session: AsyncSession, email_id: int, target_type: LinkTarget, target_id: int,
) -> None:
    link = await session.scalar(select(EmailLink).where(
        EmailLink.email_id == email_id, EmailLink.target_type == target_type,
        EmailLink.target_id == target_id))
    if link is None:
        raise NotFound(f"e-mail {email_id} is not linked to {target_type} {target_id}")
    rule = link.rule
    await session.delete(link)
    await session.flush()
    record_event(session, "email.unlinked",
                 {"email_id": email_id, "target_type": str(target_type), "target_id": target_id,
                  "rule": rule}, subject=f"email/{email_id}")


async def timeline(
    session: AsyncSession, target_type: LinkTarget, target_id: int, *, limit: int = 50,
    offset: int = 0,
) -> tuple[list[tuple[Email, str]], int]:
    """The record's e-mails, newest first, each with the rule that linked it; and the total."""
    await ensure_target(session, target_type, target_id)
    where = (EmailLink.target_type == target_type, EmailLink.target_id == target_id)
    total = await session.scalar(select(func.count()).select_from(EmailLink).where(*where)) or 0
    rows = await session.execute(
        select(Email, EmailLink.rule).join(EmailLink, EmailLink.email_id == Email.id)
        .options(selectinload(Email.links), *(defer(column, raiseload=True) for column in (
            Email.raw, Email.headers, Email.text_body, Email.html_body, Email.reply_text)))
        .where(*where).order_by(Email.received_at.desc(), Email.id.desc())
        .limit(limit).offset(offset)
    )
    return [(email, rule) for email, rule in rows], total
