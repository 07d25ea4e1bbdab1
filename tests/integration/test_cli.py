"""The `mailsvc` command as an MTA pipe or a newcomer runs it: real processes, real store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BCC, SALES, SUPPORT

EXAMPLES = Path(__file__).parents[2] / "examples"
README_DEMO = {"MAILSVC_TRUSTED_AUTHSERV_IDS": "demo.mailsvc.localhost"}


def mailsvc(
    database_url: str, *args: str, stdin: bytes | None = None, **env: str
) -> subprocess.CompletedProcess[bytes]:
    environment = {
        "PATH": os.environ["PATH"],
        "MAILSVC_DATABASE_URL": database_url,
        "MAILSVC_BCC_ADDRESS": BCC,
        "MAILSVC_SALES_ADDRESS": SALES,
        "MAILSVC_SUPPORT_ADDRESS": SUPPORT,
        "MAILSVC_LOG_LEVEL": "WARNING",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "mailsvc", *args], input=stdin, capture_output=True,
        env=environment, timeout=120, check=False,
    )


def lines(result: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def seed(database_url: str) -> dict[str, Any]:
    result = mailsvc(database_url, "seed-demo", "--json")
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def test_seed_demo_then_ingest_links_the_example_mail(database_url: str) -> None:
    demo = seed(database_url)
    assert {"users", "accounts", "contacts", "opportunities", "tickets"} <= demo.keys()
    opportunity = demo["opportunities"][0]
    assert opportunity["number"] == f"OPP-{opportunity['id']}"
    assert seed(database_url) == demo  # running it twice creates nothing new

    mail = (EXAMPLES / "bcc-opportunity.eml").read_bytes()
    mail = mail.replace(b"[OPP-1]", f"[{opportunity['number']}]".encode())
    # As README's demo: trust the example's Authentication-Results (docs/trust.md).
    result = mailsvc(database_url, "ingest", "-", stdin=mail, **README_DEMO)
    assert result.returncode == 0, result.stderr.decode()
    [outcome] = lines(result)
    assert outcome["outcome"] == "linked"
    assert outcome["rule"] == "subject_id"
    assert outcome["email_id"] > 0
    for name in ("opportunity", "account", "contact", "owner"):
        expected = opportunity["id"] if name == "opportunity" else opportunity[f"{name}_id"]
        assert outcome[name] == expected
        assert outcome["links"][name] == expected

    again = mailsvc(database_url, "ingest", "-", stdin=mail)
    assert again.returncode == 0
    assert lines(again)[0]["outcome"] == "duplicate"
    assert lines(again)[0]["email_id"] == outcome["email_id"]


def test_ingest_of_several_files_prints_one_line_each(database_url: str, tmp_path: Path) -> None:
    files = sorted(EXAMPLES.glob("*.eml"))
    result = mailsvc(database_url, "ingest", "--to", SALES, *map(str, files))
    assert result.returncode == 0, result.stderr.decode()
    assert len(lines(result)) == len(files)


def test_unknown_opportunity_id_links_nothing_and_says_so(database_url: str) -> None:
    mail = (
        b"From: someone@nowhere.example\nSubject: about OPP-999999\n"
        b"Message-ID: <x1@n.example>\n\nhi\n"
    )
    result = mailsvc(database_url, "ingest", "-", stdin=mail)
    [outcome] = lines(result)
    assert outcome["opportunity"] is None
    assert "unknown_id:OPP-999999" in outcome["notes"]


@pytest.mark.parametrize("payload", [b"", b"\x00\xff\x00 binary garbage \x01\x02"])
def test_unusable_input_is_quarantined_with_exit_65(database_url: str, payload: bytes) -> None:
    result = mailsvc(database_url, "ingest", "-", stdin=payload)
    assert result.returncode == 65, result.stderr.decode()
    [outcome] = lines(result)
    assert outcome["outcome"] == "quarantined"
    assert outcome["reason"]
    assert outcome["quarantine_id"] > 0


def test_quarantine_drop_deletes_and_says_which(database_url: str) -> None:
    [outcome] = lines(mailsvc(database_url, "ingest", "-", stdin=b"\x00\x01 not a mail"))
    dropped = mailsvc(database_url, "quarantine", "drop", str(outcome["quarantine_id"]), "424242")
    assert dropped.returncode == 0, dropped.stderr.decode()
    assert lines(dropped) == [{"quarantine_id": outcome["quarantine_id"], "dropped": True},
                              {"quarantine_id": 424242, "dropped": False}]
    assert lines(mailsvc(database_url, "quarantine", "list", "--json")) == []
    again = mailsvc(database_url, "quarantine", "drop", str(outcome["quarantine_id"]))
    assert again.returncode == 66
    assert b"Traceback" not in again.stderr


def test_store_unavailable_exits_75_without_a_traceback(tmp_path: Path) -> None:
    mail = (EXAMPLES / "bcc-opportunity.eml").read_bytes()
    result = mailsvc(
        "postgresql+asyncpg://postgres@127.0.0.1:1/none", "ingest", "-", stdin=mail
    )
    assert result.returncode == 75
    assert b"Traceback" not in result.stderr
    assert result.stdout == b""


def test_missing_file_exits_66(database_url: str, tmp_path: Path) -> None:
    result = mailsvc(database_url, "ingest", str(tmp_path / "nope.eml"))
    assert result.returncode == 66
    assert b"cannot read" in result.stderr


def test_unknown_intake_address_exits_64(database_url: str) -> None:
    result = mailsvc(database_url, "ingest", "--to", "nobody@else.example", "-", stdin=b"x")
    assert result.returncode == 64
    assert b"not an intake address" in result.stderr


def test_wrong_configuration_fails_at_start_with_a_clear_message(sqlite_url: str) -> None:
    result = mailsvc(sqlite_url, "db", "current", MAILSVC_SMTP_PORT="seventy")
    assert result.returncode == 78  # EX_CONFIG
    assert b"MAILSVC_SMTP_PORT" in result.stderr
    clash = mailsvc(sqlite_url, "seed-demo", MAILSVC_SALES_ADDRESS=BCC)
    assert clash.returncode == 78
    assert b"both the bcc and the sales address" in clash.stderr
    assert b"Traceback" not in result.stderr + clash.stderr


def test_ingest_with_wrong_configuration_asks_the_mta_to_retry(sqlite_url: str) -> None:
    # Under a Postfix pipe 78 would bounce every mail until the settings are fixed; 75 defers.
    result = mailsvc(sqlite_url, "ingest", "-", stdin=b"x", MAILSVC_SMTP_PORT="seventy")
    assert result.returncode == 75
    assert b"MAILSVC_SMTP_PORT" in result.stderr
