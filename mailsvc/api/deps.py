"""Request dependencies: the unit of work (one transaction per request) and API-key auth."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.bootstrap import Services
from mailsvc.config import (
    ApiSettings,
    IntakeSettings,
    LinkingSettings,
    OutboundSettings,
    Settings,
)
from mailsvc.crmstore.db import READ_ONLY, read_session
from mailsvc.crmstore.models import UserRole
from mailsvc.crmstore.services.access import may, resolve_api_key
from mailsvc.crmstore.services.common import Actor, act_as
from mailsvc.keys import matches_any, parse_configured_key

bearer = HTTPBearer(auto_error=False, description="An API key from MAILSVC_API_KEYS.")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_settings(request: Request) -> Settings:
    """All settings: for wiring; a route takes the group it reads (below)."""
    return get_services(request).settings


def get_api_settings(request: Request) -> ApiSettings:
    return get_settings(request).api


def get_linking_settings(request: Request) -> LinkingSettings:
    return get_settings(request).linking


def get_outbound_settings(request: Request) -> OutboundSettings:
    return get_settings(request).outbound


def get_intake_settings(request: Request) -> IntakeSettings:
    return get_settings(request).intake


async def get_session(
    request: Request, caller: Annotated[Actor, Depends(require_api_key)],
) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the handler returns, rolled back on error.
    Everything it changes is the caller's (stage history, activities, events: ``act_as``).

    Reads (GET, HEAD) begin as read-only transactions, so on SQLite they never wait behind the
    intake's writes."""
    async with get_services(request).sessions() as session:
        act_as(session, caller)
        if request.method in ("GET", "HEAD"):
            await session.connection(execution_options=READ_ONLY)
            yield session  # nothing to commit: closing the session ends the transaction
            return
        async with session.begin():
            yield session


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Actor:
    """The caller: a user's key (its user and role), a bootstrap key of ``MAILSVC_API_KEYS``
    (admin, no user), or nobody on an open API (no bootstrap keys: loopback only, admin).
    Then the role must allow the request (``services.access.may``)."""
    caller = await _resolve_caller(request, credentials.credentials if credentials else "")
    parts = [p for p in request.url.path.split("/") if p]
    area = (parts[2:] if parts[:2] == ["api", "v1"] else parts)[:1]
    if not may(caller.role, request.method, area[0] if area else ""):
        raise HTTPException(403, f"a {caller.role} key may not {request.method} "
                            f"/{''.join(area)}")
    request.state.caller = caller
    return caller


async def _resolve_caller(request: Request, supplied: str) -> Actor:
    keys = get_api_settings(request).keys
    if supplied:
        if matches_any(supplied, (parse_configured_key(key) for key in keys)):
            return Actor(user_id=None, role=UserRole.ADMIN.value, via="bootstrap-key")
        async with read_session(get_services(request).sessions) as session:
            actor = await resolve_api_key(session, supplied)
        if actor is not None:
            return actor
    elif not keys:
        return Actor(user_id=None, role=UserRole.ADMIN.value, via="open")
    raise HTTPException(401, "a valid API key is required (Authorization: Bearer <key>)",
                        headers={"WWW-Authenticate": "Bearer"})


Caller = Annotated[Actor, Depends(require_api_key)]


Session = Annotated[AsyncSession, Depends(get_session, scope="function")]
AppSettings = Annotated[Settings, Depends(get_settings)]
LinkingConfig = Annotated[LinkingSettings, Depends(get_linking_settings)]
OutboundConfig = Annotated[OutboundSettings, Depends(get_outbound_settings)]
IntakeConfig = Annotated[IntakeSettings, Depends(get_intake_settings)]
