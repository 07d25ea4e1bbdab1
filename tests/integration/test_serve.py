"""`mailsvc serve` as an operator runs it: a real process, real ports, a clean stop on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import BCC, SALES, SUPPORT

EXAMPLES = Path(__file__).parents[2] / "examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} after {timeout}s")


def start_serve(
    database_url: str, smtp_port: int, api_port: int, *args: str
) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ["PATH"],
        "MAILSVC_DATABASE_URL": database_url,
        "MAILSVC_SMTP_PORT": str(smtp_port),
        "MAILSVC_API_PORT": str(api_port),
        "MAILSVC_BCC_ADDRESS": BCC,
        "MAILSVC_SALES_ADDRESS": SALES,
        "MAILSVC_SUPPORT_ADDRESS": SUPPORT,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "mailsvc", "serve", *args], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def test_serve_takes_mail_answers_health_and_stops_cleanly_on_sigterm(database_url: str) -> None:
    smtp_port, api_port = free_port(), free_port()
    process = start_serve(database_url, smtp_port, api_port)
    try:
        wait_until_listening(smtp_port, process)
        wait_until_listening(api_port, process)
        with smtplib.SMTP("127.0.0.1", smtp_port) as smtp:
            code, _ = smtp.ehlo()
            assert code == 250
            refused = smtp.sendmail(
                "anna@outside.example", [BCC], (EXAMPLES / "bcc-opportunity.eml").read_bytes()
            )
            assert refused == {}
        assert httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=60).json() == {
            "status": "ok"
        }
        ready = httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=60)
        assert ready.status_code == 200
        assert ready.json()["checks"]["database"] == "ok"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr
    assert b"stopped" in stderr


def test_a_burst_of_stop_signals_still_stops_serve(sqlite_url: str) -> None:
    """Signals that come together (a wrapper forwarding the SIGTERM the supervisor got as well,
    Ctrl-C pressed twice) must not hang the stop: a handler taking a lock deadlocked it."""
    smtp_port, api_port = free_port(), free_port()
    process = start_serve(sqlite_url, smtp_port, api_port)
    try:
        wait_until_listening(smtp_port, process)
        until = time.monotonic() + 3
        n = 0
        while time.monotonic() < until and process.poll() is None:  # for a while, back to back
            process.send_signal(signal.SIGINT if n % 2 else signal.SIGTERM)
            n += 1
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # Stopped, not hung; a signal that comes after the stop may end the exiting process itself.
    assert b"all workers stopped" in stderr, stderr.decode()


def test_several_workers_share_the_port_and_store_each_mail_once(database_url: str) -> None:
    smtp_port, api_port = free_port(), free_port()
    process = start_serve(database_url, smtp_port, api_port, "--workers", "2")
    template = (EXAMPLES / "bcc-opportunity.eml").read_bytes()
    try:
        wait_until_listening(smtp_port, process)
        wait_until_listening(api_port, process)
        for n in range(30):  # a connection each: the kernel spreads them over the workers
            mail = template.replace(b"quote-followup-1@", f"multi-{n}@".encode())
            with smtplib.SMTP("127.0.0.1", smtp_port) as smtp:
                assert smtp.sendmail("anna@outside.example", [BCC], mail) == {}
        with smtplib.SMTP("127.0.0.1", smtp_port) as smtp:  # the same mail again: a duplicate
            smtp.sendmail(
                "anna@outside.example", [BCC], template.replace(b"quote-followup-1@", b"multi-0@")
            )
        assert httpx.get(f"http://127.0.0.1:{api_port}/healthz").json() == {"status": "ok"}
        deadline = time.monotonic() + 60  # accepted at 250; the decide workers follow
        while True:
            emails = httpx.get(f"http://127.0.0.1:{api_port}/api/v1/emails?limit=100",
                               timeout=60).json()
            if emails["total"] >= 30 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert emails["total"] == 30
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert stderr.count(b" mailsvc stopped") == 2  # the two accept workers
    assert b"decide worker stopped" in stderr
    assert b"Traceback" not in stderr
    # Both accept workers took mail: each logs the groups it accepted, naming its process.
    pids = set(re.findall(rb"\[(\d+)\] mailsvc\.ingest\.pipeline accepted", stderr))
    assert len(pids) == 2


def _children(pid: int) -> set[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return {int(p) for p in found.stdout.split()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"  # a zombie is gone too


def test_workers_stop_when_the_supervisor_is_killed(sqlite_url: str) -> None:
    """A SIGKILLed supervisor cannot stop its workers; they notice and stop by themselves."""
    smtp_port, api_port = free_port(), free_port()
    process = start_serve(sqlite_url, smtp_port, api_port)
    wait_until_listening(smtp_port, process)
    workers = _children(process.pid)
    assert workers, "serve runs its accept and decide workers as child processes"
    process.kill()
    process.wait(timeout=60)
    deadline = time.monotonic() + 120
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [w for w in workers if _alive(w)], "workers outlived their supervisor"


# A supervised process whose stop never ends (SIGTERM ignored, as a stop stuck on a dead
# database would be), under a parent that prints its pid and waits.
STUCK_WORKER = """
import signal, time
from mailsvc.supervisor import exit_with_parent
exit_with_parent(interval=0.1, grace=1.0)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(3600)
"""
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE)
child.stdout.readline()
print(child.pid, flush=True)
child.wait()
"""


def test_a_worker_whose_stop_hangs_ends_after_its_supervisor_is_gone() -> None:
    """With no supervisor left to SIGKILL it, a worker whose stop does not end exits by itself
    once the grace period is over."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, STUCK_WORKER],
                              stdout=subprocess.PIPE)
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    assert _alive(worker)
    parent.kill()
    parent.wait(timeout=60)
    deadline = time.monotonic() + 120
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(worker), "a worker outlived its supervisor"
