"""The parsing processes load only the parsing code: what they import, and that the column
lengths they fit values with are the models'."""

from __future__ import annotations

import json
import subprocess
import sys

from mailsvc import entry
from mailsvc.crmstore.models import Email
from mailsvc.ingest import prepare
from mailsvc.ingest.sanitize import column_lengths, fit_row, fit_values


def test_the_fork_server_of_import_preloads_what_the_parse_pool_does() -> None:
    assert entry.PARSING_MODULES == prepare.PRELOAD


def test_the_parsing_code_loads_nothing_of_the_store() -> None:
    probe = ("import json, sys\n"
             f"for name in {prepare.PRELOAD!r}: __import__(name)\n"
             "print(json.dumps(sorted(m for m in ('sqlalchemy', 'pydantic', 'alembic', "
             "'fastapi', 'aio_pika') if m in sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True,
                            timeout=120)
    assert json.loads(loaded.stdout) == []


def test_values_fitted_by_length_are_those_fitted_by_the_table() -> None:
    row = {"from_name": "x" * 5000 + "\r\nmore", "text_body": "a\x00b\r\nc", "to": [{"n": "\x01"}],
           "dedup_key": "k\n", "not_a_column": "\x00"}
    lengths = column_lengths(Email.__table__)
    assert lengths["from_name"] is not None and lengths["text_body"] is None
    keep = frozenset({"dedup_key"})
    fitted = fit_values(lengths, row, keep)
    assert fitted == fit_row(Email.__table__, row, keep)
    assert len(fitted["from_name"]) == lengths["from_name"] and "\n" not in fitted["from_name"]
    assert fitted["text_body"] == "ab\r\nc" and fitted["to"] == [{"n": ""}]
    assert fitted["dedup_key"] == "k\n" and fitted["not_a_column"] == "\x00"
