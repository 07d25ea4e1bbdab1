"""The accept stage: raw bytes, envelope and dedup key committed to the ``intake`` table.

Accepting parses no MIME and decides nothing: it reads the header block for the dedup key
(``mail_key``) and writes one row per mail, many mails per transaction. A key already accepted,
stored or quarantined is answered ``duplicate`` and nothing is written. Deciding happens later, in
the decide workers (``ingest/decider.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import CompoundSelect, insert, literal, select, union_all
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import Email, IntakeMail, QuarantinedMail
from mailsvc.ingest.outcome import Outcome
from mailsvc.ingest.parse import mail_key
from mailsvc.ingest.sanitize import fit_row
from mailsvc.mail import Envelope, RawMail, Role

__all__ = ["Accepted", "accept_mails", "envelope_extra", "intake_values", "mail_key", "raw_of"]

# The Envelope fields with columns of their own; any other field goes to envelope_extra.
_ENVELOPE_COLUMNS = {"mail_from": "mail_from", "rcpt_tos": "rcpt_tos", "role": "role",
                     "source": "source"}


class Accepted(NamedTuple):
    """What accepting one mail gave: its dedup key and ``accepted`` or ``duplicate``."""

    key: str
    outcome: Outcome


def _json_safe(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def envelope_extra(envelope: Envelope) -> dict[str, Any]:
    """Every Envelope field without a column of its own (peer address, SMTP AUTH identity...),
    JSON-ready; only values that differ from the field's default are kept."""
    extra: dict[str, Any] = {}
    for field in dataclasses.fields(envelope):
        if field.name in _ENVELOPE_COLUMNS:
            continue
        value = getattr(envelope, field.name)
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING
            else dataclasses.MISSING
        )
        if value != default:
            extra[field.name] = _json_safe(value)
    return extra


def intake_values(raw: RawMail, key: str) -> dict[str, Any]:
    """The ``intake`` row of an accepted mail, every value cleaned and fitted to its column (an
    odd envelope must never fail the group commit it shares with other mails)."""
    envelope = raw.envelope
    return fit_row(IntakeMail.__table__, {
        "dedup_key": key,
        "raw": raw.data,
        "mail_from": envelope.mail_from,
        "rcpt_tos": list(envelope.rcpt_tos),
        "role": envelope.role,
        "source": envelope.source,
        "envelope_extra": envelope_extra(envelope),
        "accepted_at": utcnow(),
        "attempts": 0,
    }, keep=frozenset({"dedup_key"}))


def raw_of(row: IntakeMail) -> RawMail:
    """The RawMail an intake row was accepted as (envelope extras restored where the Envelope of
    this version knows them)."""
    known = {field.name for field in dataclasses.fields(Envelope)}
    extra: dict[str, Any] = {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in (row.envelope_extra or {}).items() if name in known
    }
    role: Role = row.role  # type: ignore[assignment]
    envelope = Envelope(row.mail_from, tuple(row.rcpt_tos or ()), role, row.source, **extra)
    return RawMail(row.raw, envelope)


def _known_keys(keys: Sequence[str]) -> CompoundSelect[Any]:
    return union_all(
        select(IntakeMail.dedup_key, literal("intake"), IntakeMail.id)
        .where(IntakeMail.dedup_key.in_(keys)),
        select(Email.dedup_key, literal("email"), Email.id).where(Email.dedup_key.in_(keys)),
        select(QuarantinedMail.dedup_key, literal("quarantine"), QuarantinedMail.id)
        .where(QuarantinedMail.dedup_key.in_(keys)),
    )


def _duplicate(where: str, row_id: int) -> Outcome:
    if where == "email":
        return Outcome("duplicate", email_id=row_id)
    if where == "quarantine":
        return Outcome("duplicate", quarantine_id=row_id)
    return Outcome("duplicate", intake_id=row_id)


async def accept_mails(session: AsyncSession, raws: Sequence[RawMail]) -> list[Accepted]:
    """Write the mails to the intake in the caller's transaction: ``accepted`` (with the intake
    id) or ``duplicate`` (already accepted, stored or quarantined, or earlier in ``raws``).

    A concurrent accept of the same key in another process is settled by the UNIQUE key:
    ``ON CONFLICT DO NOTHING`` waits for the other transaction and then answers ``duplicate``.
    """
    keys = [mail_key(raw.data) for raw in raws]
    known: dict[str, Outcome] = {}
    if keys:
        for key, where, row_id in await session.execute(_known_keys(sorted(set(keys)))):
            known.setdefault(str(key), _duplicate(str(where), int(row_id)))
    rows: list[dict[str, Any]] = []
    first: set[str] = set()
    for raw, key in zip(raws, keys, strict=True):
        if key not in known and key not in first:
            first.add(key)
            rows.append(intake_values(raw, key))
    ids: dict[str, int] = {}
    if rows:
        dialect = session.get_bind().dialect.name
        statement = (pg_insert(IntakeMail) if dialect == "postgresql"
                     else sqlite_insert(IntakeMail) if dialect == "sqlite" else insert(IntakeMail))
        if hasattr(statement, "on_conflict_do_nothing"):
            statement = statement.on_conflict_do_nothing(index_elements=["dedup_key"])
        result = await session.execute(
            statement.returning(IntakeMail.id, IntakeMail.dedup_key), rows
        )
        ids = {key: row_id for row_id, key in result}
    accepted: list[Accepted] = []
    seen: set[str] = set()
    for key in keys:
        if key in known:
            outcome = known[key]
        elif key in seen or key not in ids:
            # Earlier in this group, or accepted meanwhile by another process.
            outcome = Outcome("duplicate", intake_id=ids.get(key))
        else:
            outcome = Outcome("accepted", intake_id=ids[key])
        accepted.append(Accepted(key, outcome))
        seen.add(key)
    return accepted

