"""Request dependencies: the unit of work (one transaction per request) and API-key auth."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.api.guard import AUTHENTICATED
from mailsvc.bootstrap import Services
from mailsvc.config import Settings
from mailsvc.crmstore.db import READ_ONLY

bearer = HTTPBearer(auto_error=False, description="An API key from MAILSVC_API_KEYS.")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_settings(request: Request) -> Settings:
    return get_services(request).settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the handler returns, rolled back on error.

    Reads (GET, HEAD) begin as read-only transactions, so on SQLite they never wait behind the
    intake's writes."""
    async with get_services(request).sessions() as session:
        if request.method in ("GET", "HEAD"):
            await session.connection(execution_options=READ_ONLY)
            yield session  # nothing to commit: closing the session ends the transaction
            return
        async with session.begin():
            yield session


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """Declares the bearer scheme in the OpenAPI document; the key itself is checked (in
    constant time, failures limited per client) by ``mailsvc.api.guard`` before the request
    gets here. This only makes sure no route is reached without that check."""
    if not get_settings(request).api_keys:
        return  # open API: serve_api binds it to loopback only
    if not getattr(request.state, AUTHENTICATED, False):
        raise HTTPException(401, "a valid API key is required (Authorization: Bearer <key>)",
                            headers={"WWW-Authenticate": "Bearer"})


Session = Annotated[AsyncSession, Depends(get_session, scope="function")]
AppSettings = Annotated[Settings, Depends(get_settings)]
