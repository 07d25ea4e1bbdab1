"""The outbound relay URL (MAILSVC_OUTBOUND_SMTP_URL): pure parsing, shared by the settings
and the outbound sender."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

StartTls = Literal["required", "opportunistic", "none"]


@dataclass(frozen=True, slots=True)
class RelayTarget:
    host: str
    port: int
    implicit_tls: bool
    starttls: StartTls
    username: str | None = None
    password: str | None = None

    def describe(self) -> str:
        """The target without credentials, for logs."""
        scheme = "smtps" if self.implicit_tls else "smtp"
        return f"{scheme}://{self.host}:{self.port}"


def parse_relay_url(url: str) -> RelayTarget:
    """``smtp://[user:pass@]host[:port][?starttls=required|opportunistic|none]`` or
    ``smtps://...``; raises ValueError saying what is wrong."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError("use smtp://host:port or smtps://host:port")
    if not parts.hostname:
        raise ValueError("the URL names no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port is not a number from 1 to 65535") from None
    query = parse_qs(parts.query)
    unknown = set(query) - {"starttls"}
    if unknown:
        raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    starttls = query.get("starttls", ["none"])[-1].lower()
    if starttls not in ("required", "opportunistic", "none"):
        raise ValueError("starttls must be required, opportunistic or none")
    implicit = parts.scheme == "smtps"
    if implicit and starttls != "none":
        raise ValueError("smtps:// is TLS from the start; starttls does not apply")
    return RelayTarget(
        host=parts.hostname,
        port=port or (465 if implicit else 25),
        implicit_tls=implicit,
        starttls=starttls,  # type: ignore[arg-type]
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )
