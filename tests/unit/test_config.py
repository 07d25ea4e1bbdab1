"""Settings from MAILSVC_* variables: defaults, lists, and clear errors for wrong values."""

from __future__ import annotations

import pytest

from mailsvc.config import load_settings
from mailsvc.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MAILSVC_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_embedded_setup() -> None:
    settings = load_settings(_env_file=None)
    assert settings.database_url == "sqlite+aiosqlite:///./mailsvc.db"
    assert settings.amqp_url is None
    assert (settings.smtp_host, settings.smtp_port) == ("127.0.0.1", 8025)
    assert (settings.api_host, settings.api_port) == ("127.0.0.1", 8080)


def test_intake_addresses_take_several_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILSVC_BCC_ADDRESS", "BCC@crm.example, smart@crm.example")
    monkeypatch.setenv("MAILSVC_SUPPORT_ADDRESS", "help@crm.example")
    settings = load_settings(_env_file=None)
    assert settings.bcc_address == ("bcc@crm.example", "smart@crm.example")
    assert settings.intake_roles["smart@crm.example"] == "bcc"
    assert settings.intake_roles["help@crm.example"] == "support"


def test_lmtp_is_off_until_a_port_or_socket_is_set_and_the_mode_is_octal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings(_env_file=None)
    assert (settings.lmtp_port, settings.lmtp_socket, settings.lmtp_socket_mode) == (
        None, None, 0o660)
    monkeypatch.setenv("MAILSVC_LMTP_PORT", "8024")
    monkeypatch.setenv("MAILSVC_LMTP_SOCKET", "/run/mailsvc/lmtp.sock")
    monkeypatch.setenv("MAILSVC_LMTP_SOCKET_MODE", "0666")
    settings = load_settings(_env_file=None)
    assert (settings.lmtp_port, str(settings.lmtp_socket), settings.lmtp_socket_mode) == (
        8024, "/run/mailsvc/lmtp.sock", 0o666)


def test_postgres_url_gets_the_async_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILSVC_DATABASE_URL", "postgresql://app@db/crm")
    assert load_settings(_env_file=None).database_url == "postgresql+asyncpg://app@db/crm"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MAILSVC_SMTP_PORT", "seventy", "MAILSVC_SMTP_PORT"),
        ("MAILSVC_SMTP_PORT", "70000", "MAILSVC_SMTP_PORT"),
        ("MAILSVC_DATABASE_URL", "mysql://x/y", "MAILSVC_DATABASE_URL"),
        ("MAILSVC_BCC_ADDRESS", "not-an-address", "not an e-mail address"),
        ("MAILSVC_SALES_ADDRESS", "bcc@mailsvc.localhost", "both the bcc and the sales address"),
        ("MAILSVC_TICKET_PREFIX", "opp", "must differ"),
        ("MAILSVC_OPPORTUNITY_PREFIX", "1X", "MAILSVC_OPPORTUNITY_PREFIX"),
        ("MAILSVC_MAX_MESSAGE_BYTES", "10", "MAILSVC_MAX_MESSAGE_BYTES"),
        ("MAILSVC_LMTP_PORT", "70000", "MAILSVC_LMTP_PORT"),
        ("MAILSVC_LMTP_SOCKET_MODE", "0968", "not an octal file mode"),
        ("MAILSVC_LMTP_SOCKET_MODE", "1777", "MAILSVC_LMTP_SOCKET_MODE"),
    ],
)
def test_wrong_values_fail_with_a_message_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=message):
        load_settings(_env_file=None)
