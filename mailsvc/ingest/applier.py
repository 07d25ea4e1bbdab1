"""The one applier of linking decisions to stored mail, for the intake and for reprocessing.

Both write a decision the same way: the links labelled with the deciding rule, the links a person
made (rule ``manual``) and the link to the record a mail created kept, and a human mail put on its
records' timeline at the time it was sent (else received). The intake (``create=True``) also
creates what the decision asks for (inbox lead, ticket), logs the mail on a ticket and marks
bounced addresses; reprocessing changes links only.

Mail of an archive import (``StoredMail.historical``) is history: what it creates is dated by the
mail, a ticket is made closed, no ticket is reopened, no address is marked bouncing, and the
events its records get say ``"historical": true``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore import intake, services
from mailsvc.crmstore.bulk import insert_rows
from mailsvc.crmstore.models import (
    Activity,
    EmailLink,
    InboxLead,
    LinkTarget,
    Ticket,
    TicketUpdate,
)
from mailsvc.crmstore.outbox import historical_events
from mailsvc.crmstore.services.emails import MANUAL
from mailsvc.ingest.outcome import LINK_NAMES
from mailsvc.ingest.sanitize import clean_text, column_length, fit
from mailsvc.linking.model import LeadDraft, LinkDecision, Links, TicketDraft

# The record a mail created is its own: reapplying keeps that link (and the outcome saying so).
CREATED_BY_MAIL = {"lead_created": LinkTarget.INBOX_LEAD, "ticket_created": LinkTarget.TICKET}

_Key = tuple[LinkTarget, int]


@dataclass(frozen=True, slots=True)
class LinkRow:
    target_type: str
    target_id: int
    rule: str

    def to_json(self) -> dict[str, Any]:
        return {"target_type": self.target_type, "target_id": self.target_id, "rule": self.rule}


@dataclass(frozen=True, slots=True)
class StoredMail:
    """A stored mail as the applier needs it; ``outcome`` and ``links`` are what it had before
    (a new mail: none)."""

    id: int
    subject: str
    sent_at: datetime | None
    received_at: datetime
    outcome: str | None = None
    links: tuple[EmailLink, ...] = ()
    historical: bool = False  # from an archive import

    @property
    def timeline_at(self) -> datetime:
        """When the mail is on the timeline (and the opportunity's last contact)."""
        return self.sent_at or self.received_at


@dataclass(frozen=True, slots=True)
class Applied:
    """A decision as applied (with the ids of records it created) and the mail's links around it;
    ``changed`` is False when the links were the same already and nothing was written."""

    decision: LinkDecision
    before: tuple[LinkRow, ...]
    after: tuple[LinkRow, ...]
    changed: bool
    kept: tuple[LinkRow, ...] = ()


def sorted_links(rows: Sequence[LinkRow]) -> tuple[LinkRow, ...]:
    return tuple(sorted(rows, key=lambda r: (LINK_NAMES.index(r.target_type), r.target_id)))


def link_row(link: EmailLink) -> LinkRow:
    return LinkRow(str(link.target_type), link.target_id, link.rule)


def kept(link: EmailLink, outcome: str | None) -> bool:
    """Links a decision never replaces: made by hand, or to the record this mail created."""
    return link.rule == MANUAL or CREATED_BY_MAIL.get(outcome or "") == link.target_type


def on_timeline(decision: LinkDecision) -> bool:
    """Whether a linked mail belongs on its records' timeline: human mail that was not ignored."""
    return not decision.automatic and decision.kind not in ("ignore", "drop")


async def apply_decisions(
    session: AsyncSession, decided: Sequence[tuple[StoredMail, LinkDecision]], *, create: bool,
) -> list[Applied]:
    """Apply each decision to its stored mail, in stages (one INSERT of links and one of
    timeline entries for the whole group)."""
    assigner = await _assigner(session, [d for _, d in decided]) if create else None
    decisions = (await _create_records(session, decided, assigner) if create
                 else [decision for _, decision in decided])
    applied: list[Applied] = []
    new_links: list[dict[str, Any]] = []
    for (mail, _), decision in zip(decided, decisions, strict=True):
        done, rows = await _relink(session, mail, decision)
        applied.append(done)
        new_links += rows
    if new_links:
        await insert_rows(session, EmailLink, new_links)
    if create:
        await _after_links(session, list(zip((mail for mail, _ in decided), decisions,
                                             strict=True)))
    await _put_on_timeline(session, [
        (mail, done) for (mail, _), done in zip(decided, applied, strict=True)
        if done.changed and len(done.after) > len(done.kept) and on_timeline(done.decision)
    ])
    return applied


async def _assigner(
    session: AsyncSession, decisions: Sequence[LinkDecision]
) -> services.Assigner | None:
    """The loads of the support users, read once for every new ticket of the group that has no
    owner (none read when there is no such ticket)."""
    if any(d.kind == "new_ticket" and d.ticket is not None and d.links.owner is None
           for d in decisions):
        return await services.load_assigner(session)
    return None


async def _create_records(
    session: AsyncSession, decided: Sequence[tuple[StoredMail, LinkDecision]],
    assigner: services.Assigner | None,
) -> list[LinkDecision]:
    """The inbox leads and tickets the decisions ask for (the tickets inserted together); their
    ids join the links. From an archived mail, both are dated by it and the ticket is closed."""
    links = [decision.links for _, decision in decided]
    requests: list[tuple[int, intake.TicketRequest]] = []
    for n, (mail, decision) in enumerate(decided):
        then = mail.timeline_at if mail.historical else None
        if decision.kind == "new_lead" and decision.lead is not None:
            with historical_events(session, mail.historical):
                lead = await _open_lead(session, decision.lead, links[n], then)
            links[n] = replace(links[n], inbox_lead=lead.id)
        elif decision.kind == "new_ticket" and decision.ticket is not None:
            requests.append((n, _ticket_request(decision.ticket, links[n], then,
                                                mail.historical)))
    if requests:
        tickets = await intake.create_tickets_from_mail(
            session, [request for _, request in requests], assigner)
        for (n, _), ticket in zip(requests, tickets, strict=True):
            links[n] = replace(links[n], ticket=ticket)
    return [replace(decision, links=made)
            for (_, decision), made in zip(decided, links, strict=True)]


async def _open_lead(session: AsyncSession, draft: LeadDraft, links: Links,
                     then: datetime | None) -> InboxLead:
    leads = InboxLead.__table__
    return await services.open_inbox_lead(
        session, title=fit(draft.title, column_length(leads, "title")) or "",
        email=fit(draft.email, column_length(leads, "open_key")) or "",
        source=intake.EMAIL_SOURCE,
        first_name=fit(draft.first_name, column_length(leads, "first_name")),
        last_name=fit(draft.last_name, column_length(leads, "last_name")),
        company=fit(draft.company, column_length(leads, "company")),
        phone=fit(draft.phone, column_length(leads, "phone")),
        owner_id=links.owner, account_id=links.account, created_at=then,
    )


def _ticket_request(draft: TicketDraft, links: Links, then: datetime | None,
                    historical: bool) -> intake.TicketRequest:
    tickets = Ticket.__table__
    return intake.TicketRequest(
        subject=fit(draft.subject, column_length(tickets, "subject")) or "",
        description=clean_text(draft.description),
        requester_email=fit(draft.requester_email, column_length(tickets, "requester_email"))
        or "",
        requester_name=fit(draft.requester_name, column_length(tickets, "requester_name")),
        account_id=links.account, contact_id=links.contact, owner_id=links.owner,
        type=draft.type, priority=draft.priority, closed_at=then, historical=historical,
    )


async def _relink(
    session: AsyncSession, mail: StoredMail, decision: LinkDecision
) -> tuple[Applied, list[dict[str, Any]]]:
    """Replace the mail's automatic links by the decision's, labelled with its rule; the rows to
    insert are returned (inserted with the group's). Nothing is written when they are the same."""
    before = sorted_links([link_row(link) for link in mail.links])
    keep = {(link.target_type, link.target_id) for link in mail.links if kept(link, mail.outcome)}
    automatic = {(link.target_type, link.target_id): link for link in mail.links
                 if not kept(link, mail.outcome)}
    wanted: list[_Key] = [
        (LinkTarget(name), target) for name, target in decision.links.as_dict().items()
        if target is not None and (LinkTarget(name), target) not in keep
    ]
    if set(wanted) == set(automatic):
        return Applied(decision, before, before, False), []
    kept_rows = tuple(link_row(link) for link in mail.links if kept(link, mail.outcome))
    rule = str(decision.rule)
    for key, link in automatic.items():
        if key in wanted:
            link.rule = rule
        else:
            await session.delete(link)
    rows = [
        {"email_id": mail.id, "target_type": target_type, "target_id": target_id, "rule": rule}
        for target_type, target_id in wanted if (target_type, target_id) not in automatic
    ]
    after = sorted_links([*kept_rows, *(LinkRow(str(t), i, rule) for t, i in wanted)])
    return Applied(decision, before, after, True, kept_rows), rows


async def _after_links(
    session: AsyncSession, decided: Sequence[tuple[StoredMail, LinkDecision]]
) -> None:
    """What the intake does besides links: the tickets' log entries (inserted together) and the
    bouncing marks (an archived mail reopens nothing and marks nothing: it tells of then, not of
    now)."""
    author_length = column_length(TicketUpdate.__table__, "author")
    entries = [
        intake.TicketLogEntry(
            update.ticket_id, clean_text(update.body), fit(update.author, author_length),
            email_id=mail.id, reopen=update.reopen and not mail.historical,
            at=mail.timeline_at if mail.historical else None, historical=mail.historical,
        )
        for mail, decision in decided
        if decision.kind == "ticket_update" and (update := decision.ticket_update) is not None
    ]
    if entries:
        await intake.append_ticket_updates(session, entries)
    for mail, decision in decided:
        if decision.bounced and not mail.historical:
            await intake.mark_bouncing(session, decision.bounced, mail.id)


def _timeline_links(applied: Applied) -> dict[str, int]:
    """One record of each kind for the timeline entry: a kept link first, then the decision's."""
    chosen = {row.target_type: row.target_id for row in reversed(applied.kept)}
    for name, target in applied.decision.links.as_dict().items():
        if target is not None:
            chosen.setdefault(name, target)
    return chosen


async def _put_on_timeline(
    session: AsyncSession, mails: Sequence[tuple[StoredMail, Applied]]
) -> None:
    """A done e-mail activity on the records' timeline for each mail; a mail that has one already
    gets it completed, not duplicated (an activity on a record it is no longer linked to stays)."""
    if not mails:
        return
    old = [mail.id for mail, _ in mails if mail.outcome is not None]
    existing = {
        activity.email_id: activity for activity in (await session.scalars(
            select(Activity).where(Activity.email_id.in_(old))
        ) if old else ())
    }
    new: list[dict[str, Any]] = []
    touched: dict[int, datetime] = {}
    for mail, applied in mails:
        links = _timeline_links(applied)
        entry = services.email_activity(
            subject=mail.subject, email_id=mail.id, at=mail.timeline_at,
            owner_id=links.get("owner"), opportunity_id=links.get("opportunity"),
            ticket_id=links.get("ticket"), account_id=links.get("account"),
            contact_id=links.get("contact"), inbox_lead_id=links.get("inbox_lead"),
            notes=(applied.decision.reply_text or "")[:4000] or None,
        )
        activity = existing.get(mail.id)
        if activity is None:
            new.append(entry)
            continue
        for field in ("opportunity_id", "ticket_id", "account_id", "contact_id",
                      "inbox_lead_id", "owner_id"):
            setattr(activity, field, getattr(activity, field) or entry[field])
        if activity.opportunity_id is not None:
            touched[activity.opportunity_id] = max(
                touched.get(activity.opportunity_id, mail.timeline_at), mail.timeline_at
            )
    await services.add_email_activities(session, new)
    if touched:
        await session.flush()
        await services.touch_opportunities(session, touched)
