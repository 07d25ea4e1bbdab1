"""`mailsvc serve` with IMAP mailboxes configured: the pollers run, and stop cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mailsvc.config import load_settings
from mailsvc.errors import ConfigError
from mailsvc.ingest.imap import backoff_delay
from tests.conftest import BCC, SALES, SUPPORT
from tests.integration.test_imap_intake import message
from tests.support.dovecot import DEADLINE, PASSWORD, Dovecot, free_port, running_dovecot
from tests.support.oauth_server import running_oauth_server

pytestmark = pytest.mark.imap


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with running_dovecot() as server:
        yield server


def test_serve_polls_the_configured_mailboxes_and_stops_on_sigterm(
    dovecot: Dovecot, sqlite_url: str, tmp_path: Path,
) -> None:
    dovecot.append(message(1))
    config = tmp_path / "mailboxes.toml"
    config.write_text(f"""
[[mailbox]]
name = "support"
host = "127.0.0.1"
port = {dovecot.tls_port}
tls = "ssl"
ca_file = "{dovecot.ca_file}"
username = "bob"
password_file = "{tmp_path / 'bob.secret'}"
role = "support"
processed = "move"
idle_timeout = 1740
""")
    (tmp_path / "bob.secret").write_text(PASSWORD + "\n")
    dovecot.append(message(2), user="bob")
    api_port = free_port()
    env = {
        "PATH": os.environ["PATH"], "MAILSVC_DATABASE_URL": sqlite_url,
        "MAILSVC_SMTP_PORT": str(free_port()), "MAILSVC_API_PORT": str(api_port),
        "MAILSVC_BCC_ADDRESS": BCC, "MAILSVC_SALES_ADDRESS": SALES,
        "MAILSVC_SUPPORT_ADDRESS": SUPPORT, "MAILSVC_IMAP_CONFIG": str(config),
        "MAILSVC_IMAP_MAILBOXES": json.dumps([{
            "name": "bcc", "host": "127.0.0.1", "port": dovecot.plain_port, "tls": "none",
            "username": "alice", "password": PASSWORD, "idle_timeout": 1740,
        }]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "mailsvc", "serve"], env=env, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while not (dovecot.folder_flags("alice").get(b"<imap-1@mailsvc.example>") == ["\\Seen"]
                   and dovecot.folder_flags("bob", "Processed")):
            assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "mailboxes not processed"
            time.sleep(0.05)
        # /readyz reports each mailbox (without making readiness depend on it).
        ready = httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=30).json()
        mailboxes = ready["checks"]["mailboxes"]
        assert mailboxes.keys() == {"bcc", "support"}
        assert mailboxes["bcc"]["state"] == "connected"
        assert mailboxes["bcc"]["messages"] == {"lead_created": 1}  # no CRM data: a new lead
        assert mailboxes["support"]["last_error"] is None
    finally:
        process.send_signal(signal.SIGTERM)
        # Pollers in IDLE must not hold up the shutdown: the IDLE lasts 1740 s, this far less.
        _, stderr = process.communicate(timeout=DEADLINE)
    assert process.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr
    assert b"mailbox support: connected" in stderr and b"mailbox bcc: connected" in stderr
    assert PASSWORD.encode() not in stderr


@pytest.mark.parametrize(("mailboxes", "complaint"), [
    ('[{"name": "a", "host": "h", "username": "u"}]', "set exactly one of password"),
    ('[{"name": "a", "host": "h", "username": "u", "password": "p", "tls": "yes"}]',
     "MAILSVC_IMAP_MAILBOXES_0_TLS: Input should be 'ssl', 'starttls' or 'none'"),
    ('[{"name": "a", "host": "h", "username": "u", "password": "p", "pasword": "p"}]',
     "MAILSVC_IMAP_MAILBOXES_0_PASWORD: Extra inputs are not permitted"),
    ('[{"name": "a", "host": "h", "username": "u", "password": "p"},'
     ' {"name": "a", "host": "h", "username": "v", "password": "p"}]', "names must be unique"),
    ('[{"name": "a", "host": "h", "username": "u", "password": "p", "processed": "move",'
     ' "processed_folder": "INBOX"}]', "processed_folder must differ from folder"),
    ("{not json", "error parsing value for field \"imap_mailboxes\""),
])
def test_a_wrong_mailbox_setting_is_named_in_the_error(
    mailboxes: str, complaint: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILSVC_IMAP_MAILBOXES", mailboxes)
    with pytest.raises(ConfigError) as error:
        load_settings(_env_file=None)
    assert complaint in str(error.value)


def test_mailboxes_come_from_a_toml_file_with_defaults(tmp_path: Path) -> None:
    config = tmp_path / "mailboxes.toml"
    config.write_text('[[mailbox]]\nname = "sales"\nhost = "imap.example.com"\n'
                      'username = "sales@example.com"\npassword = "app-password"\nrole = "sales"\n')
    [mailbox] = load_settings(_env_file=None, imap_config=str(config)).imap_mailboxes
    assert (mailbox.effective_port, mailbox.tls, mailbox.verify, mailbox.folder) == \
        (993, "ssl", True, "INBOX")
    assert (mailbox.processed, mailbox.quarantine_folder, mailbox.idle) == \
        ("seen", "Quarantine", True)
    assert "app-password" not in repr(mailbox)
    with pytest.raises(ConfigError, match="cannot read the IMAP mailbox file"):
        load_settings(_env_file=None, imap_config=str(tmp_path / "missing.toml"))


def test_reconnect_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    for attempt, (low, high) in enumerate([(0.5, 1), (1, 2), (2, 4), (4, 8), (150, 300)]):
        delays = {backoff_delay(attempt if attempt < 4 else 20, 1.0, 300.0) for _ in range(50)}
        assert all(low <= d <= high for d in delays)
        assert len(delays) > 1, "jittered"


def test_a_failing_oauth2_token_shows_in_readyz_and_metrics_and_serve_goes_on(
    sqlite_url: str, tmp_path: Path,
) -> None:
    with running_oauth_server() as oauth, running_dovecot(
        oauth2_introspection_url=oauth.introspection_url,
    ) as dovecot:
        oauth.clients["crm-app"] = "the-real-secret"
        oauth.app_mailboxes["crm-app"] = "alice"
        dovecot.append(message(1), user="bob")
        api_port = free_port()
        env = {
            "PATH": os.environ["PATH"], "MAILSVC_DATABASE_URL": sqlite_url,
            "MAILSVC_SMTP_PORT": str(free_port()), "MAILSVC_API_PORT": str(api_port),
            "MAILSVC_BCC_ADDRESS": BCC, "MAILSVC_SALES_ADDRESS": SALES,
            "MAILSVC_SUPPORT_ADDRESS": SUPPORT, "M365_SECRET": "a-wrong-secret",
            "MAILSVC_IMAP_MAILBOXES": json.dumps([{
                "name": "m365", "host": "127.0.0.1", "port": dovecot.plain_port, "tls": "none",
                "username": "alice", "backoff_initial": 0.2, "backoff_max": 1,
                "oauth2": {"provider": "microsoft", "grant": "client_credentials",
                           "tenant": "contoso.example", "token_url": oauth.token_url,
                           "client_id": "crm-app", "client_secret_env": "M365_SECRET"},
            }, {
                "name": "bcc", "host": "127.0.0.1", "port": dovecot.plain_port, "tls": "none",
                "username": "bob", "password": PASSWORD,
            }]),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "mailsvc", "serve"], env=env, cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + DEADLINE
            while True:
                assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "no token failure reported"
                try:
                    ready = httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=30)
                    metrics = httpx.get(f"http://127.0.0.1:{api_port}/metrics", timeout=30).text
                except httpx.TransportError:
                    ready = None
                if ready is not None:
                    mailboxes = ready.json()["checks"]["mailboxes"]
                    if (mailboxes["m365"]["last_error"] and mailboxes["bcc"]["messages"]
                            and 'kind="token",mailbox="m365"' in metrics):
                        break
                time.sleep(0.2)
            assert ready.status_code == 200, "a mailbox's failure does not make serve unready"
            assert "invalid_client" in mailboxes["m365"]["last_error"]
            assert mailboxes["m365"]["state"] == "reconnecting"
            assert mailboxes["m365"]["auth"] == "oauth2 XOAUTH2"
            assert 'mailsvc_imap_connected{mailbox="bcc"} 1.0' in metrics
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=DEADLINE)
        assert process.returncode == 0, stderr.decode()
        assert b"Traceback" not in stderr
        assert b"mailbox m365: no OAuth2 token for alice from http://127.0.0.1:" in stderr
        assert b"a-wrong-secret" not in stderr and b"the-real-secret" not in stderr
