"""`mailsvc import` of mbox, Maildir and .eml directories, through the CLI, on a real store."""

from __future__ import annotations

import asyncio
import mailbox
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from mailsvc.cli import app
from mailsvc.config import load_settings
from mailsvc.crmstore.db import create_engine
from mailsvc.crmstore.models import Email, QuarantinedMail
from mailsvc.ingest.prepare import prepare
from mailsvc.mail import Envelope, RawMail
from tests.conftest import BCC, SALES, SUPPORT, corpus_messages


def run_import(
    database_url: str, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str]:
    env = {
        "MAILSVC_DATABASE_URL": database_url, "MAILSVC_BCC_ADDRESS": BCC,
        "MAILSVC_SALES_ADDRESS": SALES, "MAILSVC_SUPPORT_ADDRESS": SUPPORT,
        "MAILSVC_LOG_LEVEL": "WARNING", **(env or {}),
    }
    result = CliRunner().invoke(app, ["import", "--quiet", *args], env=env)
    return result.exit_code, result.output


def summary(output: str) -> dict[str, int]:
    """The outcome table, as {outcome: messages}."""
    rows: dict[str, int] = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 2 and cells[1].isdigit():
            rows[cells[0]] = int(cells[1])
    return rows


def counts(database_url: str) -> tuple[int, int, set[str]]:
    async def go() -> tuple[int, int, set[str]]:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                emails = await conn.scalar(select(func.count()).select_from(Email))
                quarantined = await conn.scalar(select(func.count()).select_from(QuarantinedMail))
                roles = set(await conn.scalars(select(Email.intake_role).distinct()))
                return int(emails or 0), int(quarantined or 0), roles
        finally:
            await engine.dispose()

    return asyncio.run(go())


def corpus_mbox(path: Path) -> Path:
    box = mailbox.mbox(path)
    for message in corpus_messages():
        box.add(message.read_bytes())
    box.flush()
    box.close()
    return path


def test_an_mbox_of_the_whole_corpus_imports_and_a_rerun_finds_only_duplicates(
    database_url: str, tmp_path: Path,
) -> None:
    mbox = corpus_mbox(tmp_path / "corpus.mbox")
    total = len(corpus_messages())
    # What the store must hold: one entry per distinct idempotency key in the mbox.
    box = mailbox.mbox(mbox, create=False)
    settings = load_settings(_env_file=None)
    keys = {prepare(_raw(box.get_bytes(k)), settings.max_message_bytes).key for k in box.iterkeys()}
    box.close()

    # Two parsing processes whatever the machine's cores: the parse pool is on this path.
    code, output = run_import(database_url, str(mbox), "--batch-size", "50", "--jobs", "2")
    assert code == 0, output
    first = summary(output)
    assert first["total"] == total
    assert set(first) <= {"linked", "lead_created", "ticket_created", "ticket_updated", "ignored",
                          "duplicate", "quarantined", "total"}
    emails, quarantined, _ = counts(database_url)
    assert emails + quarantined == len(keys)
    assert first.get("duplicate", 0) == total - len(keys)  # same Message-ID twice in the corpus

    code, output = run_import(database_url, str(mbox))
    assert code == 0, output
    assert summary(output) == {"duplicate": total, "total": total}
    assert counts(database_url)[:2] == (emails, quarantined)


def _raw(data: bytes) -> RawMail:
    return RawMail(data, Envelope(None, (BCC,), "bcc", "file"))


def test_a_maildir_and_a_directory_of_eml_files_are_found_recursively(
    database_url: str, tmp_path: Path,
) -> None:
    messages = corpus_messages()[:12]
    (tmp_path / "archive").mkdir()
    maildir = mailbox.Maildir(tmp_path / "archive" / "Maildir")
    for message in messages[:6]:
        maildir.add(message.read_bytes())
    sent = maildir.add_folder("Sent")  # a Maildir++ subfolder
    sent.add(messages[6].read_bytes())
    emls = tmp_path / "archive" / "exported" / "2024"
    emls.mkdir(parents=True)
    for n, message in enumerate(messages[7:], start=1):
        (emls / f"{n}.eml").write_bytes(message.read_bytes())
    (tmp_path / "archive" / "README.txt").write_text("not mail")

    code, output = run_import(database_url, str(tmp_path / "archive"), "--to", SUPPORT)
    assert code == 0, output
    rows = summary(output)
    assert rows["total"] == 12
    assert rows["files skipped (not mail)"] == 1
    emails, quarantined, roles = counts(database_url)
    assert emails + quarantined + rows.get("duplicate", 0) == 12
    assert roles <= {"support"}


def test_a_missing_path_exits_66_and_an_unknown_intake_address_64(
    database_url: str, tmp_path: Path,
) -> None:
    assert run_import(database_url, str(tmp_path / "nothing.mbox"))[0] == 66
    (tmp_path / "empty").mkdir()
    assert run_import(database_url, str(tmp_path / "empty"))[0] == 66
    eml = tmp_path / "one.eml"
    eml.write_bytes(corpus_messages()[0].read_bytes())
    assert run_import(database_url, str(eml), "--to", "nobody@elsewhere.example")[0] == 64


@pytest.mark.parametrize("database_url", ["postgresql+asyncpg://postgres@127.0.0.1:1/none"])
def test_an_unreachable_store_exits_75(database_url: str, tmp_path: Path) -> None:
    eml = tmp_path / "one.eml"
    eml.write_bytes(corpus_messages()[0].read_bytes())
    code, output = run_import(database_url, str(eml))
    assert code == 75, output
