"""Activities (call, e-mail, meeting, task), activity plans, and mail on the timeline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.bulk import insert_rows
from mailsvc.crmstore.models import (
    Account,
    Activity,
    ActivityPlanStep,
    ActivityType,
    Contact,
    Email,
    EmailLink,
    InboxLead,
    LinkTarget,
    Opportunity,
    OpportunityStatus,
    Ticket,
    User,
)
from mailsvc.crmstore.outbox import record_event
from mailsvc.crmstore.services.common import (
    actor_id,
    apply_changes,
    ensure_exists,
    get_or_404,
    same_account,
)
from mailsvc.errors import Conflict, RuleViolation

ACTIVITY_FIELDS = ("type", "subject", "notes", "due_at", "owner_id", "opportunity_id",
                   "ticket_id", "account_id", "contact_id", "inbox_lead_id")
# Activities that count as contact with the customer (they reset the traffic light).
CONTACT_TYPES = frozenset({ActivityType.CALL, ActivityType.EMAIL, ActivityType.MEETING})


async def _check_links(session: AsyncSession, fields: Mapping[str, Any]) -> int | None:
    """The linked records exist and agree on the account; returns that account."""
    await ensure_exists(session, User, fields.get("owner_id"), "user")
    await ensure_exists(session, Opportunity, fields.get("opportunity_id"), "opportunity")
    await ensure_exists(session, Ticket, fields.get("ticket_id"), "ticket")
    await ensure_exists(session, Account, fields.get("account_id"), "account")
    await ensure_exists(session, Contact, fields.get("contact_id"), "contact")
    await ensure_exists(session, InboxLead, fields.get("inbox_lead_id"), "inbox lead")
    return await same_account(
        session, fields.get("account_id"), opportunity_id=fields.get("opportunity_id"),
        ticket_id=fields.get("ticket_id"), contact_id=fields.get("contact_id"))


async def _taken_over(session: AsyncSession, fields: dict[str, Any]) -> dict[str, Any]:
    """An activity on an opportunity or ticket belongs to its account and contact too, so it
    shows in their history (unless the activity names them itself)."""
    account_id = await _check_links(session, fields)
    fields["account_id"] = fields.get("account_id") or account_id
    for model, key in ((Opportunity, "opportunity_id"), (Ticket, "ticket_id")):
        if fields.get(key) is not None and fields.get("contact_id") is None:
            record = await get_or_404(session, model, fields[key])
            fields["contact_id"] = getattr(record, "contact_id", None)
    return fields


async def _touch_opportunity(
    session: AsyncSession, opportunity_id: int | None, when: datetime
) -> None:
    if opportunity_id is None:
        return
    opportunity = await session.get(Opportunity, opportunity_id)
    if opportunity is not None and (opportunity.last_contact_at is None
                                    or opportunity.last_contact_at < when):
        opportunity.last_contact_at = when


async def create_activity(
    session: AsyncSession, type: ActivityType, subject: str, *, notes: str | None = None,
    due_at: datetime | None = None, done: bool = False, owner_id: int | None = None,
    opportunity_id: int | None = None, ticket_id: int | None = None,
    account_id: int | None = None, contact_id: int | None = None,
    inbox_lead_id: int | None = None,
) -> Activity:
    if not subject.strip():
        raise RuleViolation("an activity needs a subject")
    fields = await _taken_over(session, {
        "owner_id": owner_id, "opportunity_id": opportunity_id, "ticket_id": ticket_id,
        "account_id": account_id, "contact_id": contact_id, "inbox_lead_id": inbox_lead_id})
    now = utcnow()
    activity = Activity(type=type, subject=subject.strip(), notes=notes, due_at=due_at,
                        done=done, done_at=now if done else None,
                        created_by_id=actor_id(session), **fields)
    session.add(activity)
    if done and type in CONTACT_TYPES:
        await _touch_opportunity(session, opportunity_id, now)
    await session.flush()
    record_event(session, "activity.created",
                 {"id": activity.id, "type": str(type), "opportunity_id": opportunity_id,
                  "ticket_id": ticket_id}, subject=f"activity/{activity.id}")
    return activity


async def update_activity(
    session: AsyncSession, activity_id: int, changes: Mapping[str, Any]
) -> Activity:
    activity = await get_or_404(session, Activity, activity_id)
    changes = dict(changes)
    done = changes.pop("done", None)
    merged = {name: getattr(activity, name) for name in
              ("opportunity_id", "ticket_id", "account_id", "contact_id")}
    merged.update(changes)
    await _check_links(session, merged)
    if "subject" in changes and not (changes["subject"] or "").strip():
        raise RuleViolation("an activity needs a subject")
    changed = apply_changes(activity, changes, ACTIVITY_FIELDS)
    if done is True and not activity.done:
        await complete_activity(session, activity_id)
        changed["done"] = True
    elif done is False and activity.done:
        activity.done = False
        activity.done_at = None
        changed["done"] = False
    if changed:
        await session.flush()
        record_event(session, "activity.updated", {"id": activity.id, "changed": sorted(changed)},
                     subject=f"activity/{activity.id}")
    return activity


async def complete_activity(session: AsyncSession, activity_id: int) -> Activity:
    activity = await get_or_404(session, Activity, activity_id)
    if activity.done:
        raise Conflict(f"activity {activity_id} is done already")
    now = utcnow()
    activity.done = True
    activity.done_at = now
    if activity.type in CONTACT_TYPES:
        await _touch_opportunity(session, activity.opportunity_id, now)
    await session.flush()
    record_event(session, "activity.completed", {"id": activity.id},
                 subject=f"activity/{activity.id}")
    return activity


async def delete_activity(session: AsyncSession, activity_id: int) -> None:
    """Delete an activity entered by hand; a mail's activity goes with its links instead."""
    activity = await get_or_404(session, Activity, activity_id)
    if activity.email_id is not None:
        raise RuleViolation(f"activity {activity_id} is e-mail {activity.email_id} on the "
                            "timeline: unlink the e-mail instead")
    await session.delete(activity)
    await session.flush()
    record_event(session, "activity.deleted",
                 {"id": activity_id, "opportunity_id": activity.opportunity_id,
                  "ticket_id": activity.ticket_id}, subject=f"activity/{activity_id}")


async def schedule_activity_plan(
    session: AsyncSession, opportunity_id: int, start: date, owner_id: int | None = None,
) -> list[Activity]:
    """Schedule the pipeline's standard tasks in order, each ``offset_days`` after ``start``."""
    opportunity = await get_or_404(session, Opportunity, opportunity_id)
    if opportunity.status != OpportunityStatus.OPEN:
        raise RuleViolation(f"opportunity {opportunity_id} is {opportunity.status}: no activity "
                            "plan for it")
    if opportunity.pipeline_id is None:
        raise RuleViolation(f"opportunity {opportunity_id} is in no pipeline, so it has no "
                            "activity plan")
    planned = await session.scalar(
        select(Activity.id).where(Activity.opportunity_id == opportunity_id,
                                  Activity.plan_step_id.is_not(None)).limit(1))
    if planned is not None:
        raise Conflict(f"the activity plan of opportunity {opportunity_id} is scheduled already "
                       f"(activity {planned}); delete its activities to schedule it again")
    steps = list(await session.scalars(
        select(ActivityPlanStep).where(ActivityPlanStep.pipeline_id == opportunity.pipeline_id)
        .order_by(ActivityPlanStep.offset_days, ActivityPlanStep.position)
    ))
    if not steps:
        raise RuleViolation(f"pipeline {opportunity.pipeline_id} has no activity plan")
    owner = owner_id if owner_id is not None else opportunity.owner_id
    await ensure_exists(session, User, owner, "user")
    start_at = datetime.combine(start, time(9, 0), tzinfo=UTC)
    created = [
        Activity(type=step.type, subject=step.subject,
                 due_at=start_at + timedelta(days=step.offset_days),
                 owner_id=owner, opportunity_id=opportunity.id,
                 account_id=opportunity.account_id, contact_id=opportunity.contact_id,
                 plan_step_id=step.id, created_by_id=actor_id(session))
        for step in steps
    ]
    session.add_all(created)
    if opportunity.start_date is None:
        opportunity.start_date = start
    await session.flush()
    record_event(session, "activity_plan.scheduled",
                 {"opportunity_id": opportunity.id, "start": start.isoformat(),
                  "activity_ids": [a.id for a in created]},
                 subject=f"opportunity/{opportunity.id}")
    return created


def email_activity(
    *, email_id: int, subject: str, at: datetime, owner_id: int | None = None,
    opportunity_id: int | None = None, ticket_id: int | None = None,
    account_id: int | None = None, contact_id: int | None = None,
    inbox_lead_id: int | None = None, notes: str | None = None,
) -> dict[str, Any]:
    """What a mail on its records' timelines is: the values of a done e-mail activity."""
    return {
        "type": ActivityType.EMAIL, "subject": (subject or "(no subject)")[:500], "notes": notes,
        "done": True, "done_at": at, "due_at": None, "owner_id": owner_id,
        "opportunity_id": opportunity_id, "ticket_id": ticket_id, "account_id": account_id,
        "contact_id": contact_id, "inbox_lead_id": inbox_lead_id, "email_id": email_id,
        "plan_step_id": None,
    }


async def add_email_activity(
    session: AsyncSession, *, email_id: int, subject: str, at: datetime,
    owner_id: int | None = None, opportunity_id: int | None = None,
    ticket_id: int | None = None, account_id: int | None = None, contact_id: int | None = None,
    inbox_lead_id: int | None = None, notes: str | None = None,
) -> Activity:
    """The mail on its records' timelines: a done e-mail activity. The opportunity's last contact
    moves to the mail's time, which resets its traffic light."""
    activity = Activity(**email_activity(
        email_id=email_id, subject=subject, at=at, owner_id=owner_id,
        opportunity_id=opportunity_id, ticket_id=ticket_id, account_id=account_id,
        contact_id=contact_id, inbox_lead_id=inbox_lead_id, notes=notes,
    ))
    session.add(activity)
    await _touch_opportunity(session, opportunity_id, at)
    await session.flush()
    return activity


async def add_email_activities(
    session: AsyncSession, activities: Sequence[Mapping[str, Any]]
) -> None:
    """Many e-mail activities (``email_activity`` values) at once, as the intake stores a group of
    mails: one INSERT for all, one UPDATE for all the opportunities' last contact."""
    if not activities:
        return
    await insert_rows(session, Activity, activities)
    latest: dict[int, datetime] = {}
    for activity in activities:
        oid, at = activity["opportunity_id"], activity["done_at"]
        if oid is not None:
            latest[oid] = max(latest[oid], at) if oid in latest else at
    await touch_opportunities(session, latest)


async def touch_opportunities(session: AsyncSession, contacts: Mapping[int, datetime]) -> None:
    """Move each opportunity's last contact forward to the given time (never backwards), without
    loading the opportunities: one UPDATE, executed for all of them at once."""
    if not contacts:
        return
    # The table, not the entity: an ORM UPDATE by primary key takes no extra WHERE criteria.
    table = cast(Table, Opportunity.__table__)
    statement = (
        update(table)
        .where(
            table.c.id == bindparam("oid"),
            or_(table.c.last_contact_at.is_(None), table.c.last_contact_at < bindparam("when")),
        )
        .values(last_contact_at=bindparam("when"))
    )
    params = [{"oid": oid, "when": when} for oid, when in sorted(contacts.items())]
    await session.execute(statement, params)


async def log_email_activity(session: AsyncSession, email_id: int) -> Activity:
    """Put a stored mail on the timelines of the records it is linked to (idempotent): used after
    a link made by hand; the intake, which knows the links already, calls add_email_activity."""
    email = await get_or_404(session, Email, email_id, "e-mail")
    links = list(await session.execute(
        select(EmailLink.target_type, EmailLink.target_id).where(EmailLink.email_id == email_id)
        .order_by(EmailLink.id)
    ))
    first: dict[LinkTarget, int] = {}
    for target_type, target_id in links:
        first.setdefault(target_type, target_id)
    when = email.sent_at or email.received_at
    activity = await session.scalar(select(Activity).where(Activity.email_id == email_id))
    if activity is None:
        return await add_email_activity(
            session, email_id=email_id, subject=email.subject, at=when,
            owner_id=first.get(LinkTarget.OWNER),
            opportunity_id=first.get(LinkTarget.OPPORTUNITY),
            ticket_id=first.get(LinkTarget.TICKET), account_id=first.get(LinkTarget.ACCOUNT),
            contact_id=first.get(LinkTarget.CONTACT),
            inbox_lead_id=first.get(LinkTarget.INBOX_LEAD),
        )
    activity.opportunity_id = activity.opportunity_id or first.get(LinkTarget.OPPORTUNITY)
    activity.ticket_id = activity.ticket_id or first.get(LinkTarget.TICKET)
    activity.account_id = activity.account_id or first.get(LinkTarget.ACCOUNT)
    activity.contact_id = activity.contact_id or first.get(LinkTarget.CONTACT)
    activity.inbox_lead_id = activity.inbox_lead_id or first.get(LinkTarget.INBOX_LEAD)
    activity.owner_id = activity.owner_id or first.get(LinkTarget.OWNER)
    await _touch_opportunity(session, activity.opportunity_id, when)
    await session.flush()
    return activity
