"""Deciding many mails on one facts load: merged lookups, per-mail facts, and what orders them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from mailsvc.linking.model import Fact, Facts, LinkDecision, ThreadRef, Wanted
from mailsvc.linking.references import RecordId, RecordKind
from mailsvc.linking.rules import CHAIN_READS

Key = str
"""What a decision reads or changes: ``email:a@b``, ``msg:<id>``, ``ticket:5``, ``contact:7``."""


def merge_wanted(wants: Iterable[Wanted]) -> Wanted:
    """One lookup for a group of mails; every Facts value is keyed, so the answer serves each."""
    emails: set[str] = set()
    domains: set[str] = set()
    record_ids: dict[RecordId, None] = {}
    message_ids: dict[str, None] = {}
    senders: set[str] = set()
    for want in wants:
        senders |= want.senders
        emails |= want.emails
        domains |= want.domains
        record_ids.update(dict.fromkeys(want.record_ids))
        message_ids.update(dict.fromkeys(want.message_ids))
    return Wanted(frozenset(emails), frozenset(domains), tuple(record_ids), tuple(message_ids),
                  frozenset(senders))


def facts_for(
    facts: Facts, want: Wanted, default_owner_id: int | None,
    by_id: Mapping[str, ThreadRef] | None = None,
) -> Facts:
    """One mail's facts out of a group's: its thread in its own order (newest reference first),
    users limited to its addresses, the default owner of its intake address. ``by_id`` is
    ``thread_index(facts)``, made once for a group (else here, for each mail)."""
    if by_id is None:
        by_id = thread_index(facts)
    return replace(
        facts,
        users={e: u for e, u in facts.users.items() if e in want.emails},
        thread=tuple(by_id[m] for m in reversed(want.message_ids) if m in by_id),
        default_owner_id=default_owner_id,
    )


def thread_index(facts: Facts) -> dict[str, ThreadRef]:
    """The group's thread references by Message-ID."""
    return {ref.message_id: ref for ref in facts.thread}


def _record(ref: RecordId) -> Key:
    return f"{ref.kind}:{ref.number}"


def _records(refs: Iterable[RecordId], facts: Facts) -> set[Key]:
    """The records, and their contacts (reopening a ticket changes its contact's open tickets)."""
    keys: set[Key] = set()
    for ref in refs:
        keys.add(_record(ref))
        record = facts.records.get(ref)
        if record is not None and record.contact_id is not None:
            keys.add(f"contact:{record.contact_id}")
    return keys


def _nothing(want: Wanted, facts: Facts) -> set[Key]:
    """Facts no decision changes (users, accounts, domains, default owners, never-log rules)."""
    return set()


def _thread(want: Wanted, facts: Facts) -> set[Key]:
    """The mails it refers to (a mail of the group may be one), and their records."""
    refs = [RecordId("opportunity", r.opportunity_id) for r in facts.thread if r.opportunity_id]
    refs += [RecordId("ticket", r.ticket_id) for r in facts.thread if r.ticket_id]
    return {f"msg:{m}" for m in want.message_ids} | _records(refs, facts)


def _named_records(want: Wanted, facts: Facts) -> set[Key]:
    return _records(want.record_ids, facts)


def _open(kind: RecordKind, by_contact: Callable[[Facts], Mapping[int, tuple[int, ...]]]) -> Reads:
    """Its contacts' open records of ``kind``: a new or reopened ticket changes them."""

    def keys(want: Wanted, facts: Facts) -> set[Key]:
        contacts = {c.id for e in want.emails for c in facts.contacts.get(e, ())}
        refs = [RecordId(kind, i) for c in contacts for i in by_contact(facts).get(c, ())]
        return {f"contact:{c}" for c in contacts} | _records(refs, facts)

    return keys


def _sent(senders: frozenset[str], facts: Facts) -> set[Key]:
    """Mail of an outside sender: every earlier mail of theirs in the group is one more for the
    loop guard's count (our users' mail is never counted)."""
    return {f"from:{s}" for s in senders if s not in facts.users}


def _recent_mail(want: Wanted, facts: Facts) -> set[Key]:
    return _sent(want.senders, facts)


def _open_leads(want: Wanted, facts: Facts) -> set[Key]:
    """Its addresses: a new lead (or ticket requester) of an earlier mail may be one of them."""
    return {f"email:{e}" for e in want.emails}


Reads = Callable[[Wanted, Facts], set[Key]]
KEYS: dict[Fact, Reads] = {
    Fact.USERS: _nothing,
    Fact.USER_DOMAINS: _nothing,
    Fact.CONTACTS: _nothing,
    Fact.ACCOUNTS_BY_DOMAIN: _nothing,
    Fact.ACCOUNTS: _nothing,
    Fact.DEFAULT_OWNER: _nothing,
    Fact.RECORDS: _named_records,
    Fact.THREAD: _thread,
    Fact.OPEN_OPPORTUNITIES: _open("opportunity", lambda facts: facts.open_opportunities),
    Fact.OPEN_TICKETS: _open("ticket", lambda facts: facts.open_tickets),
    Fact.OPEN_LEADS: _open_leads,
    Fact.RECENT_MAIL: _recent_mail,
    Fact.NEVER_LOG: _nothing,
}
"""For each fact, the keys a mail's reading of it depends on: what an earlier mail may change."""


def dependencies(
    want: Wanted, facts: Facts, reads: frozenset[Fact] = CHAIN_READS
) -> frozenset[Key]:
    """What the decision on a mail may read that an earlier mail of the group may change: the
    keys of every fact the rules declare they read (``rules.CHAIN_READS``)."""
    return frozenset().union(*(KEYS[fact](want, facts) for fact in reads))


def effects(
    message_id: str | None, decision: LinkDecision, facts: Facts,
    senders: frozenset[str] = frozenset(),
) -> frozenset[Key]:
    """What storing a decision changes that another mail's decision may read (``senders``: its
    From, whose count of recent mail it adds to)."""
    keys: set[Key] = {f"msg:{message_id}"} if message_id else set()
    keys |= _sent(senders, facts)
    if decision.lead is not None:
        keys.add(f"email:{decision.lead.email}")
    lead_id = decision.links.inbox_lead
    if lead_id is not None:
        keys |= {f"email:{e}" for e, i in facts.open_leads.items() if i == lead_id}
    if decision.ticket is not None:
        keys.add(f"email:{decision.ticket.requester_email}")
        if decision.links.contact is not None:
            keys.add(f"contact:{decision.links.contact}")
    update = decision.ticket_update
    if update is not None:
        ticket = RecordId("ticket", update.ticket_id)
        keys.add(_record(ticket))
        record = facts.records.get(ticket)
        if update.reopen and record is not None and record.contact_id is not None:
            keys.add(f"contact:{record.contact_id}")
    return frozenset(keys)


def may_change(message_id: str | None, deps: frozenset[Key], facts: Facts) -> frozenset[Key]:
    """What a mail not decided yet may change: a bound on its ``effects``. Our users' addresses
    are left out, as no decision changes what they mean (BCC mails of one user do not conflict)."""
    users = {f"email:{e}" for e in facts.users}
    return (deps - users) | ({f"msg:{message_id}"} if message_id else frozenset())
