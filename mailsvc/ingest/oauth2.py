"""OAuth2 access tokens for IMAP mailboxes: fetched from the token endpoint, renewed before expiry.

Three grants, each one form POST to the provider's token endpoint (RFC 6749 section 4.4 and 6,
RFC 7523 section 2.1): an app's client credentials (Microsoft 365, ``IMAP.AccessAsApp``), a user's
refresh token (Microsoft 365 delegated, Gmail), and a Google service account's signed assertion
with domain-wide delegation (the mailbox user as ``sub``). The POST is plain urllib: it is one
request on the poller's own thread, and the OAuth client libraries would add an HTTP stack (and,
for Microsoft's, a discovery round trip that cannot be pointed at a test server) for no gain.
PyJWT signs the assertion.

Secrets and tokens never reach a log line, an exception message or a repr.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode
from urllib.request import Request, urlopen

import jwt

from mailsvc.config import GOOGLE_TOKEN_URL, ImapOAuth2, check_token_url
from mailsvc.errors import MailsvcError

logger = logging.getLogger(__name__)

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600  # Google accepts at most one hour
MAX_RESPONSE_BYTES = 1 << 20
# Without expires_in a token is taken to last this long (RFC 6749 leaves it to the server).
DEFAULT_LIFETIME = 3600.0


class TokenError(MailsvcError):
    """No access token: the endpoint refused (its ``error``) or could not be reached."""


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str = field(repr=False)
    issued_at: float  # time.time() scale
    expires_at: float


@dataclass(frozen=True, slots=True)
class TokenReply:
    token: AccessToken
    refresh_token: str | None = field(default=None, repr=False)  # a rotated one, if sent


def renew_at(token: AccessToken, margin: float) -> float:
    """When to fetch the next token: ``margin`` before expiry, but not before half its life."""
    return max(token.expires_at - margin, (token.issued_at + token.expires_at) / 2)


def needs_renewal(token: AccessToken | None, now: float, margin: float) -> bool:
    return token is None or now >= renew_at(token, margin)


def grant_form(config: ImapOAuth2, *, client_secret: str | None,
               refresh_token: str | None, assertion: str | None) -> dict[str, str]:
    """The token request's form fields for the configured grant."""
    form: dict[str, str]
    if config.grant == "service_account":
        assert assertion is not None
        return {"grant_type": JWT_BEARER, "assertion": assertion}
    if config.grant == "client_credentials":
        form = {"grant_type": "client_credentials", "scope": config.effective_scope}
    else:
        assert refresh_token is not None
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if config.effective_scope:
            form["scope"] = config.effective_scope
    assert config.client_id is not None
    form["client_id"] = config.client_id
    if client_secret:
        form["client_secret"] = client_secret  # client_secret_post: both providers take it
    return form


def service_account_assertion(key: Mapping[str, Any], subject: str, scope: str,
                              audience: str, now: float) -> str:
    """The signed JWT a Google service account trades for a token acting as ``subject``."""
    claims = {
        "iss": key["client_email"], "sub": subject, "scope": scope, "aud": audience,
        "iat": int(now), "exp": int(now) + ASSERTION_LIFETIME,
    }
    headers = {"kid": key["private_key_id"]} if key.get("private_key_id") else None
    return jwt.encode(claims, key["private_key"], algorithm="RS256", headers=headers)


def parse_token_reply(status: int, body: bytes, now: float) -> TokenReply:
    """The token from an endpoint's answer, or TokenError with its ``error`` (never secrets)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise TokenError(f"HTTP {status}, not a JSON object")
    if status != 200 or "error" in data:
        error = str(data.get("error", "no error code"))[:100]
        description = str(data.get("error_description", "")).splitlines()
        detail = f": {description[0][:200]}" if description and description[0] else ""
        raise TokenError(f"HTTP {status}, {error}{detail}")
    value = data.get("access_token")
    if not isinstance(value, str) or not value:
        raise TokenError(f"HTTP {status}, no access_token in the answer")
    try:
        lifetime = float(data.get("expires_in", DEFAULT_LIFETIME))
    except (TypeError, ValueError):
        lifetime = DEFAULT_LIFETIME
    rotated = data.get("refresh_token")
    return TokenReply(AccessToken(value, now, now + max(lifetime, 0.0)),
                      rotated if isinstance(rotated, str) and rotated else None)


def post_form(url: str, form: Mapping[str, str], timeout: float,
              ca_file: Path | None) -> tuple[int, bytes]:
    # The URL is https (or http to localhost): checked when the settings are read.
    request = Request(url, data=urlencode(form).encode(), method="POST", headers={  # noqa: S310
        "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
    })
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    try:
        with urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            return int(response.status), response.read(MAX_RESPONSE_BYTES)
    except HTTPError as exc:
        with exc:
            return exc.code, exc.read(MAX_RESPONSE_BYTES)
    except (URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TokenError(f"cannot reach it: {reason}") from None


class TokenSource:
    """One mailbox's access token: cached, and fetched anew ``refresh_margin`` before expiry.

    Blocking; called on the mailbox poller's own thread.
    """

    def __init__(self, config: ImapOAuth2, username: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._username = username
        self._clock = clock
        self._token: AccessToken | None = None
        self._rotated: str | None = None  # the newest refresh token the endpoint sent
        self.fetched = 0

    @property
    def endpoint(self) -> str:
        return self.config.effective_token_url() or "the key file's token_uri"

    def token(self) -> AccessToken:
        now = self._clock()
        if needs_renewal(self._token, now, self.config.refresh_margin):
            self._token = self._fetch(now)
            self.fetched += 1
        assert self._token is not None
        return self._token

    def _fetch(self, now: float) -> AccessToken:
        config = self.config
        url = config.effective_token_url()
        assertion = None
        if config.grant == "service_account":
            assert config.service_account_file is not None
            key = _read_key(config.service_account_file)
            url = url or str(key.get("token_uri") or GOOGLE_TOKEN_URL)
            try:
                check_token_url(url)
            except ValueError as exc:
                raise TokenError(f"{config.service_account_file}: {exc}") from None
            assertion = service_account_assertion(
                key, self._username, config.effective_scope, url, now)
        assert url is not None
        form = grant_form(config, client_secret=config.client_secret_value(),
                          refresh_token=self._rotated or config.refresh_token_value(),
                          assertion=assertion)
        status, body = post_form(url, form, config.timeout, config.ca_file)
        reply = parse_token_reply(status, body, now)
        if reply.refresh_token and reply.refresh_token != form.get("refresh_token"):
            self._keep_rotated(reply.refresh_token)
        return reply.token

    def _keep_rotated(self, refresh_token: str) -> None:
        """Microsoft sends a new refresh token with each token: use it, and save it to the file."""
        self._rotated = refresh_token
        path = self.config.refresh_token_file
        if path is None:
            return
        try:
            _write_secret(path, refresh_token)
        except OSError as exc:
            logger.warning("cannot save the new refresh token to %s (%s); it is kept in memory "
                           "until the process ends", path, exc.strerror or type(exc).__name__)


def _read_key(path: Path) -> dict[str, Any]:
    try:
        key = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TokenError(f"cannot read the service account key {path}: "
                         f"{type(exc).__name__}") from None
    if not isinstance(key, dict) or not {"client_email", "private_key"} <= key.keys():
        raise TokenError(f"{path} is not a service account key (client_email, private_key)")
    return key


def _write_secret(path: Path, value: str) -> None:
    """Replace the file atomically, readable by its owner only."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(value + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
