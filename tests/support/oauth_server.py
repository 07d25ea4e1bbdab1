"""A local OAuth2 token endpoint and introspection endpoint (RFC 7662) for the OAuth2 IMAP tests.

It plays Microsoft's and Google's token endpoints (client credentials, refresh tokens, a service
account's JWT assertion) and answers Dovecot's introspection requests for the tokens it issued.
Tokens it issued stay valid past ``expires_in``: the tests check that the poller renews them in
time, not how fast a busy machine logs in with them.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import jwt

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class Refused(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(error)
        self.error, self.description = error, description


@dataclass
class Issued:
    user: str
    grant: str
    expires_at: float


@dataclass
class OAuthServer:
    """Register clients, refresh tokens and service accounts, then point mailboxes at it."""

    # client_id -> client secret (None: a public client, as a delegated desktop app is)
    clients: dict[str, str | None] = field(default_factory=dict)
    # client_id -> the mailbox its app-only token opens (Exchange's mailbox permission)
    app_mailboxes: dict[str, str] = field(default_factory=dict)
    # refresh token -> (client_id, user)
    refresh_tokens: dict[str, tuple[str, str]] = field(default_factory=dict)
    # service account e-mail -> its public key (PEM)
    service_accounts: dict[str, bytes] = field(default_factory=dict)
    expires_in: int = 3600
    rotate_refresh_tokens: bool = False  # Microsoft sends a new one with every token
    accept_tokens: bool = True  # False: introspection calls every token inactive
    requests: list[dict[str, str]] = field(default_factory=list)  # token requests' forms
    issued: dict[str, Issued] = field(default_factory=dict)
    introspections: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def introspection_url(self) -> str:
        return f"{self.url}/introspect"

    def grants(self, grant_type: str) -> list[dict[str, str]]:
        with self._lock:
            return [form for form in self.requests if form.get("grant_type") == grant_type]

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                if self.path == "/token":
                    status, body = owner._token(form)
                elif self.path == "/introspect":
                    status, body = 200, owner._introspect(form.get("token", ""))
                else:
                    status, body = 404, {"error": "not_found"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(form)
            try:
                user, extra = self._grant(form)
            except Refused as refused:
                return 400, {"error": refused.error, "error_description": refused.description}
            token = "at-" + secrets.token_urlsafe(16)
            self.issued[token] = Issued(user, form["grant_type"], time.time() + self.expires_in)
            return 200, {"access_token": token, "token_type": "Bearer",
                         "expires_in": self.expires_in, **extra}

    def _grant(self, form: dict[str, str]) -> tuple[str, dict[str, str]]:
        grant = form.get("grant_type")
        if grant == JWT_BEARER:
            return self._assertion(form.get("assertion", "")), {}
        client = form.get("client_id", "")
        if client not in self.clients or self.clients[client] != form.get("client_secret"):
            raise Refused("invalid_client", "AADSTS7000215: Invalid client secret provided.")
        if grant == "client_credentials":
            if client not in self.app_mailboxes:
                raise Refused("unauthorized_client", "no mailbox permission")
            return self.app_mailboxes[client], {}
        if grant == "refresh_token":
            owner = self.refresh_tokens.get(form.get("refresh_token", ""))
            if owner is None or owner[0] != client:
                raise Refused("invalid_grant", "AADSTS70000: the refresh token is not valid.")
            if not self.rotate_refresh_tokens:
                return owner[1], {}
            rotated = "rt-" + secrets.token_urlsafe(12)
            self.refresh_tokens[rotated] = owner
            return owner[1], {"refresh_token": rotated}
        raise Refused("unsupported_grant_type", str(grant))

    def _assertion(self, assertion: str) -> str:
        try:
            issuer = jwt.decode(assertion, options={"verify_signature": False})["iss"]
            key = self.service_accounts[issuer]
            claims = jwt.decode(assertion, key, algorithms=["RS256"], audience=self.token_url,
                                options={"require": ["iss", "sub", "aud", "iat", "exp"]})
        except (KeyError, jwt.InvalidTokenError) as exc:
            raise Refused("invalid_grant", f"bad assertion: {exc}") from None
        if claims.get("scope") != "https://mail.google.com/":
            raise Refused("invalid_scope", str(claims.get("scope")))
        return str(claims["sub"])

    def _introspect(self, token: str) -> dict[str, Any]:
        with self._lock:
            self.introspections += 1
            issued = self.issued.get(token)
            if issued is None or not self.accept_tokens:
                return {"active": False}
            return {"active": True, "username": issued.user, "exp": int(issued.expires_at)}


@contextmanager
def running_oauth_server() -> Iterator[OAuthServer]:
    server = OAuthServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
