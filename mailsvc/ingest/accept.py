"""The accept stage: raw bytes, envelope and dedup key committed to the ``intake`` table.

Accepting parses no MIME and decides nothing: it reads the header block for the dedup key
(``mail_key``) and writes one row per mail, many mails per transaction. A key already accepted,
stored or quarantined is answered ``duplicate`` and nothing is written. Deciding happens later, in
the decide workers (``ingest/decider.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from mailsvc.crmstore.intake_writer import Decision, IntakeRow, IntakeWriter, Written
from mailsvc.ingest.outcome import DROPPED, Outcome, OutcomeKind, stored_reason
from mailsvc.ingest.parse import mail_key
from mailsvc.ingest.sanitize import clean_json, clean_text
from mailsvc.mail import Envelope, RawMail, Role


class AcceptedRow(Protocol):
    """An intake row as either the SQLite intake file (``IntakeRecord``) or the ORM
    (``IntakeMail``) gives it."""

    @property
    def id(self) -> int: ...
    @property
    def raw(self) -> bytes: ...
    @property
    def mail_from(self) -> str | None: ...
    @property
    def rcpt_tos(self) -> list[Any]: ...
    @property
    def role(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def envelope_extra(self) -> dict[str, Any]: ...
    @property
    def attempts(self) -> int: ...
    @property
    def accepted_at(self) -> datetime: ...

__all__ = [
    "Accepted",
    "AcceptedRow",
    "accept_mails",
    "decided_outcomes",
    "envelope_extra",
    "intake_row",
    "mail_key",
    "raw_of",
]

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


def intake_row(raw: RawMail, key: str) -> IntakeRow:
    """The ``intake`` row of an accepted mail, every text cleaned of what no database takes (an
    odd envelope must never fail the group commit it shares with other mails). Role and source
    are ours, not the client's."""
    envelope = raw.envelope
    return IntakeRow(
        dedup_key=key,
        raw=raw.data,
        mail_from=clean_text(envelope.mail_from) if envelope.mail_from is not None else None,
        rcpt_tos=clean_json(list(envelope.rcpt_tos)),
        role=str(envelope.role),
        source=envelope.source,
        envelope_extra=clean_json(envelope_extra(envelope)),
        accepted_at=datetime.now(UTC),
    )


def raw_of(row: AcceptedRow) -> RawMail:
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


def _outcome(written: Written) -> Outcome:
    if written.new:
        return Outcome("accepted", intake_id=written.id)
    if written.where == "email":
        return Outcome("duplicate", email_id=written.id)
    if written.where == "quarantine":
        return Outcome("duplicate", quarantine_id=written.id)
    return Outcome("duplicate", intake_id=written.id)


async def accept_mails(writer: IntakeWriter, raws: Sequence[RawMail]) -> list[Accepted]:
    """Write the mails to the intake in one transaction: ``accepted`` (with the intake id) or
    ``duplicate`` (already accepted, stored or quarantined, or earlier in ``raws``).

    A concurrent accept of the same key in another process is settled by the UNIQUE key:
    ``ON CONFLICT DO NOTHING`` waits for the other transaction and then answers ``duplicate``.
    Raises ``IntakeUnavailable`` when the database does not take the group.
    """
    keys = [mail_key(raw.data) for raw in raws]
    written = await writer.write([intake_row(raw, key) for raw, key in zip(raws, keys,
                                                                             strict=True)])
    return [Accepted(key, _outcome(w)) for key, w in zip(keys, written, strict=True)]


def outcome_of(decision: Decision) -> Outcome:
    """The outcome a decided mail had, as read back from the store."""
    if decision.quarantine_id is not None:
        return Outcome("quarantined", quarantine_id=decision.quarantine_id,
                       reason=stored_reason(decision.reason or ""))
    kind: OutcomeKind = decision.outcome  # type: ignore[assignment]
    return Outcome(kind, email_id=decision.email_id, message_id=decision.message_id,
                   rule=decision.rule, links=dict(decision.links or {}), notes=decision.notes,
                   automatic=decision.automatic)


async def decided_outcomes(writer: IntakeWriter,
                           accepted: Mapping[int, str]) -> dict[int, Outcome]:
    """The outcomes of accepted mails (intake id -> dedup key) decided since, read back from the
    store by intake id. A mail whose intake row is gone and that was neither stored nor
    quarantined was dropped (a never-log rule)."""
    if not accepted:
        return {}
    present = await writer.still_accepted(list(accepted))
    gone = {i: key for i, key in accepted.items() if i not in present}
    found = await writer.decisions(list(gone.values())) if gone else {}
    return {i: outcome_of(found[key]) if key in found else DROPPED for i, key in gone.items()}
