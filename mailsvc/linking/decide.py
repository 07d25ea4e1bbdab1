"""The decision: which records a mail belongs to, or what to create for it, and the rule why."""

from __future__ import annotations

from dataclasses import dataclass

from mailsvc.linking.model import Facts, LinkDecision, Links, RecordRef, Wanted
from mailsvc.linking.references import IdPatterns, RecordId, find_record_ids, parse_message_ids
from mailsvc.linking.resolve import (
    Counterparty,
    find_parties,
    resolve_counterparty,
    wanted_addresses,
    wanted_domains,
)
from mailsvc.mail import Envelope, ParsedMail


@dataclass(frozen=True, slots=True)
class Policy:
    """The parts of the settings that linking needs."""

    patterns: IdPatterns
    intake_addresses: frozenset[str]


def wanted(mail: ParsedMail, policy: Policy) -> Wanted:
    """What must be looked up in the store to decide on this mail."""
    emails = wanted_addresses(mail) - policy.intake_addresses
    thread = tuple(dict.fromkeys((*mail.in_reply_to, *mail.references)))
    return Wanted(
        emails=frozenset(emails),
        domains=wanted_domains(emails),
        record_ids=find_record_ids(mail.subject, policy.patterns),
        message_ids=tuple(m for ids in map(parse_message_ids, thread) for m in ids) or thread,
    )


def decide(mail: ParsedMail, envelope: Envelope, facts: Facts, policy: Policy) -> LinkDecision:
    """Subject ID first, then the addresses; nothing known means the mail is kept unlinked."""
    parties = find_parties(mail, facts, policy.intake_addresses)
    counterparty = resolve_counterparty(parties.counterparties, facts)
    owner = parties.user.id if parties.user else None
    ids = find_record_ids(mail.subject, policy.patterns)
    found = [facts.records[i] for i in ids if i in facts.records]
    notes = tuple(f"unknown_id:{_label(i, policy.patterns)}" for i in ids if i not in facts.records)
    if counterparty.ambiguous:
        notes += ("ambiguous_counterparty",)
    if found:
        links = _links_from_records(found, counterparty, owner)
        return LinkDecision("link", "subject_id", links, parties.direction, notes=notes)
    links = _links_from_counterparty(counterparty, owner, facts)
    if links.any:
        return LinkDecision("link", "address", links, parties.direction, notes=notes)
    return LinkDecision("ignore", None, links, parties.direction, notes=notes)


def _label(record: RecordId, patterns: IdPatterns) -> str:
    prefix = patterns.opportunity_prefix if record.kind == "opportunity" else patterns.ticket_prefix
    return record.label(prefix)


def _links_from_records(
    records: list[RecordRef], counterparty: Counterparty, owner: int | None
) -> Links:
    opportunity = next((r for r in records if r.ref.kind == "opportunity"), None)
    ticket = next((r for r in records if r.ref.kind == "ticket"), None)
    main = opportunity or ticket
    assert main is not None
    contact = main.contact_id or (counterparty.contact.id if counterparty.contact else None)
    account = main.account_id or (counterparty.account.id if counterparty.account else None)
    return Links(
        account=account,
        contact=contact,
        owner=main.owner_id or owner,
        opportunity=opportunity.ref.number if opportunity else None,
        ticket=ticket.ref.number if ticket else None,
    )


def _links_from_counterparty(counterparty: Counterparty, owner: int | None, facts: Facts) -> Links:
    contact = counterparty.contact
    account = counterparty.account
    owner = (
        owner
        or (contact.owner_id if contact else None)
        or (account.owner_id if account else None)
    )
    if contact is None and account is None:
        return Links(owner=owner) if owner else Links()
    return Links(
        account=account.id if account else None,
        contact=contact.id if contact else None,
        owner=owner or facts.default_owner_id,
    )
