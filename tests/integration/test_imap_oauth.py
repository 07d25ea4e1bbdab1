"""OAuth2 IMAP (XOAUTH2, OAUTHBEARER) against a Dovecot that checks tokens at a local introspection
endpoint, with tokens from a local token endpoint playing Microsoft 365's and Google's."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import REGISTRY

from mailsvc.crmstore.models import Email
from tests.conftest import base_settings
from tests.integration.test_imap_intake import (
    at_least,
    mailbox,
    message,
    polling,
    until,
)
from tests.support.dovecot import Dovecot, free_port, running_dovecot
from tests.support.oauth_server import OAuthServer, running_oauth_server

pytestmark = pytest.mark.imap

APP_SECRET = "app-secret-Zq8v"
GOOGLE_SECRET = "google-secret-Kp3x"


@pytest.fixture
def oauth() -> Iterator[OAuthServer]:
    with running_oauth_server() as server:
        yield server


@pytest.fixture
def dovecot(oauth: OAuthServer) -> Iterator[Dovecot]:
    with running_dovecot(oauth2_introspection_url=oauth.introspection_url) as server:
        yield server


def oauth_mailbox(server: Dovecot, oauth2: dict[str, Any], name: str = "m365",
                  user: str = "alice", **overrides: Any) -> dict[str, Any]:
    values = mailbox(server, name, user, oauth2=oauth2, idle_timeout=1740, **overrides)
    del values["password"]
    return values


def secrets_in(text: str, oauth: OAuthServer, *more: str) -> list[str]:
    """Every secret and issued token that occurs in ``text``."""
    values = [*oauth.issued, *oauth.refresh_tokens, *more]
    return [value for value in values if value in text]


async def test_microsoft_365_app_with_client_credentials_logs_in_with_xoauth2(
    oauth: OAuthServer, dovecot: Dovecot, sqlite_url: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    oauth.clients["crm-app"] = APP_SECRET
    oauth.app_mailboxes["crm-app"] = "alice"
    (tmp_path / "app.secret").write_text(APP_SECRET + "\n")
    dovecot.append(message(1))
    settings = base_settings(sqlite_url, imap_mailboxes=[oauth_mailbox(dovecot, {
        "provider": "microsoft", "grant": "client_credentials", "tenant": "contoso.example",
        "token_url": oauth.token_url, "client_id": "crm-app",
        "client_secret_file": str(tmp_path / "app.secret"),
    })])
    caplog.set_level(logging.DEBUG)  # imapclient's protocol trace too
    async with polling(settings) as (services, [poller]):
        await until(at_least(services, Email, 1), what="mail stored")
        assert poller.last_error is None and poller.status()["auth"] == "oauth2 XOAUTH2"
    [grant] = oauth.grants("client_credentials")
    assert grant["scope"] == "https://outlook.office365.com/.default"
    assert grant["client_id"] == "crm-app"
    assert "method=XOAUTH2" in dovecot.log
    assert oauth.issued and not secrets_in(caplog.text, oauth, APP_SECRET)


async def test_microsoft_365_delegated_refresh_token_is_rotated_into_its_file(
    oauth: OAuthServer, dovecot: Dovecot, sqlite_url: str, tmp_path: Path,
) -> None:
    oauth.clients["desktop-app"] = None  # a public client: no secret
    oauth.refresh_tokens["rt-first"] = ("desktop-app", "alice")
    oauth.rotate_refresh_tokens = True
    oauth.expires_in = 4  # renewed after 2 s: max(expiry - margin, half its life)
    token_file = tmp_path / "alice.refresh"
    token_file.write_text("rt-first\n")
    dovecot.append(message(1))
    settings = base_settings(sqlite_url, imap_mailboxes=[oauth_mailbox(dovecot, {
        "provider": "microsoft", "grant": "refresh_token", "tenant": "common",
        "token_url": oauth.token_url, "client_id": "desktop-app",
        "refresh_token_file": str(token_file), "refresh_margin": 3,
    })])
    async with polling(settings) as (services, [poller]):
        await until(at_least(services, Email, 1), what="mail stored")

        async def renewed_twice() -> bool:
            return len(oauth.grants("refresh_token")) >= 3 and poller.connects >= 3

        await until(renewed_twice, what="tokens renewed, logged in again with each")
        assert poller.last_error is None
    used = [form["refresh_token"] for form in oauth.grants("refresh_token")]
    assert used[0] == "rt-first" and len(set(used)) == len(used), "each rotated one used next"
    saved = token_file.read_text().strip()
    assert saved in oauth.refresh_tokens and saved != "rt-first"
    assert token_file.stat().st_mode & 0o077 == 0, "readable by its owner only"
    assert oauth.grants("refresh_token")[0]["scope"] == \
        "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"


async def test_gmail_refresh_token_with_oauthbearer_and_the_secret_from_the_environment(
    oauth: OAuthServer, dovecot: Dovecot, sqlite_url: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    oauth.clients["123.apps.googleusercontent.com"] = GOOGLE_SECRET
    oauth.refresh_tokens["1//gmail-refresh"] = ("123.apps.googleusercontent.com", "bob")
    monkeypatch.setenv("GMAIL_CLIENT_SECRET", GOOGLE_SECRET)
    dovecot.append(message(1), user="bob")
    settings = base_settings(sqlite_url, imap_mailboxes=[oauth_mailbox(dovecot, {
        "provider": "google", "grant": "refresh_token", "mechanism": "OAUTHBEARER",
        "token_url": oauth.token_url, "client_id": "123.apps.googleusercontent.com",
        "client_secret_env": "GMAIL_CLIENT_SECRET", "refresh_token": "1//gmail-refresh",
    }, name="gmail", user="bob")])
    caplog.set_level(logging.DEBUG)
    async with polling(settings) as (services, [poller]):
        await until(at_least(services, Email, 1), what="mail stored")
        assert poller.last_error is None
    [grant] = oauth.grants("refresh_token")
    assert grant["scope"] == "https://mail.google.com/"
    assert grant["client_secret"] == GOOGLE_SECRET
    assert "method=OAUTHBEARER" in dovecot.log
    assert not secrets_in(caplog.text, oauth, GOOGLE_SECRET)


async def test_gmail_service_account_with_domain_wide_delegation_acts_as_the_mailbox_user(
    oauth: OAuthServer, dovecot: Dovecot, sqlite_url: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    oauth.service_accounts["crm@project.iam.gserviceaccount.com"] = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_file = tmp_path / "service-account.json"
    key_file.write_text(json.dumps({  # the shape of the JSON key Google hands out
        "type": "service_account", "project_id": "project", "private_key_id": "k1",
        "private_key": private_pem, "client_email": "crm@project.iam.gserviceaccount.com",
        "client_id": "1000", "token_uri": oauth.token_url,
    }))
    dovecot.append(message(1), user="bob")
    settings = base_settings(sqlite_url, imap_mailboxes=[oauth_mailbox(dovecot, {
        "provider": "google", "grant": "service_account",
        "service_account_file": str(key_file),
    }, name="workspace", user="bob")])
    caplog.set_level(logging.DEBUG)
    async with polling(settings) as (services, [poller]):
        await until(at_least(services, Email, 1), what="mail stored")
        assert poller.last_error is None
    [grant] = oauth.grants("urn:ietf:params:oauth:grant-type:jwt-bearer")
    assert [issued.user for issued in oauth.issued.values()] == ["bob"]
    assert not secrets_in(caplog.text, oauth, grant["assertion"], private_pem.splitlines()[1])


def errors(mailbox_name: str, kind: str) -> float:
    return REGISTRY.get_sample_value(
        "mailsvc_imap_errors_total", {"mailbox": mailbox_name, "kind": kind}) or 0.0


async def test_a_refused_token_is_a_mailbox_error_and_the_service_goes_on(
    oauth: OAuthServer, dovecot: Dovecot, sqlite_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    oauth.clients["crm-app"] = APP_SECRET
    oauth.app_mailboxes["crm-app"] = "alice"
    dovecot.append(message(1), user="bob")
    before = errors("wrong-secret", "token")
    settings = base_settings(sqlite_url, imap_mailboxes=[
        oauth_mailbox(dovecot, {
            "provider": "microsoft", "grant": "client_credentials", "tenant": "contoso.example",
            "token_url": oauth.token_url, "client_id": "crm-app",
            "client_secret": "not-" + APP_SECRET,
        }, name="wrong-secret"),
        mailbox(dovecot, "password", user="bob"),
    ])
    async with polling(settings) as (services, [broken, good]):
        await until(at_least(services, Email, 1), what="the other mailbox goes on")

        async def retried() -> bool:
            return errors("wrong-secret", "token") >= before + 2

        await until(retried, what="the token failure counted, and retried")
        status = broken.status()
        assert status["state"] == "reconnecting" and broken.connects == 0
        assert "no OAuth2 token for alice from http://127.0.0.1:" in status["last_error"]
        assert "invalid_client: AADSTS7000215: Invalid client secret provided." in \
            status["last_error"]
        assert good.last_error is None
    assert not secrets_in(caplog.text, oauth, APP_SECRET)


async def test_a_token_the_server_does_not_accept_is_a_login_error(
    oauth: OAuthServer, dovecot: Dovecot, sqlite_url: str,
) -> None:
    oauth.clients["crm-app"] = APP_SECRET
    oauth.app_mailboxes["crm-app"] = "alice"
    oauth.accept_tokens = False  # e.g. the app lacks the mailbox permission
    settings = base_settings(sqlite_url, imap_mailboxes=[oauth_mailbox(dovecot, {
        "provider": "other", "grant": "client_credentials", "scope": "imap",
        "token_url": oauth.token_url, "client_id": "crm-app", "client_secret": APP_SECRET,
    })])
    async with polling(settings) as (_, [poller]):
        async def refused() -> bool:
            return poller.last_error is not None and errors("m365", "login") > 0

        await until(refused, what="login refused")
        assert "login as alice (XOAUTH2 token) refused by 127.0.0.1:" in (poller.last_error or "")
        assert poller.tokens is not None


async def test_an_unreachable_token_endpoint_is_a_mailbox_error(
    dovecot: Dovecot, sqlite_url: str,
) -> None:
    settings = base_settings(sqlite_url, imap_mailboxes=[oauth_mailbox(dovecot, {
        "provider": "microsoft", "grant": "client_credentials", "tenant": "contoso.example",
        "token_url": f"http://127.0.0.1:{free_port()}/token", "client_id": "crm-app",
        "client_secret": APP_SECRET,
    })])
    async with polling(settings) as (_, [poller]):
        async def failed() -> bool:
            return poller.last_error is not None

        await until(failed, what="token failure")
        assert "cannot reach it: [Errno 111] Connection refused" in (poller.last_error or "")


def test_doctor_logs_in_to_an_oauth2_mailbox(
    oauth: OAuthServer, dovecot: Dovecot, sqlite_url: str,
) -> None:
    from mailsvc.doctor import check_imap

    oauth.clients["crm-app"] = APP_SECRET
    oauth.app_mailboxes["crm-app"] = "alice"
    app = {"provider": "microsoft", "grant": "client_credentials", "tenant": "contoso.example",
           "token_url": oauth.token_url, "client_id": "crm-app", "client_secret": APP_SECRET}
    good, wrong = base_settings(sqlite_url, imap_mailboxes=[
        oauth_mailbox(dovecot, app, name="good"),
        oauth_mailbox(dovecot, {**app, "client_secret": "wrong"}, name="wrong"),
    ]).imap_mailboxes
    assert check_imap(good).status == "ok"
    refused = check_imap(wrong)
    assert refused.status == "fail" and "invalid_client" in refused.detail
    assert APP_SECRET not in refused.detail
