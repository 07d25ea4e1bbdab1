"""The FastAPI application factory: /api/v1 resources, health, metrics, problem errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from mailsvc import __version__
from mailsvc.api import problems
from mailsvc.api.deps import require_api_key
from mailsvc.api.routes import (
    activities,
    documents,
    emails,
    inbox,
    opportunities,
    outbound,
    people,
    reports,
    settings,
    tickets,
)
from mailsvc.api.ui import routes as ui
from mailsvc.bootstrap import Services
from mailsvc.crmstore.db import read_session
from mailsvc.metrics import record_request

DESCRIPTION = """The CRM store of mailsvc: accounts, contacts, inbox leads, opportunities,
tickets, activities, quotes, orders, invoices, e-mails with their links, and dashboard reports.

Errors are RFC 9457 problem documents (`application/problem+json`). Authentication: an API key
from `MAILSVC_API_KEYS` as `Authorization: Bearer <key>` (with no key configured the API is open
and listens on loopback only)."""


def create_app(services: Services) -> FastAPI:
    app = FastAPI(title="mailsvc", version=__version__, description=DESCRIPTION,
                  openapi_url="/api/v1/openapi.json", docs_url="/api/v1/docs", redoc_url=None)
    app.state.services = services
    problems.register(app)

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                    ) -> Response:
        response = await call_next(request)
        record_request(request.method, response.status_code)
        return response

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(require_api_key)], responses={
        401: {"model": problems_model(), "description": "No or a wrong API key"},
        404: {"model": problems_model(), "description": "Not found"},
        409: {"model": problems_model(), "description": "Conflict"},
        422: {"model": problems_model(), "description": "Invalid request or rule violation"},
    })
    for module in (people, opportunities, inbox, tickets, activities, documents, emails,
                   settings, reports):
        api.include_router(module.router)
    api.include_router(outbound.router)
    app.include_router(api)
    app.include_router(ui.router)
    app.mount("/ui/static", ui.static, name="ui-static")
    app.add_exception_handler(ui.SignInRequired, ui.sign_in_required)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        services: Services = request.app.state.services
        checks: dict[str, Any] = {}
        try:
            async with read_session(services.sessions) as session:
                await session.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {type(exc).__name__}"
        if services.relay is None:
            checks["broker"] = "not configured"
        else:
            checks["broker"] = "ok" if services.relay.connected else "unavailable"
        if services.mailboxes:
            # Reported, not required: one mailbox down must not take the SMTP intake offline.
            checks["mailboxes"] = {p.mailbox.name: p.status() for p in services.mailboxes}
        ready = checks["database"] == "ok" and checks["broker"] in ("ok", "not configured")
        return JSONResponse({"status": "ok" if ready else "unavailable", "checks": checks},
                            status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def problems_model() -> type:
    from mailsvc.api.schemas import Problem

    return Problem
