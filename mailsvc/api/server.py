"""Runs the API with uvicorn inside the service's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from mailsvc.api.app import create_app
from mailsvc.bootstrap import Services
from mailsvc.ports import api_bind_host, api_listener, bind_listening

logger = logging.getLogger(__name__)


class EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: `mailsvc serve` owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_api(services: Services, sockets: list[socket.socket] | None = None) -> None:
    """Serve the API until cancelled; on ``sockets`` bound beforehand (`mailsvc serve` binds
    them before SMTP accepts, so a taken port stops the start), else on a port bound here."""
    api, logs = services.settings.api, services.settings.logging
    host = api_bind_host(api)
    if host != api.host:
        logger.warning(
            "no MAILSVC_API_KEYS: the API binds to 127.0.0.1 instead of %s", api.host
        )
    if not api.keys:
        logger.warning(
            "no MAILSVC_API_KEYS: the API is open without authentication, on loopback only (%s)",
            host,
        )
    if sockets is None:
        sockets = bind_listening(api_listener(api))
    config = uvicorn.Config(
        create_app(services), host=host, port=api.port,
        log_level=logs.level.lower(), lifespan="off",
        # The process's own handler (mailsvc/logs.py) formats uvicorn's lines too.
        log_config=None, access_log=logs.api_access_log,
    )
    server = EmbeddedServer(config)
    logger.info("API listening on http://%s:%s", host, api.port)
    try:
        await server.serve(sockets=sockets)
    except asyncio.CancelledError:
        server.should_exit = True
        raise
    finally:
        for sock in sockets:
            sock.close()
