"""Plus-addressing: splitting an extension off, and intake roles that know the extended form."""

from __future__ import annotations

import pytest

from mailsvc.config import Settings
from mailsvc.ingest.smtp import pick_role
from mailsvc.mail import Role, split_extension
from tests.conftest import base_settings


@pytest.mark.parametrize(
    ("address", "delimiters", "expected"),
    [
        ("bcc+OPP-12@crm.example", "+", ("bcc@crm.example", "opp-12")),
        ("Support+tck-7@CRM.example", "+", ("support@crm.example", "tck-7")),
        ("bcc@crm.example", "+", ("bcc@crm.example", None)),
        ("bcc+a+b@crm.example", "+", ("bcc@crm.example", "a+b")),
        ("bcc-OPP-12@crm.example", "+-", ("bcc@crm.example", "opp-12")),
        ("+OPP-12@crm.example", "+", ("+opp-12@crm.example", None)),
        ("bcc+OPP-12@crm.example", "", ("bcc+opp-12@crm.example", None)),
        ("no-at-sign", "+", ("no-at-sign", None)),
    ],
)
def test_split_extension(address: str, delimiters: str, expected: tuple[str, str | None]) -> None:
    assert split_extension(address, delimiters) == expected


def settings(**overrides: object) -> Settings:
    return base_settings("sqlite+aiosqlite:///x.db", **overrides)


def test_intake_roles_answer_for_extended_addresses() -> None:
    roles = settings().intake_roles
    assert roles.role_of("BCC+OPP-12@crm.example") == Role.BCC
    assert roles.role_of("support+anything@crm.example") == Role.SUPPORT
    assert roles.role_of("other+OPP-12@crm.example") is None
    assert "bcc+opp-12@crm.example" not in roles  # the mapping itself holds base addresses
    assert pick_role(["sales+OPP-1@crm.example", "bcc+OPP-1@crm.example"], roles) == Role.BCC
    assert settings(recipient_delimiter="").intake_roles.role_of("bcc+x@crm.example") is None


def test_record_addresses_are_on_the_first_address_of_the_role() -> None:
    configured = settings(bcc_address="bcc@crm.example,smart@crm.example")
    assert configured.record_address(Role.BCC, "OPP-12") == "bcc+OPP-12@crm.example"
    assert configured.record_address(Role.SUPPORT, "TCK-7") == "support+TCK-7@crm.example"
    assert settings(recipient_delimiter="-").record_address(Role.BCC, "OPP-1") == (
        "bcc-OPP-1@crm.example"
    )
    assert settings(recipient_delimiter="").record_address(Role.BCC, "OPP-1") is None


@pytest.mark.parametrize("bad", ["@", "a", "1", " ", "+@"])
def test_a_delimiter_must_not_be_part_of_an_address(bad: str) -> None:
    from mailsvc.errors import ConfigError

    with pytest.raises(ConfigError, match="MAILSVC_RECIPIENT_DELIMITER"):
        settings(recipient_delimiter=bad)
