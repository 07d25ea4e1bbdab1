"""The pages and form actions of /ui/ (see the package docstring)."""

from __future__ import annotations

import logging
import secrets
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from mailsvc.api.deps import get_services
from mailsvc.api.ratelimit import FailureLimiter, retry_after_header
from mailsvc.api.ui import queries
from mailsvc.api.ui.i18n import MESSAGES, other, pick_language
from mailsvc.api.ui.session import (
    COOKIE,
    MAX_AGE_SECONDS,
    UiSession,
    decode,
    encode,
    key_matches,
    new_session,
    valid_key,
)
from mailsvc.bootstrap import Services
from mailsvc.crmstore import services
from mailsvc.crmstore.db import read_session
from mailsvc.crmstore.models import LinkTarget
from mailsvc.errors import MailsvcError

logger = logging.getLogger(__name__)
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/ui", include_in_schema=False)
static = StaticFiles(directory=HERE / "static")
LANGUAGE_COOKIE = "mailsvc_lang"
LINKABLE = (LinkTarget.OPPORTUNITY, LinkTarget.TICKET, LinkTarget.INBOX_LEAD,
            LinkTarget.ACCOUNT, LinkTarget.CONTACT)


class SignInRequired(Exception):
    """Raised by ``_session``; answered with a redirect to the sign-in page."""


def _secret(request: Request) -> bytes:
    state = request.app.state
    if not hasattr(state, "ui_secret"):
        state.ui_secret = secrets.token_bytes(32)
    secret: bytes = state.ui_secret
    return secret


def _keys(request: Request) -> tuple[str, ...]:
    return tuple(get_services(request).settings.api.keys)


def _session(request: Request) -> UiSession:
    session = decode(request.cookies.get(COOKIE), _secret(request))
    if session is None or not key_matches(session, _keys(request)):
        raise SignInRequired
    return session


def _check_csrf(session: UiSession, token: str) -> None:
    if not secrets.compare_digest(session.csrf.encode(), token.encode()):
        raise SignInRequired


def _actor(session: UiSession) -> str:
    return f"key:{session.fingerprint[:12]}" if session.fingerprint else "open-api"


def _render(request: Request, name: str, session: UiSession | None, **context: Any
            ) -> HTMLResponse:
    language = pick_language(request.cookies.get(LANGUAGE_COOKIE),
                             request.headers.get("accept-language"))
    return templates.TemplateResponse(request, name, {
        "t": MESSAGES[language], "lang": language, "other_lang": other(language),
        "csrf": session.csrf if session else "", "signed_in": session is not None,
        **context,
    })


def _back(url: str, message: str = "") -> RedirectResponse:
    suffix = f"{'&' if '?' in url else '?'}msg={quote(message)}" if message else ""
    return RedirectResponse(url + suffix, status_code=303)


async def sign_in_required(request: Request, _exc: Exception) -> Response:
    return RedirectResponse(f"/ui/login?next={quote(request.url.path)}", status_code=303)


@router.get("/login")
async def login_page(request: Request, next: str = "/ui/inbox", error: bool = False
                     ) -> HTMLResponse:
    return _render(request, "login.html", None, next=_safe_next(next), error=error)


@router.post("/login")
async def login(request: Request, key: Annotated[str, Form()] = "",
                next: Annotated[str, Form()] = "/ui/inbox") -> Response:
    keys = _keys(request)
    # The API's failed-authentication limit (mailsvc/api/guard.py) counts sign-ins too.
    limiter: FailureLimiter | None = getattr(request.app.state, "auth_failures", None)
    client = request.client.host if request.client else "unknown"
    if keys and limiter is not None and (wait := limiter.blocked_for(client)) > 0:
        refused = _render(request, "login.html", None, next=_safe_next(next), error=True)
        refused.status_code = 429
        refused.headers["Retry-After"] = retry_after_header(wait)
        return refused
    if keys and not valid_key(key, keys):
        if limiter is not None:
            limiter.failed(client)
        logger.warning("triage page: failed sign-in from %s", client)
        return _render(request, "login.html", None, next=_safe_next(next), error=True)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(COOKIE, encode(new_session(key if keys else ""), _secret(request)),
                        max_age=MAX_AGE_SECONDS, httponly=True, secure=True, samesite="strict",
                        path="/ui")
    return response


@router.post("/logout")
async def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    _check_csrf(_session(request), csrf)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


@router.get("/lang/{language}")
async def switch_language(language: str, back: str = "/ui/inbox") -> Response:
    response = RedirectResponse(_safe_next(back), status_code=303)
    response.set_cookie(LANGUAGE_COOKIE, "de" if language == "de" else "en",
                        max_age=365 * 86400, samesite="strict", path="/ui")
    return response


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/ui/inbox", status_code=303)


@router.get("/inbox")
async def inbox(
    request: Request, view: str = "attention", role: str = "", owner: str = "",
    since: str = "", until: str = "", q: str = "", offset: Annotated[int, Query(ge=0)] = 0,
    msg: str = "",
) -> HTMLResponse:
    session = _session(request)
    inbox_filter = queries.InboxFilter(
        attention=view != "all", role=role or None,
        owner=int(owner) if owner.isdigit() else None, since=_date(since), until=_date(until),
        q=q[:200] or None, offset=offset,
    )
    async with read_session(get_services(request).sessions) as db:
        rows = await queries.inbox(db, inbox_filter)
    return _render(request, "inbox.html", session, mails=rows[:queries.PAGE_SIZE],
                   more=len(rows) > queries.PAGE_SIZE, view=view, role=role, owner=owner,
                   since=since, until=until, q=q, offset=offset, page=queries.PAGE_SIZE, msg=msg)


@router.get("/mail/{email_id}")
async def mail(request: Request, email_id: int, msg: str = "") -> HTMLResponse:
    session = _session(request)
    async with read_session(get_services(request).sessions) as db:
        email = await queries.mail(db, email_id)
    if email is None:
        return _render(request, "missing.html", session, what=f"e-mail {email_id}")
    return _render(request, "mail.html", session, mail=email, linkable=LINKABLE, msg=msg)


@router.get("/mail/{email_id}/raw")
async def raw(request: Request, email_id: int) -> Response:
    _session(request)
    async with read_session(get_services(request).sessions) as db:
        data = await queries.raw(db, email_id)
    if data is None:
        return Response(status_code=404)
    return Response(data, media_type="message/rfc822", headers={
        "Content-Disposition": f'attachment; filename="mail-{email_id}.eml"'})


@router.get("/mail/{email_id}/attachments/{attachment_id}")
async def attachment(request: Request, email_id: int, attachment_id: int) -> Response:
    _session(request)
    async with read_session(get_services(request).sessions) as db:
        row = await queries.attachment(db, email_id, attachment_id)
    if row is None:
        return Response(status_code=404)
    name = row.filename or f"attachment-{attachment_id}"
    return Response(row.content, media_type="application/octet-stream", headers={
        # RFC 6266 / 5987: an ASCII fallback and the exact name, percent-encoded.
        "Content-Disposition": f"attachment; filename=\"{_ascii(name)}\"; "
                               f"filename*=UTF-8''{quote(name, safe='')}",
        "X-Content-Type-Options": "nosniff"})


@router.get("/search")
async def search(request: Request, kind: str, q: str = "") -> JSONResponse:
    _session(request)
    try:
        target = LinkTarget(kind)
    except ValueError:
        return JSONResponse([])
    async with read_session(get_services(request).sessions) as db:
        return JSONResponse(await queries.search_records(db, target, q[:100]))


@router.post("/mail/{email_id}/link")
async def link(request: Request, email_id: int, csrf: Annotated[str, Form()],
               target_type: Annotated[str, Form()], target_id: Annotated[str, Form()]
               ) -> Response:
    session = _session(request)
    _check_csrf(session, csrf)
    record = target_id.split(":", 1)[0].strip()
    if not record.isdigit() or target_type not in {str(t) for t in LINKABLE}:
        return _back(f"/ui/mail/{email_id}", "?")
    return await _change(request, session, f"/ui/mail/{email_id}", "link", email_id,
                         services.link_email, email_id, LinkTarget(target_type), int(record))


@router.post("/mail/{email_id}/unlink")
async def unlink(request: Request, email_id: int, csrf: Annotated[str, Form()],
                 target_type: Annotated[str, Form()], target_id: Annotated[int, Form()]
                 ) -> Response:
    session = _session(request)
    _check_csrf(session, csrf)
    return await _change(request, session, f"/ui/mail/{email_id}", "unlink", email_id,
                         services.unlink_email, email_id, LinkTarget(target_type), target_id)


@router.post("/mail/{email_id}/contact")
async def create_contact(request: Request, email_id: int, csrf: Annotated[str, Form()]
                         ) -> Response:
    session = _session(request)
    _check_csrf(session, csrf)
    async with read_session(get_services(request).sessions) as db:
        email = await queries.mail(db, email_id)
    if email is None or not email.from_email:
        return _back(f"/ui/mail/{email_id}", "?")
    first, _, last = (email.from_name or "").strip().rpartition(" ")
    last = last or email.from_email.split("@")[0]

    async def create(db: Any) -> None:
        contact = await services.create_contact(db, last, email.from_email,
                                                first_name=first or None)
        await services.link_email(db, email_id, LinkTarget.CONTACT, contact.id)

    return await _change(request, session, f"/ui/mail/{email_id}", "create contact", email_id,
                         create)


async def _list_page(request: Request, template: str, read: Any, msg: str = "") -> HTMLResponse:
    """A signed-in page that shows what ``read(session)`` returns as ``rows``."""
    session = _session(request)
    async with read_session(get_services(request).sessions) as db:
        rows = await read(db)
    return _render(request, template, session, rows=rows, msg=msg)


@router.get("/leads")
async def leads(request: Request, msg: str = "") -> HTMLResponse:
    return await _list_page(request, "leads.html", queries.leads, msg)


@router.post("/leads/{lead_id}/convert")
async def convert(request: Request, lead_id: int, csrf: Annotated[str, Form()]) -> Response:
    session = _session(request)
    _check_csrf(session, csrf)
    return await _change(request, session, "/ui/leads", "convert lead", lead_id,
                         services.convert_inbox_lead, lead_id)


@router.get("/tickets")
async def tickets(request: Request) -> HTMLResponse:
    return await _list_page(request, "tickets.html", queries.tickets)


@router.get("/quarantine")
async def quarantine(request: Request, msg: str = "") -> HTMLResponse:
    return await _list_page(request, "quarantine.html", queries.quarantined, msg)


@router.post("/quarantine/{quarantine_id}/retry")
async def retry(request: Request, quarantine_id: int, csrf: Annotated[str, Form()]) -> Response:
    from mailsvc.ingest.quarantine import retry_quarantined

    session = _session(request)
    _check_csrf(session, csrf)
    svc: Services = get_services(request)
    results = await retry_quarantined(svc.pipeline, svc.sessions, [quarantine_id])
    logger.info("triage page: %s retried quarantine %d: %s", _actor(session), quarantine_id,
                [outcome.kind for _, outcome in results])
    kinds = ", ".join(outcome.kind for _, outcome in results) or "?"
    return _back("/ui/quarantine", kinds)


@router.post("/quarantine/{quarantine_id}/drop")
async def drop(request: Request, quarantine_id: int, csrf: Annotated[str, Form()]) -> Response:
    from mailsvc.ingest.quarantine import drop_quarantined

    session = _session(request)
    _check_csrf(session, csrf)
    svc: Services = get_services(request)
    dropped = await drop_quarantined(svc.sessions, [quarantine_id], by=_actor(session))
    logger.info("triage page: %s dropped quarantine %d", _actor(session), quarantine_id)
    return _back("/ui/quarantine", "dropped" if dropped else "not found")


@router.get("/health")
async def health(request: Request) -> HTMLResponse:
    session = _session(request)
    svc: Services = get_services(request)
    async with read_session(svc.sessions) as db:
        counts = await queries.health(db)
    mailboxes = {p.mailbox.name: p.status() for p in svc.mailboxes}
    return _render(request, "health.html", session, counts=counts, mailboxes=mailboxes)


async def _change(request: Request, session: UiSession, back: str, action: str, target: int,
                  change: Any, *args: Any) -> Response:
    """Run one service call in its own transaction; errors become a message on the page."""
    try:
        async with get_services(request).sessions() as db, db.begin():
            await change(db, *args)
    except MailsvcError as exc:
        return _back(back, str(exc))
    logger.info("triage page: %s did %s on %d", _actor(session), action, target)
    return _back(back, "ok")


def _date(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _safe_next(url: str) -> str:
    """Only our own pages: no open redirect."""
    return url if url.startswith("/ui/") and not url.startswith("//") else "/ui/inbox"


def _ascii(name: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
