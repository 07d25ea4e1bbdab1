"""The pure rules of webhooks: valid targets and secrets, the signature, what an answer means,
when to retry."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

from standardwebhooks.webhooks import Webhook as Signer

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
# The Standard Webhooks spec: secrets are 24 to 64 random bytes.
SECRET_BYTES = (24, 64)
MAX_URL_LENGTH = 2000
CONTENT_TYPE = "application/cloudevents+json"

Verdict = Literal["delivered", "retry", "failed"]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(ValueError):
    """A URL or address webhooks may not be delivered to."""


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def check_secret(secret: str) -> str:
    """The secret as given, if it is ``whsec_<base64 of 24 to 64 bytes>``."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX!r} (Standard Webhooks)")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"is not {SECRET_PREFIX} followed by base64") from None
    low, high = SECRET_BYTES
    if not low <= len(key) <= high:
        raise ValueError(f"must decode to {low} to {high} bytes, not {len(key)}")
    return secret


def secret_hint(secret: str) -> str:
    """What lists show of a secret: its prefix and last four characters."""
    return f"{SECRET_PREFIX}…{secret[-4:]}"


def signature_headers(secret: str, message_id: str, timestamp: datetime,
                      body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers: ``webhook-signature`` is ``v1,`` and the base64
    HMAC-SHA256 of ``{id}.{timestamp}.{body}`` under the secret's decoded bytes."""
    signature = Signer(secret).sign(message_id, timestamp, body.decode("utf-8"))
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
    }


def check_url(url: str) -> str:
    """The URL as given, if webhooks can be sent to it: http(s), a host, no credentials."""
    if len(url) > MAX_URL_LENGTH:
        raise TargetRefused(f"is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise TargetRefused("contains white space or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("must be an http:// or https:// URL")
    if not parts.hostname:
        raise TargetRefused("has no host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("must not carry credentials (the signature authenticates mailsvc)")
    if parts.fragment:
        raise TargetRefused("must not have a #fragment")
    if port == 0:
        raise TargetRefused("has port 0")
    return url


def check_host(url: str, allow_private: bool) -> None:
    """Refuse at once what can only be a private target: a non-public IP literal, or
    ``localhost``. (Names are checked again on each connection, see ``check_address``.)"""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if allow_private:
        return
    if host == "localhost" or host.endswith(".localhost"):
        raise TargetRefused(f"{host} is a loopback name; {PRIVATE_HINT}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return
    check_address(address, allow_private)


PRIVATE_HINT = ("private, loopback and link-local targets are refused unless "
                "MAILSVC_WEBHOOK_ALLOW_PRIVATE=true")


def check_address(address: Address, allow_private: bool) -> None:
    """Whether a request may connect to ``address``: never to an unspecified or multicast one;
    to a non-public one (loopback, private, link-local, shared, reserved) only if allowed."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified or address.is_multicast:
        raise TargetRefused(f"{address} is not a host address")
    if not allow_private and not address.is_global:
        kind = ("loopback" if address.is_loopback else "link-local" if address.is_link_local
                else "private" if address.is_private else "non-public")
        raise TargetRefused(f"{address} is a {kind} address; {PRIVATE_HINT}")


# 4xx answers worth another try: the receiver was slow (408), not ready (425), or asks us to
# slow down (429). Every other 4xx says the request itself is wrong: trying again cannot help.
RETRY_CLIENT_ERRORS = frozenset({408, 425, 429})


def verdict(status: int) -> Verdict:
    """What an HTTP answer means for a delivery: 2xx delivered; 5xx and 408/425/429 retried;
    redirects (not followed: the target is what was subscribed) and other 4xx fail for good."""
    if 200 <= status <= 299:
        return "delivered"
    if status >= 500 or status in RETRY_CLIENT_ERRORS:
        return "retry"
    return "failed"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    initial_seconds: float
    max_seconds: float

    def delay(self, attempts: int, jitter: float = 1.0, retry_after: float | None = None) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones: the initial delay
        doubled per attempt, capped, times ``jitter`` (0.5 to 1, so receivers coming back are
        not hit by every sender at once); at least the receiver's ``Retry-After``, within the
        cap."""
        base = min(self.initial_seconds * 2.0 ** max(attempts - 1, 0), self.max_seconds)
        wait = base * jitter
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_seconds))
        return wait

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts


def retry_after_seconds(value: str | None) -> float | None:
    """The seconds of a ``Retry-After: <seconds>`` header (an HTTP date is ignored)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def wanted(event_types: list[str] | None, event_type: str) -> bool:
    """Whether a subscription (None: every type) takes an event of this type."""
    return event_types is None or event_type in event_types


@dataclass(frozen=True, slots=True)
class DisablePolicy:
    after_failures: int
    after_seconds: float

    def reason(self, consecutive_failures: int, failing_since: datetime | None,
               now: datetime) -> str | None:
        """Why a subscription is disabled now, or None: too many deliveries in a row failed
        for good, or every attempt has failed for too long."""
        if consecutive_failures >= self.after_failures:
            return f"{consecutive_failures} deliveries in a row failed"
        failing = (now - failing_since).total_seconds() if failing_since is not None else 0.0
        if failing_since is not None and failing >= self.after_seconds:
            hours = self.after_seconds / 3600
            return f"every attempt failed for {hours:g} h (since {failing_since.isoformat()})"
        return None
