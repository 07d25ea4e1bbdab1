"""The console script's start and end: the collector is on again (with what was loaded frozen
out of its way) by the time a command runs, and `mailsvc import` and `mailsvc ingest` exit
without the interpreter's teardown but with its exit handlers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import atexit, gc, json, sys
from mailsvc import entry

def report():
    sys.stderr.write("GC " + json.dumps([gc.isenabled(), gc.get_freeze_count()]) + "\\n")

atexit.register(report)
sys.argv = ["mailsvc", *sys.argv[1:]]
entry.main()
"""


@pytest.mark.parametrize("arguments", [["--help"], ["import", "--help"], ["ingest", "--help"]])
def test_a_command_runs_with_the_collector_on_and_the_loaded_code_frozen(
    arguments: list[str],
) -> None:
    result = subprocess.run([sys.executable, "-c", PROBE, *arguments], capture_output=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stderr.decode().splitlines() if x.startswith("GC "))
    enabled, frozen = json.loads(line[3:])
    assert enabled
    assert frozen > 10_000  # SQLAlchemy, pydantic, mailsvc: far more objects than that
