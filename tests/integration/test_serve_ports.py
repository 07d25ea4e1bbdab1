"""`mailsvc serve` on a port that is taken: one line naming the address and the setting, exit 69
(EX_UNAVAILABLE), no traceback, and no SMTP intake started when the API port is the taken one."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsvc.cli import EX_UNAVAILABLE, _serve
from mailsvc.ports import Listener, PortUnavailable, check_free
from tests.conftest import BCC, SALES, SUPPORT, base_settings
from tests.integration.test_serve import free_port


@pytest.fixture
def taken() -> Iterator[socket.socket]:
    """A port held by another program: bound and listening, no SO_REUSEPORT."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def _refusal(port: int, setting: str) -> str:
    return f"cannot listen on 127.0.0.1:{port} ({setting}): address already in use"


def _nobody_listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


@pytest.mark.parametrize("mode", ["supervised", "single"])
@pytest.mark.parametrize("which", ["smtp", "api", "lmtp"])
def test_a_taken_port_is_one_line_and_exit_69(
    sqlite_url: str, taken: socket.socket, which: str, mode: str
) -> None:
    port = int(taken.getsockname()[1])
    other = free_port()
    smtp_port, api_port = (port, other) if which == "smtp" else (other, port)
    lmtp_port = None
    if which == "lmtp":
        smtp_port, api_port, lmtp_port = other, free_port(), port
    # supervised: the default (accept and decide workers); single: one process deciding inside
    process = _start(sqlite_url, smtp_port, api_port, decide_workers=mode == "supervised",
                     lmtp_port=lmtp_port)
    _, stderr = process.communicate(timeout=120)
    text = stderr.decode()
    setting = {"smtp": "MAILSVC_SMTP_PORT", "api": "MAILSVC_API_PORT",
               "lmtp": "MAILSVC_LMTP_PORT"}[which]
    assert process.returncode == EX_UNAVAILABLE, text
    assert text.strip().splitlines() == [_refusal(port, setting)], text
    if which == "api":
        assert _nobody_listens(smtp_port), "SMTP must not accept when the API cannot start"


def _start(
    database_url: str, smtp_port: int, api_port: int, *, decide_workers: bool,
    lmtp_port: int | None = None, lmtp_socket: str | None = None,
) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ["PATH"], "MAILSVC_DATABASE_URL": database_url,
        "MAILSVC_SMTP_PORT": str(smtp_port), "MAILSVC_API_PORT": str(api_port),
        "MAILSVC_BCC_ADDRESS": BCC, "MAILSVC_SALES_ADDRESS": SALES,
        "MAILSVC_SUPPORT_ADDRESS": SUPPORT,
        "MAILSVC_DECIDE_WORKERS": "1" if decide_workers else "0",
    }
    if lmtp_port is not None:
        env["MAILSVC_LMTP_PORT"] = str(lmtp_port)
    if lmtp_socket is not None:
        env["MAILSVC_LMTP_SOCKET"] = lmtp_socket
    return subprocess.Popen([sys.executable, "-m", "mailsvc", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_the_check_binds_like_the_server_and_lets_go(taken: socket.socket) -> None:
    port = int(taken.getsockname()[1])
    with pytest.raises(PortUnavailable) as caught:
        check_free([Listener("127.0.0.1", port, "MAILSVC_API_PORT")])
    assert str(caught.value) == _refusal(port, "MAILSVC_API_PORT")
    free = free_port()
    check_free([Listener("127.0.0.1", free, "MAILSVC_SMTP_PORT", reuse_port=True)])
    check_free([Listener("127.0.0.1", free, "MAILSVC_SMTP_PORT", reuse_port=True)])  # let go


def test_ipv6_addresses_are_bracketed() -> None:
    refusal = Listener("::1", 25, "MAILSVC_SMTP_PORT").refusal(OSError(13, "Permission denied"))
    assert refusal == "cannot listen on [::1]:25 (MAILSVC_SMTP_PORT): permission denied"


async def test_inside_a_worker_the_api_port_is_bound_before_smtp_accepts(
    sqlite_url: str, taken: socket.socket
) -> None:
    """Past the start-up check (another program took the API port since): the worker still stops
    before its SMTP intake listens."""
    smtp_port, api_port = free_port(), int(taken.getsockname()[1])
    settings = base_settings(sqlite_url, smtp_port=smtp_port, api_port=api_port)
    with pytest.raises(PortUnavailable, match="MAILSVC_API_PORT"):
        await asyncio.wait_for(_serve(settings, decide_here=True), 120)
    assert _nobody_listens(smtp_port)


def test_a_port_shared_on_purpose_is_not_refused() -> None:
    """MAILSVC_SMTP_REUSE_PORT: another process on the host holds the SMTP port the same way."""
    from mailsvc.ports import serve_listeners

    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = int(other.getsockname()[1])
        settings = base_settings("sqlite+aiosqlite:///unused.db", smtp_port=port,
                                 smtp_reuse_port=True, api_enabled=False)
        check_free(serve_listeners(settings.api, settings.smtp, shared_smtp=False))
        settings = settings.model_copy(update={"smtp_reuse_port": False})
        with pytest.raises(PortUnavailable, match="MAILSVC_SMTP_PORT"):
            check_free(serve_listeners(settings.api, settings.smtp, shared_smtp=False))


@pytest.mark.parametrize("mode", ["supervised", "single"])
def test_a_socket_a_live_server_holds_is_one_line_and_exit_69(sqlite_url: str, mode: str) -> None:
    folder = Path(tempfile.mkdtemp(prefix="mailsvc-lmtp-"))
    path = folder / "lmtp.sock"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
            live.bind(str(path))
            live.listen()
            process = _start(sqlite_url, free_port(), free_port(),
                             decide_workers=mode == "supervised", lmtp_socket=str(path))
            _, stderr = process.communicate(timeout=120)
            text = stderr.decode()
            assert process.returncode == EX_UNAVAILABLE, text
            assert text.strip().splitlines() == [
                f"cannot listen on {path} (MAILSVC_LMTP_SOCKET): another server listens on it"
            ], text
            assert path.exists()  # still the other server's
    finally:
        shutil.rmtree(folder, ignore_errors=True)
