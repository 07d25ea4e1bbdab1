"""The listening ports of `mailsvc serve`, checked before anything starts accepting.

A port that is taken (or a host that is not on this machine, or a port below 1024 without the
right) must stop the start with one line naming the address and the setting, never a traceback,
and before any intake answers: a half-started service that takes mail over SMTP while its API
could not start is worse than one that does not start at all. ``check_free`` binds every listener
the way the server will (SO_REUSEADDR; SO_REUSEPORT for the shared SMTP port) and lets go again;
``PortUnavailable`` carries the one line. A unix socket (the LMTP intake's
``MAILSVC_LMTP_SOCKET``) is checked the same way: its folder must be there and writable, and no
live server may hold the path; a socket file left behind by a process that is gone is replaced.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

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
    """Every TCP address `mailsvc serve` listens on: the API first (it is checked before SMTP
    accepts), then SMTP and LMTP (shared through SO_REUSEPORT by the workers when
    ``shared_smtp``, or with other processes on the host when MAILSVC_SMTP_REUSE_PORT says so)."""
    found = [api_listener(api)] if api.enabled else []
    shared = shared_smtp or smtp.reuse_port
    found.append(Listener(smtp.host, smtp.port, "MAILSVC_SMTP_PORT", reuse_port=shared))
    if smtp.lmtp_port is not None:
        found.append(Listener(smtp.lmtp_host, smtp.lmtp_port, "MAILSVC_LMTP_PORT",
                              reuse_port=shared))
    return found


# ---------------------------------------------------------------- unix sockets

SOCKET_SETTING = "MAILSVC_LMTP_SOCKET"


def socket_refusal(path: Path, reason: str) -> str:
    return f"cannot listen on {path} ({SOCKET_SETTING}): {reason}"


def _reason(exc: OSError) -> str:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return f"{reason[:1].lower()}{reason[1:]}"


def _live(path: Path) -> bool:
    """A server accepts connections on the socket at ``path`` (else it is stale)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def socket_problem(path: Path) -> str | None:
    """Why a unix socket cannot be made at ``path`` (the one line), or None when it can: the
    folder exists and is writable, and nothing is there or only a stale socket."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        found = None
    except OSError as exc:
        return socket_refusal(path, _reason(exc))
    if found is not None and not stat.S_ISSOCK(found.st_mode):
        return socket_refusal(path, "a file that is not a socket is in the way")
    if found is not None and _live(path):
        return socket_refusal(path, "another server listens on it")
    folder = path.parent
    if not folder.is_dir():
        return socket_refusal(path, f"no such folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        return socket_refusal(path, f"permission denied in {folder}")
    return None


def check_socket(path: Path) -> None:
    """``PortUnavailable`` when no socket can be made at ``path``; nothing is changed."""
    problem = socket_problem(path)
    if problem is not None:
        raise PortUnavailable(problem)


def bind_unix(path: Path, mode: int) -> socket.socket:
    """A listening unix socket at ``path`` with file mode ``mode``, replacing a stale socket
    file (a live server's is never taken); ``PortUnavailable`` with the one line otherwise."""
    check_socket(path)
    try:
        path.unlink(missing_ok=True)  # stale: checked above
    except OSError as exc:
        raise PortUnavailable(socket_refusal(path, _reason(exc))) from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # Before listen(): no client can connect while the file has the umask's mode.
        os.chmod(path, mode)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise PortUnavailable(socket_refusal(path, _reason(exc))) from None
    return sock


def remove_socket(path: Path, inode: int) -> None:
    """Remove the socket file at ``path`` if it is still ours (not one a newer process made)."""
    try:
        if os.lstat(path).st_ino == inode:
            path.unlink()
    except OSError:
        pass
