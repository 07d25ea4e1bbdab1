"""Reprocessing: decide stored mail again from its kept raw bytes and update only its links."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, exists, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import load_only

from mailsvc.crmstore import services
from mailsvc.crmstore.db import read_session
from mailsvc.crmstore.models import Email, EmailLink, LinkTarget
from mailsvc.crmstore.outbox import record_event
from mailsvc.crmstore.services.emails import MANUAL
from mailsvc.errors import StoreUnavailable
from mailsvc.ingest.outcome import LINK_NAMES
from mailsvc.ingest.pipeline import Pipeline, store_unavailable
from mailsvc.ingest.quarantine import raw_mail
from mailsvc.ingest.store import Prepared
from mailsvc.linking.model import LinkDecision

logger = logging.getLogger(__name__)

REPROCESS_BATCH = 200

Result = Literal["unchanged", "relinked", "would_create_lead", "would_create_ticket", "failed"]
RESULTS: tuple[Result, ...] = (
    "unchanged", "relinked", "would_create_lead", "would_create_ticket", "failed",
)
# The record a mail created is its own: reprocessing keeps that link (and the outcome saying so).
CREATED_BY_MAIL = {"lead_created": LinkTarget.INBOX_LEAD, "ticket_created": LinkTarget.TICKET}


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
class LinkRow:
    target_type: str
    target_id: int
    rule: str

    def to_json(self) -> dict[str, Any]:
        return {"target_type": self.target_type, "target_id": self.target_id, "rule": self.rule}


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
                           Email.intake_role, Email.source))
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


def _row(link: EmailLink) -> LinkRow:
    return LinkRow(str(link.target_type), link.target_id, link.rule)


def _sorted(rows: Sequence[LinkRow]) -> tuple[LinkRow, ...]:
    return tuple(sorted(rows, key=lambda r: (LINK_NAMES.index(r.target_type), r.target_id)))


def _kept(link: EmailLink, outcome: str) -> bool:
    """Links reprocessing never touches: made by hand, or to the record this mail created."""
    return link.rule == MANUAL or CREATED_BY_MAIL.get(outcome) == link.target_type


def _would_create(decision: LinkDecision, outcome: str) -> Result | None:
    """A record the decision asks for; not the one this mail created already (it is linked)."""
    if decision.kind == "new_lead" and outcome != "lead_created":
        return "would_create_lead"
    if decision.kind == "new_ticket" and outcome != "ticket_created":
        return "would_create_ticket"
    return None


async def _relink(
    session: AsyncSession, email_id: int, outcome: str, decision: LinkDecision,
    links: Sequence[EmailLink],
) -> Reprocessed:
    """Replace the mail's automatic links by the decision's (only records that exist: nothing is
    created); write nothing when they are the same."""
    before = _sorted([_row(link) for link in links])
    kept = {(link.target_type, link.target_id) for link in links if _kept(link, outcome)}
    automatic = {(link.target_type, link.target_id): link for link in links
                 if not _kept(link, outcome)}
    wanted = [(LinkTarget(name), target) for name, target in decision.links.as_dict().items()
              if target is not None and (LinkTarget(name), target) not in kept]
    would_create = _would_create(decision, outcome)
    if set(wanted) == set(automatic):
        return Reprocessed(email_id, would_create or "unchanged", decision.rule, before, before)
    rule = decision.rule or "address"  # as the intake names the links of a rule-less decision
    for key, link in automatic.items():
        if key in wanted:
            link.rule = rule
        else:
            await session.delete(link)
    session.add_all(
        EmailLink(email_id=email_id, target_type=target_type, target_id=target_id, rule=rule)
        for target_type, target_id in wanted if (target_type, target_id) not in automatic
    )
    after = _sorted([*(r for r in before if (LinkTarget(r.target_type), r.target_id) in kept),
                     *(LinkRow(str(t), i, rule) for t, i in wanted)])
    new_outcome = outcome if outcome in CREATED_BY_MAIL else ("linked" if after else "ignored")
    await session.execute(
        update(Email).where(Email.id == email_id)
        .values(rule=decision.rule, notes=list(decision.notes), outcome=new_outcome)
    )
    await session.flush()
    record_event(session, "email.relinked", {
        "email_id": email_id, "rule": decision.rule, "notes": list(decision.notes),
        "outcome": new_outcome, "links": [r.to_json() for r in after],
        "previous_links": [r.to_json() for r in before],
    }, subject=f"email/{email_id}")
    # The timeline as the intake would have it: no machine mail, nothing for an ignored one.
    if wanted and not decision.automatic and decision.kind != "ignore":
        await services.log_email_activity(session, email_id)
    return Reprocessed(email_id, would_create or "relinked", decision.rule, after, before)


async def _apply(
    session: AsyncSession, pipeline: Pipeline, items: dict[int, Prepared]
) -> list[Reprocessed]:
    """Decide the mails in rounds (as the intake does, so a reply sees the mail it answers
    relinked already) and relink each in this transaction."""
    ids = sorted(items)
    prepared = [items[i] for i in ids]
    rows = await session.execute(select(Email.id, Email.outcome).where(Email.id.in_(ids)))
    outcomes = {email_id: outcome for email_id, outcome in rows}
    links: dict[int, list[EmailLink]] = {i: [] for i in ids}
    for link in await session.scalars(
        select(EmailLink).where(EmailLink.email_id.in_(ids)).order_by(EmailLink.id)
    ):
        links[link.email_id].append(link)
    done: dict[int, Reprocessed] = {}
    for n, item in enumerate(prepared):
        if item.parsed is None:
            before = _sorted([_row(link) for link in links[ids[n]]])
            done[ids[n]] = Reprocessed(ids[n], "failed", None, before, before,
                                       item.problem or "unparseable")
    todo = [n for n, item in enumerate(prepared) if item.parsed is not None]
    while todo:
        decided, todo = await pipeline.decide_round(session, prepared, todo)
        for n, decision in decided:
            email_id = ids[n]
            done[email_id] = await _relink(
                session, email_id, outcomes[email_id], decision, links[email_id]
            )
    return [done[i] for i in ids]


async def _batch(
    pipeline: Pipeline, sessions: async_sessionmaker[AsyncSession], rows: Sequence[Email]
) -> list[Reprocessed]:
    """One transaction for the batch; if anything in it fails, mail by mail, so one bad mail is
    reported as failed and the others are relinked."""
    items = {row.id: await pipeline.prepare(raw_mail(row)) for row in rows}
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
            results.append(Reprocessed(email_id, "failed", reason=f"processing error: {exc!r}"))
    return results


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
