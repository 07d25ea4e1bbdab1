"""`mailsvc doctor` against real services: what it finds and the exit status it gives."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailsvc.crmstore.intake_writer import intake_path
from tests.conftest import AMQP_URL
from tests.integration.test_cli import mailsvc
from tests.support.dovecot import PASSWORD, Dovecot, free_port, running_dovecot


def findings(result: Any) -> dict[str, dict[str, str]]:
    return {f["check"]: f for f in map(json.loads, result.stdout.decode().splitlines())}


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    with running_dovecot() as server:
        yield server


def imap(server: Dovecot, name: str, password: str) -> str:
    return json.dumps([{
        "name": name, "host": "127.0.0.1", "port": server.plain_port, "tls": "none",
        "username": "alice", "password": password, "role": "bcc",
    }])


@pytest.mark.rabbitmq
@pytest.mark.imap
def test_all_well_exits_zero(sqlite_url: str, dovecot: Dovecot) -> None:
    result = mailsvc(sqlite_url, "doctor", "--json", MAILSVC_AMQP_URL=AMQP_URL,
                     MAILSVC_IMAP_MAILBOXES=imap(dovecot, "good", PASSWORD))
    found = findings(result)
    assert result.returncode == 0, found
    assert found["database"]["status"] == "ok"
    assert "0 mail(s) waiting for a decision" in found["database"]["detail"]
    assert found["imap good"]["status"] == "ok"
    assert found["broker"]["status"] in {"ok", "warn"}  # the exchange may not be declared yet


def test_a_stopped_broker_is_a_failure(sqlite_url: str) -> None:
    stopped = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    result = mailsvc(sqlite_url, "doctor", "--json", MAILSVC_AMQP_URL=stopped)
    found = findings(result)
    assert result.returncode == 1
    assert found["broker"]["status"] == "fail"
    assert "RabbitMQ" in found["broker"]["fix"]


@pytest.mark.imap
def test_a_wrong_imap_password_is_a_failure(sqlite_url: str, dovecot: Dovecot) -> None:
    result = mailsvc(sqlite_url, "doctor", MAILSVC_IMAP_MAILBOXES=imap(dovecot, "bad", "wrong"))
    assert result.returncode == 1
    line = next(x for x in result.stdout.decode().splitlines() if "imap bad" in x)
    assert line.startswith("FAIL") and "password" in line


def test_an_old_schema_says_how_to_fix_it(tmp_path: Any) -> None:
    result = mailsvc(f"sqlite+aiosqlite:///{tmp_path}/empty.db", "doctor", "--json")
    assert result.returncode == 1
    assert findings(result)["database"]["fix"] == "run `mailsvc db upgrade`"


def test_an_intake_file_that_cannot_be_opened_is_a_failure(sqlite_url: str) -> None:
    """The SQLite intake lives beside the database: where it cannot be, no mail can be taken."""
    Path(intake_path(sqlite_url.split(":///", 1)[1])).mkdir()  # a directory in its place
    result = mailsvc(sqlite_url, "doctor", "--json")
    found = findings(result)["database"]
    assert result.returncode == 1
    assert found["status"] == "fail" and "intake file" in found["detail"]
    assert "directory" in found["fix"]
