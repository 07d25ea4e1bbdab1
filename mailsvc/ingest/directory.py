"""The read-only lookup port over the store: answers a linking Wanted with Facts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.models import (
    Account,
    AccountDomain,
    Contact,
    ContactEmail,
    Email,
    EmailLink,
    InboxLead,
    LinkTarget,
    NeverLogRule,
    Opportunity,
    OpportunityStatus,
    Ticket,
    TicketStatus,
    User,
    UserEmail,
)
from mailsvc.linking.model import (
    AccountRef,
    ContactRef,
    Fact,
    Facts,
    RecordRef,
    ThreadRef,
    UserRef,
    Wanted,
)
from mailsvc.linking.references import RecordId
from mailsvc.linking.resolve import pattern_keys, user_domains
from mailsvc.linking.rules import CHAIN_READS
from mailsvc.mail import ARCHIVE_SOURCE

OPEN_TICKET = (TicketStatus.OPEN, TicketStatus.IN_PROGRESS)


async def load_facts(
    session: AsyncSession, want: Wanted, default_owner_email: str | None = None,
    reads: frozenset[Fact] = CHAIN_READS, *, since: datetime | None = None,
) -> Facts:
    owners = (default_owner_email,) if default_owner_email else ()
    facts, owner_ids = await load_batch_facts(session, want, owners, reads, since=since)
    return replace(facts, default_owner_id=owner_ids.get(default_owner_email or ""))


async def load_batch_facts(
    session: AsyncSession, want: Wanted, owner_emails: Iterable[str] = (),
    reads: frozenset[Fact] = CHAIN_READS, *, since: datetime | None = None,
) -> tuple[Facts, dict[str, int]]:
    """The facts the rules read (``reads``: what the chain declares, ``rules.CHAIN_READS``) for
    ``want`` (a group's merged Wanted is fine: every value is a keyed lookup), and the user ids of
    ``owner_emails`` (the default owners), in the same queries. ``since``: the start of the loop
    guard's window (no counts without it)."""
    owner_emails = tuple(owner_emails)
    emails = sorted(want.emails)
    users = await _users(session, sorted(want.emails | set(owner_emails)))
    open_records = reads & {Fact.OPEN_OPPORTUNITIES, Fact.OPEN_TICKETS}
    contacts = await _contacts(session, emails) if Fact.CONTACTS in reads or open_records else {}
    contact_ids = sorted({c.id for cs in contacts.values() for c in cs})
    by_domain = (
        await _accounts_by_domain(session, sorted(want.domains))
        if Fact.ACCOUNTS_BY_DOMAIN in reads else {}
    )
    thread = await _thread(session, want.message_ids) if Fact.THREAD in reads else ()
    open_opportunities = (
        await _open_opportunities(session, contact_ids)
        if Fact.OPEN_OPPORTUNITIES in reads else {}
    )
    open_tickets = (
        await _open_tickets(session, contact_ids) if Fact.OPEN_TICKETS in reads else {}
    )
    records = await _records(session, _record_ids(want, thread, open_opportunities, open_tickets))
    account_ids = {c.account_id for cs in contacts.values() for c in cs if c.account_id}
    account_ids |= {a.id for accounts in by_domain.values() for a in accounts}
    account_ids |= {r.account_id for r in records.values() if r.account_id}
    facts = Facts(
        users={e: u for e, u in users.items() if e in want.emails},
        user_domains=await _user_domains(session) if Fact.USER_DOMAINS in reads else frozenset(),
        contacts=contacts if Fact.CONTACTS in reads else {},
        accounts_by_domain=by_domain,
        accounts=await _accounts(session, sorted(account_ids)) if Fact.ACCOUNTS in reads else {},
        records=records if Fact.RECORDS in reads else {},
        thread=thread,
        open_opportunities=open_opportunities,
        open_tickets=open_tickets,
        open_leads=await _open_leads(session, emails) if Fact.OPEN_LEADS in reads else {},
        never_log=await _never_log(session, want) if Fact.NEVER_LOG in reads else frozenset(),
        recent_mail=(
            await _recent_mail(session, sorted(want.senders - set(users)), since)
            if Fact.RECENT_MAIL in reads and since is not None else {}
        ),
    )
    return facts, {e: users[e].id for e in owner_emails if e in users}


def _record_ids(
    want: Wanted, thread: tuple[ThreadRef, ...], open_opportunities: dict[int, tuple[int, ...]],
    open_tickets: dict[int, tuple[int, ...]],
) -> tuple[RecordId, ...]:
    """The records named, and those a thread or a contact's open records point to."""
    record_ids = dict.fromkeys(want.record_ids)
    for ref in thread:
        if ref.opportunity_id:
            record_ids.setdefault(RecordId("opportunity", ref.opportunity_id))
        if ref.ticket_id:
            record_ids.setdefault(RecordId("ticket", ref.ticket_id))
    for ids in open_opportunities.values():
        record_ids.update(dict.fromkeys(RecordId("opportunity", i) for i in ids))
    for ids in open_tickets.values():
        record_ids.update(dict.fromkeys(RecordId("ticket", i) for i in ids))
    return tuple(record_ids)


async def _user_domains(session: AsyncSession) -> frozenset[str]:
    """The domains of all active users' addresses, freemail left out (our own company's)."""
    rows = await session.scalars(
        select(UserEmail.email).join(User, User.id == UserEmail.user_id)
        .where(User.active.is_(True))
    )
    return user_domains(rows)


async def _users(session: AsyncSession, emails: list[str]) -> dict[str, UserRef]:
    if not emails:
        return {}
    rows = await session.execute(
        select(UserEmail.email, User.id, User.email)
        .join(User, User.id == UserEmail.user_id)
        .where(UserEmail.email.in_(emails), User.active.is_(True))
    )
    return {alias: UserRef(uid, primary) for alias, uid, primary in rows}


async def _contacts(session: AsyncSession, emails: list[str]) -> dict[str, tuple[ContactRef, ...]]:
    if not emails:
        return {}
    rows = await session.execute(
        select(ContactEmail.email, Contact.id, Contact.account_id, Contact.owner_id)
        .join(Contact, Contact.id == ContactEmail.contact_id)
        .where(ContactEmail.email.in_(emails), Contact.active.is_(True))
        .order_by(Contact.id)
    )
    found: dict[str, list[ContactRef]] = defaultdict(list)
    for email, cid, account_id, owner_id in rows:
        found[email].append(ContactRef(cid, account_id, owner_id, email))
    return {email: tuple(refs) for email, refs in found.items()}


async def _accounts_by_domain(
    session: AsyncSession, domains: list[str]
) -> dict[str, tuple[AccountRef, ...]]:
    if not domains:
        return {}
    rows = await session.execute(
        select(AccountDomain.domain, Account.id, Account.owner_id, Account.name)
        .join(Account, Account.id == AccountDomain.account_id)
        .where(AccountDomain.domain.in_(domains))
        .order_by(Account.id)
    )
    found: dict[str, list[AccountRef]] = defaultdict(list)
    for domain, aid, owner_id, name in rows:
        found[domain].append(AccountRef(aid, owner_id, name))
    return {domain: tuple(refs) for domain, refs in found.items()}


async def _accounts(session: AsyncSession, ids: list[int]) -> dict[int, AccountRef]:
    if not ids:
        return {}
    rows = await session.execute(
        select(Account.id, Account.owner_id, Account.name).where(Account.id.in_(ids))
    )
    return {aid: AccountRef(aid, owner_id, name) for aid, owner_id, name in rows}


async def _never_log(session: AsyncSession, want: Wanted) -> frozenset[str]:
    """The never-log rules naming an address of ``want`` or its domain (or a parent domain):
    a keyed lookup, so the list may be long and the check stays cheap."""
    keys = sorted({key for email in want.emails for key in pattern_keys(email)})
    if not keys:
        return frozenset()
    return frozenset(await session.scalars(
        select(NeverLogRule.pattern).where(NeverLogRule.pattern.in_(keys))
    ))


async def _recent_mail(
    session: AsyncSession, senders: list[str], since: datetime
) -> dict[tuple[str, str], int]:
    """Mails stored from ``senders`` (header From) since ``since`` (their received time): per
    intake role, and per opportunity or ticket they are linked to. Users' mail is not counted."""
    if not senders:
        return {}
    # Archive mail is history: it was received long ago, whatever its row says.
    recent = (Email.from_email.in_(senders), Email.received_at >= since,
              Email.source != ARCHIVE_SOURCE)
    counted: dict[tuple[str, str], int] = {}
    by_role = await session.execute(
        select(Email.from_email, Email.intake_role, func.count())
        .where(*recent).group_by(Email.from_email, Email.intake_role)
    )
    for sender, role, count in by_role:
        counted[(str(sender), f"role:{role}")] = int(count)
    by_record = await session.execute(
        select(Email.from_email, EmailLink.target_type, EmailLink.target_id, func.count())
        .join(EmailLink, EmailLink.email_id == Email.id)
        .where(*recent, EmailLink.target_type.in_([LinkTarget.OPPORTUNITY, LinkTarget.TICKET]))
        .group_by(Email.from_email, EmailLink.target_type, EmailLink.target_id)
    )
    for sender, target_type, target_id, count in by_record:
        counted[(str(sender), f"{target_type}:{target_id}")] = int(count)
    return counted


async def _open_leads(session: AsyncSession, emails: list[str]) -> dict[str, int]:
    """Inbox leads still open for these addresses (the open key is cleared when a lead closes)."""
    if not emails:
        return {}
    rows = await session.execute(
        select(InboxLead.open_key, InboxLead.id).where(InboxLead.open_key.in_(emails))
    )
    return {key: lead_id for key, lead_id in rows if key is not None}


async def _records(session: AsyncSession, ids: tuple[RecordId, ...]) -> dict[RecordId, RecordRef]:
    found: dict[RecordId, RecordRef] = {}
    opp_numbers = [i.number for i in ids if i.kind == "opportunity"]
    ticket_numbers = [i.number for i in ids if i.kind == "ticket"]
    if opp_numbers:
        rows = await session.execute(
            select(
                Opportunity.id, Opportunity.status, Opportunity.account_id,
                Opportunity.contact_id, Opportunity.owner_id,
            ).where(Opportunity.id.in_(opp_numbers))
        )
        for oid, status, account_id, contact_id, owner_id in rows:
            ref = RecordId("opportunity", oid)
            found[ref] = RecordRef(ref, str(status), account_id, contact_id, owner_id)
    if ticket_numbers:
        rows = await session.execute(
            select(
                Ticket.id, Ticket.status, Ticket.account_id, Ticket.contact_id, Ticket.owner_id
            ).where(Ticket.id.in_(ticket_numbers))
        )
        for tid, status, account_id, contact_id, owner_id in rows:
            ref = RecordId("ticket", tid)
            found[ref] = RecordRef(ref, str(status), account_id, contact_id, owner_id)
    return found


_THREAD_TARGETS = frozenset({LinkTarget.OPPORTUNITY, LinkTarget.TICKET, LinkTarget.INBOX_LEAD})


async def _thread(session: AsyncSession, message_ids: tuple[str, ...]) -> tuple[ThreadRef, ...]:
    """The record links of earlier mails, newest reference first (the last References entry)."""
    if not message_ids:
        return ()
    # The link kinds are picked here, not in SQL: a condition on target_type leads SQLite's
    # planner to start from the links' target index and read most of it on a large store.
    rows = await session.execute(
        select(Email.message_id, EmailLink.target_type, EmailLink.target_id)
        .join(EmailLink, EmailLink.email_id == Email.id)
        .where(Email.message_id.in_(message_ids))
    )
    links: dict[str, dict[str, int]] = defaultdict(dict)
    for message_id, target_type, target_id in rows:
        assert message_id is not None
        if target_type in _THREAD_TARGETS:
            links[message_id].setdefault(str(target_type), target_id)
    order = list(reversed(message_ids))
    return tuple(
        ThreadRef(
            message_id=mid,
            opportunity_id=links[mid].get("opportunity"),
            ticket_id=links[mid].get("ticket"),
            inbox_lead_id=links[mid].get("inbox_lead"),
        )
        for mid in order
        if mid in links
    )


async def _open_opportunities(
    session: AsyncSession, contact_ids: list[int]
) -> dict[int, tuple[int, ...]]:
    if not contact_ids:
        return {}
    rows = await session.execute(
        select(Opportunity.contact_id, Opportunity.id)
        .where(
            Opportunity.contact_id.in_(contact_ids),
            Opportunity.status == OpportunityStatus.OPEN,
        )
        .order_by(Opportunity.id)
    )
    found: dict[int, list[int]] = defaultdict(list)
    for contact_id, oid in rows:
        assert contact_id is not None
        found[contact_id].append(oid)
    return {cid: tuple(ids) for cid, ids in found.items()}


async def _open_tickets(
    session: AsyncSession, contact_ids: list[int]
) -> dict[int, tuple[int, ...]]:
    if not contact_ids:
        return {}
    rows = await session.execute(
        select(Ticket.contact_id, Ticket.id)
        .where(Ticket.contact_id.in_(contact_ids), Ticket.status.in_(OPEN_TICKET))
        .order_by(Ticket.id)
    )
    found: dict[int, list[int]] = defaultdict(list)
    for contact_id, tid in rows:
        assert contact_id is not None
        found[contact_id].append(tid)
    return {cid: tuple(ids) for cid, ids in found.items()}
