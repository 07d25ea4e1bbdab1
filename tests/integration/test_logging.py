"""Log output as an operator meets it: JSON lines that parse, one line for a wrong log level."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_cli import EXAMPLES, mailsvc


def test_json_logs_are_one_object_per_line(sqlite_url: str) -> None:
    result = mailsvc(
        sqlite_url, "ingest", str(EXAMPLES / "support-request.eml"),
        MAILSVC_LOG_FORMAT="json", MAILSVC_LOG_LEVEL="INFO",
    )
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stderr.decode().splitlines()
    assert lines, "INFO logs a line per mail"
    records = [json.loads(line) for line in lines]
    for record in records:
        assert {"time", "level", "logger", "pid", "message"} <= set(record)
    assert any(r["logger"].startswith("mailsvc") for r in records)
    [per_mail] = [r for r in records if "outcome" in r]  # one line per mail, with its fields
    assert per_mail["outcome"] == "lead_created"  # the example, to the Smart BCC address
    assert per_mail["rule"] and per_mail["message_id"]
    assert isinstance(per_mail["ms"], int) and per_mail["ms"] >= 0


@pytest.mark.parametrize(("command", "exit_code"), [("ingest", 75), ("events", 78)])
def test_a_wrong_log_level_is_one_line_naming_the_setting(
    sqlite_url: str, command: str, exit_code: int
) -> None:
    args = [command, str(EXAMPLES / "support-request.eml")] if command == "ingest" else [command]
    result = mailsvc(sqlite_url, *args, MAILSVC_LOG_LEVEL="LOUD")
    assert result.returncode == exit_code
    message = result.stderr.decode().strip()
    assert len(message.splitlines()) == 1, message
    assert "MAILSVC_LOG_LEVEL" in message
    assert "Traceback" not in message
