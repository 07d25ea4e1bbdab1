"""The command line as an operator meets it: usage errors, --version, --json listings."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SUPPORT
from tests.integration.test_cli import EXAMPLES, mailsvc


@pytest.mark.parametrize("args", [("nosuch",), ("ingest", "--bogus"), ("events", "--limit", "x")])
def test_a_usage_error_exits_64_without_a_traceback(sqlite_url: str, args: tuple[str, ...]) -> None:
    result = mailsvc(sqlite_url, *args)
    assert result.returncode == 64
    assert "Traceback" not in result.stderr.decode()
    assert "Error" in result.stderr.decode()


def test_version(sqlite_url: str) -> None:
    result = mailsvc(sqlite_url, "--version")
    assert result.returncode == 0
    assert result.stdout.decode().startswith("mailsvc ")


def test_listings_speak_json(sqlite_url: str) -> None:
    ingested = mailsvc(sqlite_url, "ingest", "--to", SUPPORT, str(EXAMPLES / "support-request.eml"))
    assert ingested.returncode == 0
    events = [json.loads(line) for line in
              mailsvc(sqlite_url, "events", "--json").stdout.decode().splitlines()]
    assert {"email.received", "ticket.created"} <= {e["type"] for e in events}
    current = json.loads(mailsvc(sqlite_url, "db", "current", "--json").stdout)
    assert current["up_to_date"] is True
    quarantined = mailsvc(sqlite_url, "quarantine", "list", "--json")
    assert quarantined.returncode == 0 and quarantined.stdout == b""
