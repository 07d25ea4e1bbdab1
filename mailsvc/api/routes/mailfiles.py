"""A stored mail's files: its attachments and its raw ``.eml``, as downloads."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

from fastapi import APIRouter, Response
from sqlalchemy import select

from mailsvc.api import schemas as s
from mailsvc.api.deps import Session
from mailsvc.api.routes.common import PathId
from mailsvc.crmstore.models import Email, EmailAttachment
from mailsvc.errors import NotFound

router = APIRouter(tags=["emails"])

_MEDIA_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE = re.compile(f"^{_MEDIA_NAME}/{_MEDIA_NAME}$")


def safe_media_type(value: str | None) -> str:
    """The attachment's declared type if it is a plain ``type/subtype``, else octet-stream (a
    sender chooses it: it must not inject header parameters or lines)."""
    value = (value or "").strip().lower()
    return value if _MEDIA_TYPE.match(value) else "application/octet-stream"


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact name as RFC 5987 ``filename*``;
    no quotes, backslashes, control characters or path separators get through."""
    name = unicodedata.normalize("NFC", filename).replace("/", "_").replace("\\", "_")
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip(" .") or "file"
    ascii_name = re.sub(r"[^A-Za-z0-9._ ()+-]", "_", name)[:150] or "file"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name[:200], safe='')}"


def _download(content: bytes, media_type: str, filename: str) -> Response:
    return Response(content, media_type=media_type, headers={
        "Content-Disposition": content_disposition(filename),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
    })


async def _email_exists(session: Session, email_id: int) -> None:
    if await session.scalar(select(Email.id).where(Email.id == email_id)) is None:
        raise NotFound(f"e-mail {email_id} does not exist")


@router.get("/emails/{email_id}/attachments", summary="The mail's attachments (without content)")
async def list_attachments(email_id: PathId, session: Session) -> list[s.AttachmentOut]:
    await _email_exists(session, email_id)
    rows = await session.execute(
        select(EmailAttachment.id, EmailAttachment.filename, EmailAttachment.content_type,
               EmailAttachment.content_id, EmailAttachment.inline, EmailAttachment.size)
        .where(EmailAttachment.email_id == email_id).order_by(EmailAttachment.id))
    return [s.AttachmentOut(id=r.id, filename=r.filename, content_type=r.content_type,
                            content_id=r.content_id, inline=r.inline, size=r.size,
                            download=f"/api/v1/emails/{email_id}/attachments/{r.id}")
            for r in rows]


@router.get("/emails/{email_id}/attachments/{attachment_id}", summary="Download an attachment",
            response_class=Response, responses={200: {"content": {"*/*": {}}}})
async def download_attachment(email_id: PathId, attachment_id: PathId, session: Session
                              ) -> Response:
    attachment = await session.scalar(select(EmailAttachment).where(
        EmailAttachment.id == attachment_id, EmailAttachment.email_id == email_id))
    if attachment is None:
        raise NotFound(f"e-mail {email_id} has no attachment {attachment_id}")
    return _download(attachment.content, safe_media_type(attachment.content_type),
                     attachment.filename or f"attachment-{attachment.id}")


@router.get("/emails/{email_id}/raw", summary="The mail exactly as received (.eml)",
            response_class=Response, responses={200: {"content": {"message/rfc822": {}}}})
async def download_raw(email_id: PathId, session: Session) -> Response:
    raw = await session.scalar(select(Email.raw).where(Email.id == email_id))
    if raw is None:
        raise NotFound(f"e-mail {email_id} does not exist")
    return _download(raw, "message/rfc822", f"email-{email_id}.eml")
