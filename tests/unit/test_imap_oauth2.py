"""OAuth2 for IMAP mailboxes: settings, token requests and answers, when to renew (pure code)."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailsvc.config import ImapOAuth2, load_settings
from mailsvc.errors import ConfigError
from mailsvc.ingest.oauth2 import (
    AccessToken,
    TokenError,
    grant_form,
    needs_renewal,
    parse_token_reply,
    renew_at,
    service_account_assertion,
)

APP = {"provider": "microsoft", "grant": "client_credentials", "tenant": "contoso.example",
       "client_id": "app", "client_secret": "s"}


def oauth2(**values: Any) -> ImapOAuth2:
    return ImapOAuth2.model_validate(values)


def test_provider_defaults_for_token_url_and_scope() -> None:
    app = oauth2(**APP)
    assert app.effective_token_url() == \
        "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token"
    assert app.effective_scope == "https://outlook.office365.com/.default"
    gmail = oauth2(provider="google", grant="refresh_token", client_id="c", refresh_token="r")
    assert gmail.effective_token_url() == "https://oauth2.googleapis.com/token"
    assert gmail.effective_scope == "https://mail.google.com/"
    assert "'s'" not in repr(app) and "'r'" not in repr(gmail)


@pytest.mark.parametrize(("values", "complaint"), [
    ({**APP, "client_secret": None}, "needs client_secret"),
    ({**APP, "client_secret_env": "X_UNSET_SECRET"}, "names X_UNSET_SECRET, which is not set"),
    ({**APP, "tenant": None}, "provider microsoft needs tenant"),
    ({**APP, "token_url": "http://login.example/token"}, "must be an https URL"),
    ({**APP, "provider": "google"}, "Google has no client-credentials grant"),
    ({"provider": "google", "grant": "refresh_token", "client_id": "c"}, "needs refresh_token"),
    ({"provider": "google", "grant": "service_account"}, "needs service_account_file"),
    ({"provider": "other", "grant": "client_credentials", "client_id": "c",
      "client_secret": "s", "token_url": "https://idp.example/token"}, "needs token_url and scope"),
])
def test_inconsistent_oauth2_settings_are_named(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        oauth2(**values)


def test_a_mailbox_takes_a_password_or_oauth2_not_both() -> None:
    both = {"name": "a", "host": "h", "username": "u", "password": "p", "oauth2": APP}
    with pytest.raises(ConfigError, match="set exactly one of password, password_file, oauth2"):
        load_settings(_env_file=None, imap_mailboxes=[both])
    [mailbox] = load_settings(_env_file=None, imap_mailboxes=[
        {"name": "a", "host": "h", "username": "u", "oauth2": APP}]).imap_mailboxes
    assert mailbox.oauth2 is not None and mailbox.oauth2.client_id == "app"


def test_grant_forms() -> None:
    assert grant_form(oauth2(**APP), client_secret="s", refresh_token=None, assertion=None) == {
        "grant_type": "client_credentials", "scope": "https://outlook.office365.com/.default",
        "client_id": "app", "client_secret": "s"}
    public = oauth2(provider="microsoft", grant="refresh_token", tenant="common", client_id="d",
                    refresh_token="r")
    assert grant_form(public, client_secret=None, refresh_token="r2", assertion=None) == {
        "grant_type": "refresh_token", "refresh_token": "r2", "client_id": "d",
        "scope": "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"}


def test_token_answers() -> None:
    reply = parse_token_reply(200, b'{"access_token": "tok-9", "expires_in": 3599}', now=1000.0)
    token = reply.token
    assert (token.value, token.expires_at, reply.refresh_token) == ("tok-9", 4599.0, None)
    assert "tok-9" not in repr(reply)
    rotated = parse_token_reply(200, b'{"access_token": "a", "refresh_token": "r2"}', now=0.0)
    assert rotated.refresh_token == "r2" and rotated.token.expires_at == 3600.0
    with pytest.raises(TokenError, match="HTTP 400, invalid_grant: AADSTS70000: expired"):
        parse_token_reply(400, b'{"error": "invalid_grant", "error_description": '
                               b'"AADSTS70000: expired\\r\\nTrace ID: 1"}', now=0.0)
    with pytest.raises(TokenError, match="HTTP 502, not a JSON object"):
        parse_token_reply(502, b"<html>Bad gateway</html>", now=0.0)
    with pytest.raises(TokenError, match="no access_token"):
        parse_token_reply(200, b'{"token_type": "Bearer"}', now=0.0)


def test_renewal_comes_before_expiry_but_not_before_half_the_life() -> None:
    hour = AccessToken("t", issued_at=0.0, expires_at=3600.0)
    assert renew_at(hour, margin=300) == 3300.0
    short = AccessToken("t", issued_at=0.0, expires_at=200.0)
    assert renew_at(short, margin=300) == 100.0
    assert needs_renewal(None, now=0.0, margin=300)
    assert not needs_renewal(hour, now=3299.0, margin=300)
    assert needs_renewal(hour, now=3300.0, margin=300)


def test_the_service_account_assertion_is_signed_for_the_mailbox_user() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    account = {"client_email": "crm@p.iam.gserviceaccount.com", "private_key": pem,
               "private_key_id": "k1"}
    assertion = service_account_assertion(account, "sales@example.com",
                                          "https://mail.google.com/", "https://t.example/token",
                                          now=1_700_000_000)
    claims = jwt.decode(assertion, key.public_key(), algorithms=["RS256"],
                        audience="https://t.example/token",
                        options={"verify_exp": False, "verify_iat": False})
    assert claims == {"iss": "crm@p.iam.gserviceaccount.com", "sub": "sales@example.com",
                      "scope": "https://mail.google.com/", "aud": "https://t.example/token",
                      "iat": 1_700_000_000, "exp": 1_700_003_600}
    assert jwt.get_unverified_header(assertion)["kid"] == "k1"
