"""Reprocessing: decide stored mail again from its kept raw bytes and update only its links."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, exists, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import load_only

from mailsvc.crmstore.db import read_session
from mailsvc.crmstore.models import Email, EmailLink
from mailsvc.crmstore.outbox import record_event
from mailsvc.errors import StoreUnavailable
from mailsvc.ingest.applier import (
    CREATED_BY_MAIL,
    LinkRow,
    StoredMail,
    apply_decisions,
    link_row,
    sorted_links,
)
from mailsvc.ingest.outcome import ProcessingFailed
from mailsvc.ingest.pipeline import Pipeline, store_unavailable
from mailsvc.ingest.prepare import Prepared
from mailsvc.ingest.quarantine import raw_mail
from mailsvc.linking.model import LinkDecision, Rule

logger = logging.getLogger(__name__)

REPROCESS_BATCH = 200

Result = Literal["unchanged", "relinked", "would_create_lead", "would_create_ticket", "failed"]
RESULTS: tuple[Result, ...] = (
    "unchanged", "relinked", "would_create_lead", "would_create_ticket", "failed",
)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which stored mails to reprocess; the conditions given are combined (all must hold)."""

    ids: tuple[int, ...] = ()
    unlinked: bool = False
    since: datetime | None = None
    everything: bool = False

    @property
    def empty(self) -> bool:
        return not (self.ids or self.unlinked or self.since or self.everything)


@dataclass(frozen=True, slots=True)
class Reprocessed:
    """What reprocessing did to one mail; ``links`` are all its links afterwards."""

    email_id: int
    result: Result
    rule: str | None = None
    links: tuple[LinkRow, ...] = ()
    previous_links: tuple[LinkRow, ...] = ()
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "email_id": self.email_id,
            "result": self.result,
            "rule": self.rule,
            "links": [link.to_json() for link in self.links],
            "previous_links": [link.to_json() for link in self.previous_links],
        }
        if self.reason is not None:
            body["reason"] = self.reason
        return body


def _conditions(selection: Selection) -> list[ColumnElement[bool]]:
    # Mail whose content was erased or expired has nothing left to decide from.
    conditions: list[ColumnElement[bool]] = [Email.content_removed_at.is_(None)]
    if selection.ids:
        conditions.append(Email.id.in_(selection.ids))
    if selection.since is not None:
        conditions.append(Email.received_at >= selection.since)
    if selection.unlinked:
        has_links = exists().where(EmailLink.email_id == Email.id)
        conditions.append(or_(Email.outcome == "ignored", ~has_links))
    return conditions


async def count_selected(
    sessions: async_sessionmaker[AsyncSession], selection: Selection
) -> int:
    async with read_session(sessions) as session:
        query = select(func.count()).select_from(Email).where(*_conditions(selection))
        return int(await session.scalar(query) or 0)


async def _next_rows(
    sessions: async_sessionmaker[AsyncSession], selection: Selection, after: int, size: int
) -> list[Email]:
    """The next mails by id (arrival order, so a reply is decided after the mail it answers)."""
    query = (
        select(Email)
        .options(load_only(Email.id, Email.raw, Email.envelope_from, Email.envelope_to,
                           Email.intake_role, Email.source, Email.rule))
        .where(Email.id > after, *_conditions(selection))
        .order_by(Email.id)
        .limit(size)
    )
    async with read_session(sessions) as session:
        return list(await session.scalars(query))


async def _missing_ids(
    sessions: async_sessionmaker[AsyncSession], ids: Sequence[int]
) -> list[int]:
    if not ids:
        return []
    async with read_session(sessions) as session:
        found = set(await session.scalars(select(Email.id).where(Email.id.in_(ids))))
    return sorted(set(ids) - found)


def _would_create(decision: LinkDecision, outcome: str) -> Result | None:
    """A record the decision asks for; not the one this mail created already (it is linked)."""
    if decision.kind == "new_lead" and outcome != "lead_created":
        return "would_create_lead"
    if decision.kind == "new_ticket" and outcome != "ticket_created":
        return "would_create_ticket"
    return None


async def _relink(
    session: AsyncSession, mail: StoredMail, decision: LinkDecision
) -> Reprocessed:
    """Apply the decision's links (only records that exist: nothing is created); write nothing
    when they are the same; else update the mail's rule, notes and outcome and record
    ``email.relinked``."""
    assert mail.outcome is not None
    applied = (await apply_decisions(session, [(mail, decision)], create=False))[0]
    would_create = _would_create(decision, mail.outcome)
    if not applied.changed:
        return Reprocessed(mail.id, would_create or "unchanged", decision.rule, applied.before,
                           applied.before)
    new_outcome = (
        mail.outcome if mail.outcome in CREATED_BY_MAIL else ("linked" if applied.after
                                                              else "ignored")
    )
    await session.execute(
        update(Email).where(Email.id == mail.id)
        .values(rule=str(decision.rule), notes=list(decision.notes), outcome=new_outcome)
    )
    await session.flush()
    record_event(session, "email.relinked", {
        "email_id": mail.id, "rule": decision.rule, "notes": list(decision.notes),
        "outcome": new_outcome, "links": [r.to_json() for r in applied.after],
        "previous_links": [r.to_json() for r in applied.before],
    }, subject=f"email/{mail.id}")
    return Reprocessed(mail.id, would_create or "relinked", decision.rule, applied.after,
                       applied.before)


async def _apply(
    session: AsyncSession, pipeline: Pipeline, items: dict[int, Prepared]
) -> list[Reprocessed]:
    """Decide the mails in rounds (as the intake does, so a reply sees the mail it answers
    relinked already) and relink each in this transaction."""
    ids = sorted(items)
    prepared = [items[i] for i in ids]
    links: dict[int, list[EmailLink]] = {i: [] for i in ids}
    for link in await session.scalars(
        select(EmailLink).where(EmailLink.email_id.in_(ids)).order_by(EmailLink.id)
    ):
        links[link.email_id].append(link)
    rows = await session.execute(
        select(Email.id, Email.subject, Email.sent_at, Email.received_at, Email.outcome)
        .where(Email.id.in_(ids))
    )
    mails = {
        email_id: StoredMail(email_id, subject, sent_at, received_at, outcome,
                             tuple(links[email_id]))
        for email_id, subject, sent_at, received_at, outcome in rows
    }
    done: dict[int, Reprocessed] = {}
    for n, item in enumerate(prepared):
        if item.parsed is None:
            before = sorted_links([link_row(link) for link in links[ids[n]]])
            done[ids[n]] = Reprocessed(ids[n], "failed", None, before, before,
                                       item.problem or "unparseable")
    todo = [n for n, item in enumerate(prepared) if item.parsed is not None]
    while todo:
        decided, todo = await pipeline.decide_round(session, prepared, todo)
        for n, decision in decided:
            done[ids[n]] = await _relink(session, mails[ids[n]], decision)
    return [done[i] for i in ids]


async def _batch(
    pipeline: Pipeline, sessions: async_sessionmaker[AsyncSession], rows: Sequence[Email]
) -> list[Reprocessed]:
    """One transaction for the batch; if anything in it fails, mail by mail, so one bad mail is
    reported as failed and the others are relinked."""
    items = {row.id: _as_received(await pipeline.prepare(raw_mail(row)), row) for row in rows}
    try:
        async with sessions() as session, session.begin():
            return await _apply(session, pipeline, items)
    except Exception as exc:
        _raise_if_unavailable(exc)
        logger.warning("reprocess batch of %d redone mail by mail: %r", len(items), exc)
    results: list[Reprocessed] = []
    for email_id, item in items.items():
        try:
            async with sessions() as session, session.begin():
                results += await _apply(session, pipeline, {email_id: item})
        except Exception as exc:
            _raise_if_unavailable(exc)
            logger.exception("reprocessing e-mail %s failed", email_id)
            results.append(Reprocessed(email_id, "failed", reason=ProcessingFailed.of(repr(exc))))
    return results


def _as_received(item: Prepared, row: Email) -> Prepared:
    """The sender verdict of the intake is kept: a mail ignored as ``sender_unverified`` (its
    From one of our users, not verified by the receiving server) stays unverified."""
    return replace(item, sender_verified=row.rule != Rule.SENDER_UNVERIFIED)


def _raise_if_unavailable(exc: Exception) -> None:
    if isinstance(exc, StoreUnavailable):
        raise exc
    if store_unavailable(exc):
        raise StoreUnavailable(f"storage failed: {type(exc).__name__}") from exc


async def reprocess(
    pipeline: Pipeline,
    sessions: async_sessionmaker[AsyncSession],
    selection: Selection,
    *,
    batch_size: int = REPROCESS_BATCH,
    on_batch: Callable[[list[Reprocessed]], None] | None = None,
) -> Counter[Result]:
    """Reprocess the selected mails in batches (one transaction each); returns the count of each
    result. ``on_batch`` sees every batch's results after its commit. Raises StoreUnavailable."""
    counts: Counter[Result] = Counter()

    def report(results: list[Reprocessed]) -> None:
        counts.update(r.result for r in results)
        if on_batch is not None:
            on_batch(results)

    try:
        missing = await _missing_ids(sessions, selection.ids)
        if missing:
            report([Reprocessed(i, "failed", reason="no stored e-mail with this id")
                    for i in missing])
        after = 0
        while rows := await _next_rows(sessions, selection, after, batch_size):
            after = rows[-1].id
            report(await _batch(pipeline, sessions, rows))
    except (SQLAlchemyError, OSError) as exc:
        raise StoreUnavailable(f"storage failed: {type(exc).__name__}") from exc
    return counts
