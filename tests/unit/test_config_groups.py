"""The setting groups: every flat setting belongs to exactly one group and reads the same there."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest

from mailsvc.config import GROUPS, Settings, flat_name, load_settings
from mailsvc.mail import Role


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MAILSVC_"):
            monkeypatch.delenv(name)


def _placement() -> Counter[str]:
    return Counter(
        flat_name(field) for group in GROUPS.values() for field in dataclasses.fields(group)
    )


def test_every_setting_is_in_exactly_one_group() -> None:
    placed = _placement()
    settings = set(Settings.model_fields)
    missing = sorted(settings - set(placed))
    assert not missing, f"add these settings to a group in mailsvc/config.py: {missing}"
    assert not sorted(set(placed) - settings), "a group names a setting that does not exist"
    twice = sorted(name for name, count in placed.items() if count > 1)
    assert not twice, f"settings in more than one group: {twice}"


def test_each_group_is_an_attribute_of_the_settings() -> None:
    for name, group in GROUPS.items():
        assert isinstance(getattr(load_settings(_env_file=None), name), group)


CHANGED: dict[str, Any] = {
    "database_url": "postgresql://app@db/crm",
    "smtp_port": 2525,
    "api_keys": "k" * 32,
    "bcc_address": "Smart@crm.example",
    "internal_domains": "@Crm.Example",
    "trusted_networks": "10.0.0.0/8",
    "decide_workers": 3,
    "outbound_smtp_url": "smtp://relay.example:25",
    "log_level": "debug",
    "retention_days": 30,
    "ticket_assignees": {"Billing": ["Ann@crm.example"]},
}


@pytest.mark.parametrize("overrides", [{}, CHANGED], ids=["defaults", "changed"])
def test_group_values_equal_the_flat_ones(overrides: dict[str, Any]) -> None:
    settings = load_settings(_env_file=None, **overrides)
    for name, group_cls in GROUPS.items():
        group = getattr(settings, name)
        assert getattr(settings, name) is group  # built once
        for field in dataclasses.fields(group_cls):
            assert getattr(group, field.name) == getattr(settings, flat_name(field)), field.name


def test_groups_are_frozen() -> None:
    settings = load_settings(_env_file=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.smtp.port = 1  # type: ignore[misc]


def test_a_copy_builds_its_groups_again() -> None:
    settings = load_settings(_env_file=None)
    assert settings.smtp.reuse_port is False
    copied = settings.model_copy(update={"smtp_reuse_port": True, "api_enabled": False})
    assert copied.smtp.reuse_port is True
    assert copied.api.enabled is False
    assert settings.smtp.reuse_port is False


def test_derived_helpers_live_on_their_groups() -> None:
    settings = load_settings(
        _env_file=None, bcc_address="bcc@crm.example", support_address="help@crm.example",
        sales_address="sales@crm.example", sales_owner="Ann@crm.example",
        default_owner_email="boss@crm.example", database_url="sqlite+aiosqlite:///x.db",
        outbound_smtp_url="smtp://relay.example", decide_jobs=2,
    )
    linking = settings.linking
    assert linking.intake_roles == settings.intake_roles
    assert linking.intake_roles["help@crm.example"] == Role.SUPPORT
    assert linking.role_addresses == settings.role_addresses
    assert linking.owner_for(Role.SALES) == "ann@crm.example"
    assert linking.owner_for("support") == "boss@crm.example"
    assert settings.store.is_sqlite and settings.is_sqlite
    assert settings.intake.effective_decide_workers(settings.store) == 1
    assert settings.intake.effective_decide_jobs(settings.store) == 2
    assert settings.outbound.effective_message_id_domain(linking) == "crm.example"
    assert settings.outbound_message_id_domain == "crm.example"
    assert settings.outbound.ticket_ack_enabled and settings.ticket_ack_enabled
