"""README documents every setting there is, and no setting that is not there."""

from __future__ import annotations

import re
from pathlib import Path

from mailsvc.config import Settings

README = Path(__file__).parents[2] / "README.md"


def test_every_setting_is_in_the_readme_and_nothing_else() -> None:
    fields = {f"MAILSVC_{name.upper()}" for name in Settings.model_fields}
    documented = set(re.findall(r"MAILSVC_[A-Z_]*[A-Z]", README.read_text()))
    assert fields - documented == set(), "settings missing from README"
    assert documented - fields == set(), "README names settings that do not exist"


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.read_text().split("```")[1]
    commands = [line for line in first_block.splitlines()[1:] if line.strip()]
    assert len(commands) == 2
    assert "mailsvc serve" in commands[0]
    assert commands[1].split("#")[0].strip() == "./scripts/test"
    assert "./scripts/test" in Path(__file__).parents[2].joinpath(".ci/run").read_text()
