"""The FastAPI application factory: /api/v1 resources, health, metrics, problem errors."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute

from mailsvc import __version__
from mailsvc.api import openapi, problems
from mailsvc.api.deps import require_api_key
from mailsvc.api.export import CsvExport
from mailsvc.api.guard import AccessPolicy, Guard, docs_paths
from mailsvc.api.health import ReadinessChecks, intake_backlog, store_gauges
from mailsvc.api.instrument import Instrument, RouteTemplates
from mailsvc.api.ratelimit import FailureLimiter
from mailsvc.api.routes import (
    activities,
    documents,
    emails,
    inbox,
    mailfiles,
    never_log,
    opportunities,
    outbound,
    people,
    privacy,
    reports,
    settings,
    tickets,
    webhooks,
)
from mailsvc.api.ui import routes as ui
from mailsvc.bootstrap import Services
from mailsvc.keys import parse_configured_key
from mailsvc.metrics import exposition, register

DESCRIPTION = """The CRM store of mailsvc: accounts, contacts, inbox leads, opportunities,
tickets, activities, quotes, orders, invoices, e-mails with their links, and dashboard reports.

Errors are RFC 9457 problem documents (`application/problem+json`). Authentication: an API key
from `MAILSVC_API_KEYS` as `Authorization: Bearer <key>` (with no key configured the API is open
and listens on loopback only). Repeated failed authentication is answered 429 with
`Retry-After`; a body over `MAILSVC_API_MAX_BODY_BYTES` is refused with 413 unread."""


API_PREFIX = "/api/v1"
# Where a FastAPI user looks first; they redirect to the documents under API_PREFIX.
ROOT_DOCS = ("/openapi.json", "/docs")
# Relative to the document's own host: right behind any proxy that keeps the path.
SERVERS = [{"url": "/", "description": "The host that serves this document"}]


def add_redirect(app: FastAPI, path: str, target: str) -> None:
    async def redirect() -> RedirectResponse:
        return RedirectResponse(target, status_code=307)

    app.add_api_route(path, redirect, methods=["GET"], include_in_schema=False,
                      name=f"redirect{path.replace('/', '_').replace('.', '_')}")


def create_app(services: Services) -> FastAPI:
    app = FastAPI(title="mailsvc", version=__version__, description=DESCRIPTION,
                  openapi_url=f"{API_PREFIX}/openapi.json", docs_url=f"{API_PREFIX}/docs",
                  redoc_url=None, openapi_tags=openapi.TAGS, servers=SERVERS,
                  generate_unique_id_function=openapi.operation_id)
    openapi.install(app, API_PREFIX)
    app.state.services = services
    problems.register(app)
    register()  # the intake metrics exist from the start
    app.add_middleware(CsvExport)  # ?format=csv / Accept: text/csv on every list and report

    config = services.settings.api
    policy = AccessPolicy(
        keys=tuple(parse_configured_key(key) for key in config.keys),
        docs_paths=docs_paths((app.openapi_url, app.docs_url, app.redoc_url,
                               app.swagger_ui_oauth2_redirect_url, *ROOT_DOCS)),
        public_docs=config.public_docs, public_metrics=config.metrics_public,
        public_readyz_detail=config.readyz_detail_public,
        # The triage page signs people in itself (a cookie session) and checks CSRF.
        own_sign_in=(ui.router.prefix,),
    )
    limiter = FailureLimiter(config.auth_failures, config.auth_failure_window_seconds)
    app.state.auth_failures = limiter  # the triage page's sign-in counts its failures here too
    # The last added runs first: count everything, then let only what may pass reach the app.
    app.add_middleware(Guard, policy=policy, limiter=limiter,
                       max_body_bytes=config.max_body_bytes,
                       user_key=partial(user_key_valid, services))
    modules = (people, opportunities, inbox, tickets, activities, documents, emails, mailfiles,
               settings, reports, privacy, webhooks, never_log)
    app.add_middleware(Instrument, templates=RouteTemplates(lambda: [
        *(f"{API_PREFIX}{route.path}" for module in modules for route in module.router.routes
          if isinstance(route, APIRoute)),
        *(route.path for route in ui.router.routes if isinstance(route, APIRoute)),
        *(path for route in app.routes if isinstance(path := getattr(route, "path", None), str)),
    ]))

    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_api_key)], responses={
        401: {"model": problems_model(), "description": "No or a wrong API key"},
        404: {"model": problems_model(), "description": "Not found"},
        409: {"model": problems_model(), "description": "Conflict"},
        422: {"model": problems_model(), "description": "Invalid request or rule violation"},
    })
    for module in modules:
        api.include_router(module.router)
    api.include_router(outbound.router)
    app.include_router(api)
    app.include_router(ui.router)
    app.mount("/ui/static", ui.static, name="ui-static")
    app.add_exception_handler(ui.SignInRequired, ui.sign_in_required)

    for alias, target in zip(ROOT_DOCS, (app.openapi_url, app.docs_url), strict=True):
        add_redirect(app, alias, str(target))

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
        await store_gauges(request.app.state.services)  # outbox and quarantine
        body, media_type = exposition()  # all processes' metrics under `serve` with workers
        return Response(body, media_type=media_type)

    return app


async def user_key_valid(services: Services, supplied: str) -> bool:
    """A user's own API key (kept hashed in the store), for the gate."""
    from mailsvc.crmstore.db import read_session
    from mailsvc.crmstore.services.access import resolve_api_key

    async with read_session(services.sessions) as session:
        return await resolve_api_key(session, supplied) is not None


def problems_model() -> type:
    from mailsvc.api.schemas import Problem

    return Problem
