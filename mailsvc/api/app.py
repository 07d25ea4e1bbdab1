"""The FastAPI application factory."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from mailsvc import __version__
from mailsvc.bootstrap import Services


def create_app(services: Services) -> FastAPI:
    app = FastAPI(title="mailsvc", version=__version__, openapi_url="/api/v1/openapi.json")
    app.state.services = services

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        checks: dict[str, Any] = {}
        try:
            async with services.sessions() as session:
                await session.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {type(exc).__name__}"
        if services.relay is None:
            checks["broker"] = "not configured"
        else:
            checks["broker"] = "ok" if services.relay.connected else "unavailable"
        ready = checks["database"] == "ok" and checks["broker"] in ("ok", "not configured")
        return JSONResponse({"status": "ok" if ready else "unavailable", "checks": checks},
                            status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
