"""Runs the API with uvicorn inside the service's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn

from mailsvc.api.app import create_app
from mailsvc.bootstrap import Services

logger = logging.getLogger(__name__)


class EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: `mailsvc serve` owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_api(services: Services) -> None:
    settings = services.settings
    if not settings.api_keys and settings.api_host not in ("127.0.0.1", "::1", "localhost"):
        logger.warning(
            "no MAILSVC_API_KEYS: the API binds to 127.0.0.1 instead of %s", settings.api_host
        )
        host = "127.0.0.1"
    else:
        host = settings.api_host
    if not settings.api_keys:
        logger.warning(
            "no MAILSVC_API_KEYS: the API is open without authentication, on loopback only (%s)",
            host,
        )
    config = uvicorn.Config(
        create_app(services), host=host, port=settings.api_port,
        log_level=settings.log_level.lower(), lifespan="off",
        # The process's own handler (mailsvc/logs.py) formats uvicorn's lines too.
        log_config=None, access_log=settings.api_access_log,
    )
    server = EmbeddedServer(config)
    logger.info("API listening on http://%s:%s", host, settings.api_port)
    try:
        await server.serve()
    except asyncio.CancelledError:
        server.should_exit = True
        raise
