"""Counts every API answer (refusals by the gate too) with bounded label values."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailsvc.metrics import record_request


class RouteTemplates:
    """The application's path templates (``/api/v1/accounts/{account_id}``), matched against
    a request path: the label a request is counted under, whatever its id or made-up suffix.

    ``paths`` is called once, on first use (when every route exists); templates without
    parameters are tried first."""

    def __init__(self, paths: Callable[[], Iterable[str]]) -> None:
        self.paths = paths
        self._compiled: list[tuple[re.Pattern[str], str]] | None = None

    def _patterns(self) -> list[tuple[re.Pattern[str], str]]:
        if self._compiled is None:
            unique = sorted(dict.fromkeys(self.paths()), key=lambda p: p.count("{"))
            self._compiled = [(compile_path(p)[0], p) for p in unique]
        return self._compiled

    def template(self, path: str) -> str | None:
        for pattern, template in self._patterns():
            if pattern.match(path):
                return template
        return None


class Instrument:
    """ASGI middleware: ``mailsvc_api_requests_total{method, route, status}``.

    A made-up method is counted as ``other``, a path no route knows as ``unmatched``, and a
    known path by its route template, so no request can add a series of its own."""

    def __init__(self, app: ASGIApp, *, templates: RouteTemplates) -> None:
        self.app = app
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # when the application fails before answering

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            record_request(scope.get("method", ""), self.templates.template(scope["path"]),
                           status)
