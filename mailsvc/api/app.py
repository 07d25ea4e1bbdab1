"""The FastAPI application factory: /api/v1 resources, health, metrics, problem errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mailsvc import __version__
from mailsvc.api import problems
from mailsvc.api.deps import require_api_key
from mailsvc.api.health import ReadinessChecks, intake_backlog
from mailsvc.api.routes import (
    activities,
    documents,
    emails,
    inbox,
    opportunities,
    people,
    reports,
    settings,
    tickets,
)
from mailsvc.api.ui import routes as ui
from mailsvc.bootstrap import Services
from mailsvc.metrics import record_request, register

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
    register()  # the intake metrics exist from the start

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
    app.include_router(api)
    app.include_router(ui.router)
    app.mount("/ui/static", ui.static, name="ui-static")
    app.add_exception_handler(ui.SignInRequired, ui.sign_in_required)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    readiness = ReadinessChecks(services)

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        result = await readiness.check()
        return JSONResponse(result.body(), status_code=200 if result.ready else 503)

    @app.get("/metrics", tags=["health"])
    async def metrics(request: Request) -> Response:
        await intake_backlog(request.app.state.services)  # refreshes the backlog gauges
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def problems_model() -> type:
    from mailsvc.api.schemas import Problem

    return Problem
