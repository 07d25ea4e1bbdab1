"""The API's gate, as pure ASGI middleware: nothing of a request body is read before it passes.

In order, for every HTTP request:

1. **Who may see what.** With API keys configured, every path needs ``Authorization: Bearer
   <key>`` except ``/healthz`` and ``/readyz`` (for load balancers), and, when switched on,
   ``/metrics``, the OpenAPI document and ``/docs``. ``/readyz`` without a key answers only its
   status; its detail (database, broker, mailboxes) needs a key unless switched on.
2. **Failed authentication** is logged (client, method, path; never the key) and limited per
   client: a client out of attempts gets 429 with ``Retry-After`` for everything that needs a
   key, before its key is even looked at (else the answer would tell a guess right or wrong).
3. **Body size**: a ``Content-Length`` over the limit is refused (413) at once; a body without
   one (chunked) is counted while the application reads it and refused when it passes the limit.

Every refusal is an ``application/problem+json`` document, like the API's other errors.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailsvc.api.ratelimit import FailureLimiter, retry_after_header
from mailsvc.keys import matches_any

logger = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
PROBLEMS = "https://mailsvc.example/problems/"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
# Set in the request state once the key was checked (``request.state.api_key_checked``).
AUTHENTICATED = "api_key_checked"


class Access(enum.Enum):
    OPEN = "open"  # never needs a key
    STATUS = "status"  # open, but only the status; the detail needs a key
    KEY = "key"  # needs a key


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Which paths need a key, from the settings (pure)."""

    keys: tuple[bytes, ...]
    docs_paths: frozenset[str] = frozenset()
    # Paths whose application signs people in itself (the triage page's cookie session).
    own_sign_in: tuple[str, ...] = ()
    public_docs: bool = False
    public_metrics: bool = False
    public_readyz_detail: bool = False

    def access(self, path: str) -> Access:
        if not self.keys or path == HEALTH_PATH:
            return Access.OPEN
        if path == READY_PATH:
            return Access.OPEN if self.public_readyz_detail else Access.STATUS
        if path == METRICS_PATH:
            return Access.OPEN if self.public_metrics else Access.KEY
        if path in self.docs_paths:
            return Access.OPEN if self.public_docs else Access.KEY
        if any(path == prefix or path.startswith(prefix + "/") for prefix in self.own_sign_in):
            return Access.OPEN
        return Access.KEY


def bearer_token(headers: Headers) -> str | None:
    """The credentials of an ``Authorization`` header; "" for another scheme; None without one."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def client_of(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def problem_response(scope: Scope, status: int, title: str, detail: str, kind: str,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"type": PROBLEMS + kind, "title": title, "status": status, "detail": detail,
            "instance": scope.get("path", "")}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def status_only(body: bytes, status_code: int) -> bytes:
    """The public view of a readiness answer: its ``status`` and nothing else."""
    try:
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        status = None
    if not isinstance(status, str):
        status = "ok" if status_code < 400 else "unavailable"
    return json.dumps({"status": status}).encode()


def _printable(value: str, limit: int = 200) -> str:
    """An attacker's path, safe for one log line."""
    return value[:limit].encode("unicode_escape").decode("ascii")


class Guard:
    """ASGI middleware: authentication, failed-attempt limit, body size (see module docstring)."""

    def __init__(self, app: ASGIApp, *, policy: AccessPolicy, limiter: FailureLimiter,
                 max_body_bytes: int,
                 user_key: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self.app = app
        self.policy = policy
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes
        # A user's own API key (kept hashed in the store) passes too.
        self.user_key = user_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        access = self.policy.access(scope["path"])
        if access is not Access.OPEN:
            token = bearer_token(headers)
            if token is None and access is Access.STATUS:
                await self._body_limited(scope, receive, _StatusOnly(send), headers)
                return
            refusal = await self._authenticate(scope, token)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
            scope.setdefault("state", {})[AUTHENTICATED] = True
        await self._body_limited(scope, receive, send, headers)

    async def _authenticate(self, scope: Scope, token: str | None) -> JSONResponse | None:
        client = client_of(scope)
        wait = self.limiter.blocked_for(client)
        if wait > 0:
            return problem_response(
                scope, 429, "Too many requests",
                "too many failed authentications from this client; try again later",
                "too-many-failed-authentications",
                headers={"Retry-After": retry_after_header(wait)})
        if token and matches_any(token, self.policy.keys):
            return None
        if token and self.user_key is not None and await self.user_key(token):
            return None
        wait = self.limiter.failed(client)
        logger.warning("API authentication failed: client %s, %s %s, %s", client,
                       _printable(scope.get("method", "")), _printable(scope["path"]),
                       "no key" if token is None else "wrong key")
        if wait > 0:
            logger.warning("API client %s: too many failed authentications, refused for %s s",
                           client, retry_after_header(wait))
        return problem_response(
            scope, 401, "Unauthorized",
            "a valid API key is required (Authorization: Bearer <key>)", "unauthorized",
            headers={"WWW-Authenticate": "Bearer"})

    async def _body_limited(self, scope: Scope, receive: Receive, send: Send,
                            headers: Headers) -> None:
        limit = self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await problem_response(scope, 400, "Bad request",
                                       "Content-Length is not a number", "bad-request")(
                    scope, receive, send)
                return
            if int(declared) > limit:
                await self._too_large(scope)(scope, receive, send)
                return
        await self.app(scope, *_LimitedBody(self, scope, receive, send, limit).channels())

    def _too_large(self, scope: Scope) -> JSONResponse:
        return problem_response(scope, 413, "Content too large",
                                f"the request body is larger than {self.max_body_bytes} bytes",
                                "content-too-large", headers={"Connection": "close"})


class _LimitedBody:
    """Counts the body as the application reads it; past the limit, answers 413 itself, tells
    the application the client went away, and drops whatever the application still sends."""

    def __init__(self, guard: Guard, scope: Scope, receive: Receive, send: Send,
                 limit: int) -> None:
        self.guard, self.scope, self.receive, self.send = guard, scope, receive, send
        self.limit = limit
        self.received = 0
        self.started = False
        self.refused = False

    def channels(self) -> tuple[Receive, Send]:
        return self._receive, self._send

    async def _receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self.receive()
        if message["type"] != "http.request":
            return message
        self.received += len(message.get("body", b""))
        if self.received <= self.limit:
            return message
        self.refused = True
        if not self.started:
            self.started = True
            await self.guard._too_large(self.scope)(self.scope, self.receive, self.send)
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


class _StatusOnly:
    """A ``send`` that reduces a JSON answer to its ``status`` (readiness without a key)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = status_only(b"".join(self.chunks), self.start["status"])
        headers = [(k, v) for k, v in self.start.get("headers", [])
                   if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})


def docs_paths(paths: Iterable[str | None]) -> frozenset[str]:
    return frozenset(p for p in paths if p)
