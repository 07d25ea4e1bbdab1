"""`mailsvc ingest` beside a running service: accept the mail, let a decide worker decide it.

An MTA's pipe starts one process per mail. When a decide worker is running (on SQLite one holds
the decide lock beside the database; on PostgreSQL one is connected as ``mailsvc-decide``), that
process only has to accept: commit the raw bytes to the intake with the same writer as the SMTP
accept, then wait a moment (``MAILSVC_INGEST_WAIT_SECONDS``) for the worker's decision and print
it. A mail not decided by then is printed as ``accepted``: it is durable, and decided as soon as
the worker gets to it. This path loads the settings, the database driver and the header reader;
nothing of SQLAlchemy, Alembic, the mail parser, the API or the broker. Without a running worker,
or when the schema is not the one this version needs, the full command decides the mail itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailsvc.config import Settings
from mailsvc.crmstore.intake_writer import (
    IntakeUnavailable,
    IntakeWriter,
    PostgresIntake,
    SqliteIntake,
    sqlite_path,
)
from mailsvc.crmstore.revision import script_head
from mailsvc.crmstore.timeouts import postgres_connect_args
from mailsvc.ingest.accept import accept_mails, decided_outcomes
from mailsvc.ingest.outcome import Outcome
from mailsvc.mail import Envelope, RawMail, Role

if TYPE_CHECKING:
    from collections.abc import Callable

HANDOVER_POLL = 0.005  # seconds between looks for the worker's decision
EX_DATAERR = 65
EX_NOINPUT = 66
EX_TEMPFAIL = 75


class InputError(Exception):
    """A message file cannot be read: the message names it."""


def read_inputs(files: Sequence[str], address: str, role: Role,
                sender: str | None) -> list[RawMail]:
    """The messages named (``-``: standard input), each with the envelope of ``ingest``."""
    raws: list[RawMail] = []
    for name in files:
        try:
            data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {name}: {exc.strerror}") from None
        envelope = Envelope(sender, (address,), role, "stdin" if name == "-" else "file")
        raws.append(RawMail(data, envelope))
    return raws


def print_outcomes(outcomes: Sequence[Outcome]) -> int:
    """One JSON object per mail on stdout; the exit status (65 when a mail was unusable)."""
    for outcome in outcomes:
        sys.stdout.write(json.dumps(outcome.to_json(), ensure_ascii=False) + "\n")
    return EX_DATAERR if any(o.mail_at_fault for o in outcomes) else 0


async def hand_over(settings: Settings, raws: Sequence[RawMail]) -> list[Outcome] | None:
    """Accept the mails and wait for a running decide worker's decisions; None (nothing
    written) when no worker runs or the schema is not this version's."""
    async with _writer(settings) as writer:
        if not await writer.deciders_running():
            return None
        head = script_head()
        if head is None or await writer.revision() != head:
            return None
        accepted = await accept_mails(writer, raws)
        waiting = {i: a.key for a in accepted
                   if a.outcome.kind == "accepted" and (i := a.outcome.intake_id) is not None}
        # Looked for more often than the worker polls: its decision is printed as soon as it is
        # committed (one small read each time).
        decided = await _decisions(writer, waiting, settings.intake.ingest_wait_seconds,
                                   min(settings.intake.decide_poll_ms / 1000, HANDOVER_POLL))
        return [decided.get(a.outcome.intake_id or 0, a.outcome) if a.outcome.kind == "accepted"
                else a.outcome for a in accepted]


async def _decisions(writer: IntakeWriter, waiting: dict[int, str], wait: float,
                     poll: float) -> dict[int, Outcome]:
    """The decisions of the accepted mails (intake id -> key) made within ``wait`` seconds."""
    found: dict[int, Outcome] = {}
    deadline = time.monotonic() + wait
    while len(found) < len(waiting):
        await asyncio.sleep(poll)
        found.update(await decided_outcomes(
            writer, {i: key for i, key in waiting.items() if i not in found}))
        if time.monotonic() >= deadline:
            break
    return found


@contextlib.asynccontextmanager
async def _writer(settings: Settings) -> AsyncIterator[IntakeWriter]:
    """An intake writer on a connection of this process's own."""
    store = settings.store
    timeouts = store.timeouts()
    if store.is_sqlite:
        writer: IntakeWriter = SqliteIntake(sqlite_path(store.url), timeouts.sqlite_busy)
        try:
            yield writer
        finally:
            await writer.close()
        return
    import asyncpg  # type: ignore[import-untyped]

    dsn = "postgresql://" + store.url.split("://", 1)[1]
    try:
        connection = await asyncpg.connect(dsn, **postgres_connect_args(timeouts))
    except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
        raise IntakeUnavailable(f"{type(exc).__name__}: {exc}") from exc
    try:
        yield PostgresIntake(_lend(connection))
    finally:
        with contextlib.suppress(Exception):
            await connection.close(timeout=timeouts.connect or None)


def _lend(connection: Any) -> Callable[[], contextlib.AbstractAsyncContextManager[Any]]:
    @contextlib.asynccontextmanager
    async def lend() -> AsyncIterator[Any]:
        yield connection

    return lend
