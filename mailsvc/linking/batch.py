"""Deciding many mails on one facts load: merged lookups, per-mail facts, and what orders them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from mailsvc.linking.model import Facts, LinkDecision, Wanted
from mailsvc.linking.references import RecordId

Key = str
"""What a decision reads or changes: ``email:a@b``, ``msg:<id>``, ``ticket:5``, ``contact:7``."""


def merge_wanted(wants: Iterable[Wanted]) -> Wanted:
    """One lookup for a group of mails; every Facts value is keyed, so the answer serves each."""
    emails: set[str] = set()
    domains: set[str] = set()
    record_ids: dict[RecordId, None] = {}
    message_ids: dict[str, None] = {}
    for want in wants:
        emails |= want.emails
        domains |= want.domains
        record_ids.update(dict.fromkeys(want.record_ids))
        message_ids.update(dict.fromkeys(want.message_ids))
    return Wanted(frozenset(emails), frozenset(domains), tuple(record_ids), tuple(message_ids))


def facts_for(facts: Facts, want: Wanted, default_owner_id: int | None) -> Facts:
    """One mail's facts out of a group's: its thread in its own order (newest reference first),
    users limited to its addresses, the default owner of its intake address."""
    by_id = {ref.message_id: ref for ref in facts.thread}
    return replace(
        facts,
        users={e: u for e, u in facts.users.items() if e in want.emails},
        thread=tuple(by_id[m] for m in reversed(want.message_ids) if m in by_id),
        default_owner_id=default_owner_id,
    )


def _record(ref: RecordId) -> Key:
    return f"{ref.kind}:{ref.number}"


def dependencies(want: Wanted, facts: Facts) -> frozenset[Key]:
    """What the decision on a mail may read that an earlier mail of the group may change: its
    addresses (open leads, requesters), the mails it refers to, the records it names or reaches
    (by thread or as a contact's open record) and its contacts (whose open tickets may change)."""
    keys: set[Key] = {f"email:{e}" for e in want.emails}
    keys |= {f"msg:{m}" for m in want.message_ids}
    records = set(want.record_ids)
    for ref in facts.thread:
        if ref.opportunity_id:
            records.add(RecordId("opportunity", ref.opportunity_id))
        if ref.ticket_id:
            records.add(RecordId("ticket", ref.ticket_id))
    for email in want.emails:
        for contact in facts.contacts.get(email, ()):
            keys.add(f"contact:{contact.id}")
            opportunities = facts.open_opportunities.get(contact.id, ())
            records |= {RecordId("opportunity", i) for i in opportunities}
            records |= {RecordId("ticket", i) for i in facts.open_tickets.get(contact.id, ())}
    for record_id in records:
        keys.add(_record(record_id))
        # Reopening a ticket changes its contact's open tickets.
        record = facts.records.get(record_id)
        if record is not None and record.contact_id is not None:
            keys.add(f"contact:{record.contact_id}")
    return frozenset(keys)


def effects(message_id: str | None, decision: LinkDecision, facts: Facts) -> frozenset[Key]:
    """What storing a decision changes that another mail's decision may read."""
    keys: set[Key] = {f"msg:{message_id}"} if message_id else set()
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
