"""The listening ports of `mailsvc serve`, checked before anything starts accepting.

A port that is taken (or a host that is not on this machine, or a port below 1024 without the
right) must stop the start with one line naming the address and the setting, never a traceback,
and before any intake answers: a half-started service that takes mail over SMTP while its API
could not start is worse than one that does not start at all. ``check_free`` binds every listener
the way the server will (SO_REUSEADDR; SO_REUSEPORT for the shared SMTP port) and lets go again;
``PortUnavailable`` carries the one line.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from mailsvc.config import ApiSettings, SmtpSettings
from mailsvc.errors import MailsvcError


class PortUnavailable(MailsvcError):
    """A listening address could not be bound; the message names it and its setting."""


@dataclass(frozen=True, slots=True)
class Listener:
    """One address `mailsvc serve` listens on, and the setting that chose its port."""

    host: str
    port: int
    setting: str
    reuse_port: bool = False

    def refusal(self, exc: OSError) -> str:
        """The one line an operator reads: where, which setting, why."""
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (f"cannot listen on {host}:{self.port} ({self.setting}): "
                f"{reason[:1].lower()}{reason[1:]}")


def _addresses(listener: Listener) -> list[tuple[int, tuple[str, int] | tuple[str, int, int, int]]]:
    """(family, address) pairs the host resolves to, as asyncio's create_server binds them."""
    infos = socket.getaddrinfo(listener.host or None, listener.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    seen: list[tuple[int, tuple[str, int] | tuple[str, int, int, int]]] = []
    for family, _type, _proto, _name, address in infos:
        if (family, address) not in seen and family in (socket.AF_INET, socket.AF_INET6):
            seen.append((family, address))  # type: ignore[arg-type]
    return seen


def check_free(listeners: list[Listener]) -> None:
    """Bind each listener and let go again; ``PortUnavailable`` for the first that fails.

    Port 0 (any free port) is never taken, so it is not checked."""
    for listener in listeners:
        if listener.port == 0:
            continue
        try:
            addresses = _addresses(listener)
        except OSError as exc:  # a host name that does not resolve
            raise PortUnavailable(listener.refusal(exc)) from None
        for family, address in addresses:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if listener.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(address)
                except OSError as exc:
                    raise PortUnavailable(listener.refusal(exc)) from None


def bind_listening(listener: Listener) -> list[socket.socket]:
    """Bind and listen on every address of ``listener`` (the API binds before SMTP starts, then
    hands the sockets to uvicorn); ``PortUnavailable`` when one is taken."""
    sockets: list[socket.socket] = []
    try:
        for family, address in _addresses(listener):
            # IPPROTO_TCP said explicitly: asyncio sets TCP_NODELAY on the accepted connections
            # only when the protocol is TCP by number; with 0, every answer whose body is a
            # second write waits ~40 ms for the client's delayed ACK.
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(2048)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise PortUnavailable(listener.refusal(exc)) from None
    return sockets


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def api_bind_host(api: ApiSettings) -> str:
    """Where the API listens: its host, but loopback only while no API key is configured (an
    open API must not be reachable from elsewhere)."""
    if not api.keys and api.host not in LOOPBACK_HOSTS:
        return "127.0.0.1"
    return api.host


def api_listener(api: ApiSettings) -> Listener:
    return Listener(api_bind_host(api), api.port, "MAILSVC_API_PORT")


def serve_listeners(api: ApiSettings, smtp: SmtpSettings, *, shared_smtp: bool) -> list[Listener]:
    """Every address `mailsvc serve` listens on: the API first (it is checked before SMTP
    accepts), then SMTP (shared through SO_REUSEPORT by the workers when ``shared_smtp``, or with
    other processes on the host when MAILSVC_SMTP_REUSE_PORT says so)."""
    found = [api_listener(api)] if api.enabled else []
    found.append(Listener(smtp.host, smtp.port, "MAILSVC_SMTP_PORT",
                          reuse_port=shared_smtp or smtp.reuse_port))
    return found
