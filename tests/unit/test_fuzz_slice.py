"""A slice of scripts/fuzz_intake.py: mutated corpus mail through the pure intake steps, no crash.
The full run (100,000 messages) and its figures: docs/trust.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).parents[2] / "scripts" / "fuzz_intake.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_intake", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_slice_of_the_fuzz_run_has_no_crash() -> None:
    fuzz = load()
    tally = fuzz.run(200, seed=1, quiet=True)
    assert tally.count == 200
    crashes = [trace for _, trace in tally.crashes]
    assert crashes == []


def test_the_fuzz_harness_reports_a_crash() -> None:
    """The harness itself can fail: a step that raises is counted, with its input."""
    fuzz = load()

    def broken(data: bytes, envelope: object) -> None:
        raise RuntimeError("boom")

    fuzz.intake = broken
    tally = fuzz.run(3, seed=1, quiet=True)
    assert len(tally.crashes) == 3 and "boom" in tally.crashes[0][1]
