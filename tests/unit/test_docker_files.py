"""docker/: what can be checked without a Docker engine (files parse and agree with the code)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailsvc.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"

SERVICES = {"mailsvc", "postgres", "rabbitmq", "imap"}
# ${NAME} or ${NAME:-default} (compose interpolation from the caller's environment).
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
SETTING = re.compile(r"\bMAILSVC_[A-Z0-9_]+\b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def interpolate(value: str) -> str:
    return INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def mailsvc_environment(compose: dict[str, Any]) -> dict[str, str]:
    environment = compose["services"]["mailsvc"]["environment"]
    assert isinstance(environment, dict), "write the environment as a mapping"
    return {key: interpolate(str(value)) for key, value in environment.items()}


def test_compose_has_the_services_and_waits_for_healthy_backends(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= SERVICES
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3-management")
    for name in SERVICES:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    depends = services["mailsvc"]["depends_on"]
    assert set(depends) == SERVICES - {"mailsvc"}
    assert all(d["condition"] == "service_healthy" for d in depends.values())


def test_compose_builds_the_image_from_the_dockerfile(compose: dict[str, Any]) -> None:
    build = compose["services"]["mailsvc"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    assert (context / ".dockerignore").resolve() == DOCKERIGNORE


def test_every_mailsvc_variable_is_a_setting(compose: dict[str, Any]) -> None:
    used = set(mailsvc_environment(compose))
    used |= set(SETTING.findall(DOCKERFILE.read_text(encoding="utf-8")))
    used |= set(SETTING.findall(COMPOSE.read_text(encoding="utf-8")))
    fields = {f"MAILSVC_{name.upper()}" for name in Settings.model_fields}
    assert used, "no MAILSVC_ variables found"
    assert used <= fields, f"not settings: {sorted(used - fields)}"


def test_the_compose_environment_is_a_valid_configuration(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("MAILSVC_")]:
        monkeypatch.delenv(key)
    for key, value in mailsvc_environment(compose).items():
        monkeypatch.setenv(key, value)
    settings = load_settings(_env_file=None)
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.amqp_url is not None
    assert settings.api_keys, "without a key the API would not leave the container's loopback"
    hosts = set(compose["services"])
    assert settings.database_url.split("@", 1)[1].split(":", 1)[0] in hosts
    assert settings.amqp_url.get_secret_value().split("@", 1)[1].split(":", 1)[0] in hosts
    for mailbox in settings.imap_mailboxes:
        assert mailbox.host in hosts
    ports = {p.split(":")[-1] for p in compose["services"]["mailsvc"]["ports"]}
    assert ports == {str(settings.smtp_port), str(settings.api_port)}


def test_the_imap_mailbox_matches_the_greenmail_user(compose: dict[str, Any]) -> None:
    mailboxes = json.loads(mailsvc_environment(compose)["MAILSVC_IMAP_MAILBOXES"])
    options = compose["services"]["imap"]["environment"]["GREENMAIL_OPTS"]
    for mailbox in mailboxes:
        assert f"{mailbox['username']}:{mailbox['password']}@" in options


def test_dockerfile_runs_as_a_user_with_a_healthcheck_and_serves() -> None:
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert keywords.index("USER") < keywords.index("CMD")
    healthcheck = next(args for keyword, args in instructions if keyword == "HEALTHCHECK")
    assert "/healthz" in healthcheck
    exposed = {p for keyword, args in instructions if keyword == "EXPOSE" for p in args.split()}
    assert exposed == {"8025", "8080"}
    cmd = next(args for keyword, args in instructions if keyword == "CMD")
    assert json.loads(cmd) == ["mailsvc", "serve"]


def test_dockerfile_copies_only_files_that_exist_and_are_not_ignored() -> None:
    ignored = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    allowed = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    for keyword, args in dockerfile_instructions():
        if keyword not in ("COPY", "ADD") or args.startswith("--from"):
            continue
        *sources, _target = args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{keyword} {source}: no such file"
            assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"


def test_the_package_build_finds_what_the_dockerfile_copies() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', pyproject, re.MULTILINE)
    assert readme is not None and (ROOT / readme.group(1)).is_file()
    copied = {source for keyword, args in dockerfile_instructions() if keyword == "COPY"
              for source in args.split()[:-1]}
    assert {"pyproject.toml", readme.group(1), "mailsvc"} <= copied
