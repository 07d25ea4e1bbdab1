"""The triage page's sign-in: a signed, HttpOnly, SameSite cookie and a CSRF token per session.

The cookie holds no key: only a fingerprint of the API key used to sign in (so revoking the key
ends the session), the CSRF token, the language and when it was issued, signed with HMAC-SHA256.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from mailsvc.keys import key_digest, matches_any, parse_configured_key

COOKIE = "mailsvc_ui"
MAX_AGE_SECONDS = 12 * 3600


@dataclass(frozen=True, slots=True)
class UiSession:
    fingerprint: str  # of the API key signed in with; "" when the API has no keys
    csrf: str
    issued: float


def fingerprint(key: str) -> str:
    return key_digest(key).hex()


def new_session(key: str) -> UiSession:
    return UiSession(fingerprint(key) if key else "", secrets.token_urlsafe(24), time.time())


def encode(session: UiSession, secret: bytes) -> str:
    body = base64.urlsafe_b64encode(json.dumps(
        {"f": session.fingerprint, "c": session.csrf, "t": session.issued}
    ).encode()).decode()
    return f"{body}.{_sign(body, secret)}"


def decode(cookie: str | None, secret: bytes, now: float | None = None) -> UiSession | None:
    """The session in a cookie, or None when it is missing, forged or expired."""
    if not cookie or "." not in cookie:
        return None
    body, _, signature = cookie.rpartition(".")
    if not hmac.compare_digest(signature, _sign(body, secret)):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(body.encode()))
        session = UiSession(str(data["f"]), str(data["c"]), float(data["t"]))
    except (ValueError, KeyError, TypeError):
        return None
    if (now or time.time()) - session.issued > MAX_AGE_SECONDS:
        return None
    return session


def key_matches(session: UiSession, keys: tuple[str, ...]) -> bool:
    """The key the session was signed in with is still one of the configured keys (each as it
    is or as ``sha256:<hex>``)."""
    if not keys:
        return True
    return any(hmac.compare_digest(session.fingerprint, parse_configured_key(k).hex())
               for k in keys)


def valid_key(supplied: str, keys: tuple[str, ...]) -> bool:
    return matches_any(supplied, [parse_configured_key(k) for k in keys])


def _sign(body: str, secret: bytes) -> str:
    return hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()
