"""The inbox of inbound leads: qualify, archive, create company / person, convert."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import (
    Account,
    Campaign,
    Contact,
    EmailLink,
    InboxLead,
    LeadStatus,
    LinkTarget,
    Opportunity,
    OpportunityKind,
    User,
)
from mailsvc.crmstore.outbox import record_event
from mailsvc.crmstore.services.common import (
    Outcome,
    apply_changes,
    check_choice,
    email_domain,
    ensure_exists,
    get_or_404,
    normalise_email,
)
from mailsvc.crmstore.services.opportunities import create_opportunity
from mailsvc.crmstore.services.people import (
    create_account,
    create_contact,
    find_account_duplicate,
    find_contact_duplicate,
)
from mailsvc.errors import Conflict, RuleViolation
from mailsvc.freemail import is_freemail

LEAD_CATEGORIES = ("cold", "mql", "sql")
LEAD_FIELDS = ("notes", "category", "title", "source", "priority", "status", "owner_id", "company",
               "street", "zip",
               "city", "first_name", "last_name", "email", "phone", "budget", "campaign_id")


def _subject(lead: InboxLead) -> str:
    return f"inbox_lead/{lead.id}"


def _ensure_editable(lead: InboxLead, action: str = "") -> None:
    """A converted or archived lead is closed: doing the same again is a conflict (409), any
    other change a rule violation (422)."""
    if lead.opportunity_id is not None:
        error = Conflict if action == "convert" else RuleViolation
        raise error(f"inbox lead {lead.id} was converted into opportunity "
                    f"{lead.opportunity_id} and is closed")
    if lead.archived:
        error = Conflict if action == "archive" else RuleViolation
        raise error(f"inbox lead {lead.id} is archived")


async def create_inbox_lead(
    session: AsyncSession, title: str, *, source: str = "e-mail", priority: str = "normal",
    owner_id: int | None = None, company: str | None = None, street: str | None = None,
    zip: str | None = None, city: str | None = None, first_name: str | None = None,
    last_name: str | None = None, email: str | None = None, phone: str | None = None,
    budget: Decimal | None = None, campaign_id: int | None = None, notes: str | None = None,
    category: str | None = None,
) -> InboxLead:
    """A lead entered by a person (API): checked, then made by ``open_inbox_lead``. It becomes the
    open lead of its address (the next mail from there goes to it) unless another lead is open
    for that address already."""
    if not title.strip():
        raise RuleViolation("an inbox lead needs a title")
    if budget is not None and budget < 0:
        raise RuleViolation("a budget cannot be negative")
    await ensure_exists(session, User, owner_id, "user")
    await ensure_exists(session, Campaign, campaign_id, "campaign")
    address = normalise_email(email) if email else None
    taken = address is not None and await session.scalar(
        select(InboxLead.id).where(InboxLead.open_key == address)
    ) is not None
    return await open_inbox_lead(
        session, title=title.strip(), email=address, claim_address=not taken,
        source=await check_choice(session, "lead_source", source) or source,
        priority=await check_choice(session, "priority", priority) or priority, owner_id=owner_id,
        company=company, street=street, zip=zip, city=city, first_name=first_name,
        last_name=last_name, phone=phone, budget=budget, campaign_id=campaign_id,
        notes=notes, category=lead_category(category),
    )


def lead_category(value: str | None) -> str | None:
    """The lead category in its stored form (cold, mql, sql), whatever the case; an unknown one
    is refused with the list, on creation and on change alike."""
    if value is None:
        return None
    category = str(value).strip().lower()
    if category not in LEAD_CATEGORIES:
        raise RuleViolation(f"unknown lead category {value!r} (known: "
                            f"{', '.join(LEAD_CATEGORIES)})")
    return category


async def open_inbox_lead(
    session: AsyncSession, *, title: str, email: str | None, claim_address: bool = True,
    source: str = "e-mail", priority: str = "normal", first_name: str | None = None,
    last_name: str | None = None, company: str | None = None, phone: str | None = None,
    owner_id: int | None = None, account_id: int | None = None, street: str | None = None,
    zip: str | None = None, city: str | None = None, budget: Decimal | None = None,
    campaign_id: int | None = None, notes: str | None = None, category: str | None = None,
    created_at: datetime | None = None,
) -> InboxLead:
    """The one way an inbox lead is made (intake and API), with one ``inbox_lead.created`` event.

    With ``claim_address`` the lead's address becomes its open key: the database then holds one
    open lead per address, and mail from it goes to this lead. A concurrent writer that opened a
    lead for the same address first makes the flush raise IntegrityError; the intake retries and
    finds that lead.
    """
    address = normalise_email(email) if email else None
    lead = InboxLead(
        title=title[:300], source=source, priority=priority, status=LeadStatus.NEW,
        email=address, open_key=address if claim_address else None, first_name=first_name,
        last_name=last_name, company=company, phone=phone, owner_id=owner_id,
        account_id=account_id, street=street, zip=zip, city=city, budget=budget,
        campaign_id=campaign_id, notes=notes, category=category,
    )
    if created_at is not None:  # a lead from an archived mail: made when the mail was
        lead.created_at = created_at
    session.add(lead)
    await session.flush()
    record_event(
        session, "inbox_lead.created",
        {"id": lead.id, "title": lead.title, "source": lead.source, "status": str(lead.status),
         "email": address, "first_name": first_name, "last_name": last_name,
         "company": company, "phone": phone, "owner_id": owner_id, "account_id": account_id},
        subject=_subject(lead),
    )
    return lead


async def update_inbox_lead(
    session: AsyncSession, lead_id: int, changes: Mapping[str, Any]
) -> InboxLead:
    lead = await get_or_404(session, InboxLead, lead_id, "inbox lead")
    _ensure_editable(lead)
    changes = dict(changes)
    await ensure_exists(session, User, changes.get("owner_id"), "user")
    await ensure_exists(session, Campaign, changes.get("campaign_id"), "campaign")
    if changes.get("source") is not None:
        changes["source"] = await check_choice(session, "lead_source", changes["source"])
    if changes.get("priority") is not None:
        changes["priority"] = await check_choice(session, "priority", changes["priority"])
    if changes.get("email"):
        changes["email"] = normalise_email(changes["email"])
    if changes.get("budget") is not None and changes["budget"] < 0:
        raise RuleViolation("a budget cannot be negative")
    if changes.get("category") is not None:
        changes["category"] = lead_category(changes["category"])
    for required in ("title", "source", "priority", "status"):
        if required in changes and changes[required] in (None, ""):
            raise RuleViolation(f"an inbox lead needs a {required}")
    before = lead.status
    changed = apply_changes(lead, changes, LEAD_FIELDS)
    if changed:
        await session.flush()
        record_event(session, "inbox_lead.updated", {"id": lead.id, "changed": sorted(changed)},
                     subject=_subject(lead))
        if "status" in changed:
            record_event(session, "inbox_lead.status_changed",
                         {"id": lead.id, "from": str(before), "to": str(lead.status)},
                         subject=_subject(lead))
    return lead


async def archive_inbox_lead(session: AsyncSession, lead_id: int) -> InboxLead:
    """Archive instead of converting; new mail from the sender opens a new lead afterwards."""
    lead = await get_or_404(session, InboxLead, lead_id, "inbox lead")
    _ensure_editable(lead, "archive")
    lead.archived = True
    lead.archived_at = utcnow()
    lead.open_key = None
    await session.flush()
    record_event(session, "inbox_lead.archived", {"id": lead.id}, subject=_subject(lead))
    return lead


async def create_company_from_lead(session: AsyncSession, lead_id: int) -> Outcome[Account]:
    """Create the account from the lead's company data, or link the one that exists already."""
    lead = await get_or_404(session, InboxLead, lead_id, "inbox lead")
    _ensure_editable(lead)
    if lead.account_id is not None:
        account = await get_or_404(session, Account, lead.account_id)
        return Outcome(account, False, f"inbox lead {lead.id} is linked to account "
                                       f"{account.id} ({account.name}) already")
    if not (lead.company or "").strip():
        raise RuleViolation(f"inbox lead {lead.id} has no company name")
    domain = email_domain(lead.email)
    domain = None if domain is None or is_freemail(domain) else domain
    existing = await find_account_duplicate(session, lead.company, domain)
    if existing is not None:
        outcome = Outcome(existing, False,
                          f"company {existing.name!r} exists already (account {existing.id}): "
                          "linked instead of created")
    else:
        account = await create_account(
            session, lead.company or "", [domain] if domain else [], owner_id=lead.owner_id,
            street=lead.street, zip=lead.zip, city=lead.city,
        )
        outcome = Outcome(account, True)
    lead.account_id = outcome.record.id
    if lead.contact_id is not None:  # person first, company second: link them now
        contact = await get_or_404(session, Contact, lead.contact_id)
        if contact.account_id is None:
            contact.account_id = outcome.record.id
    await session.flush()
    record_event(session, "inbox_lead.company_linked",
                 {"id": lead.id, "account_id": outcome.record.id, "created": outcome.created},
                 subject=_subject(lead))
    return outcome


async def create_person_from_lead(session: AsyncSession, lead_id: int) -> Outcome[Contact]:
    """Create the contact from the lead's person data (linked to the lead's company, if any)."""
    lead = await get_or_404(session, InboxLead, lead_id, "inbox lead")
    _ensure_editable(lead)
    if lead.contact_id is not None:
        contact = await get_or_404(session, Contact, lead.contact_id)
        return Outcome(contact, False,
                       f"inbox lead {lead.id} is linked to contact {contact.id} already")
    if not (lead.last_name or "").strip() and not lead.email:
        raise RuleViolation(f"inbox lead {lead.id} has neither a last name nor an e-mail address")
    existing = await find_contact_duplicate(session, lead.email, lead.first_name, lead.last_name,
                                            lead.account_id)
    if existing is not None:
        name = " ".join(p for p in (existing.first_name, existing.last_name) if p)
        outcome = Outcome(existing, False, f"person {name!r} exists already (contact "
                                           f"{existing.id}): linked instead of created")
        if existing.account_id is None and lead.account_id is not None:
            existing.account_id = lead.account_id
    else:
        last_name = (lead.last_name or "").strip() or (lead.email or "").split("@")[0]
        contact = await create_contact(
            session, last_name, lead.email, first_name=lead.first_name,
            account_id=lead.account_id, owner_id=lead.owner_id, phone=lead.phone,
        )
        outcome = Outcome(contact, True)
    lead.contact_id = outcome.record.id
    await session.flush()
    record_event(session, "inbox_lead.person_linked",
                 {"id": lead.id, "contact_id": outcome.record.id, "created": outcome.created},
                 subject=_subject(lead))
    return outcome


async def convert_inbox_lead(
    session: AsyncSession, lead_id: int, *, kind: OpportunityKind = OpportunityKind.LEAD,
    pipeline_id: int | None = None, owner_id: int | None = None,
    create_company: bool = False, create_person: bool = False,
) -> tuple[Opportunity, list[str]]:
    """Turn the lead into an opportunity; title, budget and contact data are carried over.

    ``qualified_at`` is set once, here. The lead keeps a link to the opportunity, and its
    e-mails appear on the opportunity's timeline. Returns the opportunity and any warnings.
    """
    lead = await get_or_404(session, InboxLead, lead_id, "inbox lead")
    _ensure_editable(lead, "convert")
    warnings: list[str] = []
    if create_company and lead.company:
        company = await create_company_from_lead(session, lead_id)
        warnings += [company.warning] if company.warning else []
    if create_person and (lead.last_name or lead.email):
        person = await create_person_from_lead(session, lead_id)
        warnings += [person.warning] if person.warning else []
    opportunity = await create_opportunity(
        session, lead.title, account_id=lead.account_id, contact_id=lead.contact_id,
        owner_id=owner_id if owner_id is not None else lead.owner_id, amount=lead.budget,
        kind=kind, pipeline_id=pipeline_id, source=lead.source, priority=lead.priority,
        campaign_id=lead.campaign_id, description=lead.notes,
    )
    now = utcnow()
    lead.opportunity_id = opportunity.id
    lead.qualified_at = lead.qualified_at or now
    lead.status = LeadStatus.DONE
    lead.open_key = None
    links = await session.scalars(
        select(EmailLink.email_id).where(EmailLink.target_type == LinkTarget.INBOX_LEAD,
                                         EmailLink.target_id == lead.id)
    )
    for email_id in links:
        session.add(EmailLink(email_id=email_id, target_type=LinkTarget.OPPORTUNITY,
                              target_id=opportunity.id, rule="inbox-lead-converted"))
    await session.flush()
    record_event(session, "inbox_lead.converted",
                 {"id": lead.id, "opportunity_id": opportunity.id,
                  "account_id": lead.account_id, "contact_id": lead.contact_id},
                 subject=_subject(lead))
    return opportunity, warnings
