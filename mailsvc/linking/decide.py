"""The decision: which records a mail belongs to, or what to create for it, and the rule why.

The rules, in the order they apply (docs/linking.md explains them for users):
machine mail (loop, bounce, list) -> subject ID -> thread -> auto-reply without either ->
single open record -> known contact -> open inbox lead -> new ticket / new lead / company -> ignore.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from mailsvc.linking.forwards import Forwarded, find_forwarded
from mailsvc.linking.model import (
    HUMAN,
    Facts,
    LeadDraft,
    LinkDecision,
    Links,
    MailKind,
    RecordRef,
    TicketDraft,
    TicketUpdateDraft,
    UserRef,
    Wanted,
)
from mailsvc.linking.references import (
    IdPatterns,
    RecordId,
    RecordKind,
    find_record_ids,
    parse_message_ids,
    strip_reply_prefixes,
)
from mailsvc.linking.resolve import (
    Counterparty,
    Parties,
    find_parties,
    resolve_counterparty,
    wanted_addresses,
    wanted_domains,
)
from mailsvc.linking.text import Reply, body_text, phone_from_signature, split_name, split_reply
from mailsvc.mail import Address, Envelope, ParsedMail

Direction = Literal["incoming", "outgoing"]
CLOSED_OPPORTUNITY = frozenset({"won", "lost"})
OPEN_TICKET = frozenset({"open", "in_progress"})


@dataclass(frozen=True, slots=True)
class Policy:
    """The parts of the settings that linking needs."""

    patterns: IdPatterns
    intake_addresses: frozenset[str]
    internal_domains: frozenset[str] = frozenset()


def wanted(mail: ParsedMail, policy: Policy) -> Wanted:
    """What must be looked up in the store to decide on this mail (forwarded original included)."""
    forwarded = find_forwarded(mail)
    emails = set(wanted_addresses(mail))
    subjects = [mail.subject]
    # In-Reply-To last: the store answers the newest (last) reference first.
    thread_headers = [*mail.references, *mail.in_reply_to]
    if forwarded is not None:
        emails |= {a.email for a in (*forwarded.from_, *forwarded.to, *forwarded.cc)}
        subjects.append(forwarded.subject)
        thread_headers += [*forwarded.in_reply_to, *forwarded.references]
    emails -= policy.intake_addresses
    thread = tuple(dict.fromkeys(thread_headers))
    parsed = tuple(dict.fromkeys(m for ids in map(parse_message_ids, thread) for m in ids))
    return Wanted(
        emails=frozenset(emails),
        domains=wanted_domains(emails),
        record_ids=_subject_ids(subjects, policy.patterns),
        message_ids=parsed or thread,
    )


def _subject_ids(subjects: list[str], patterns: IdPatterns) -> tuple[RecordId, ...]:
    return tuple(dict.fromkeys(i for s in subjects for i in find_record_ids(s, patterns)))


@dataclass(frozen=True, slots=True)
class _View:
    """Who is on the mail after direction and forwards are settled."""

    parties: Parties
    counterparty: Counterparty
    names: dict[str, Address]
    forwarded: Forwarded | None
    reply: Reply
    notes: tuple[str, ...]
    subject: str


def decide(
    mail: ParsedMail,
    envelope: Envelope,
    facts: Facts,
    policy: Policy,
    kind: MailKind = HUMAN,
    reply: Reply | None = None,
    *,
    sender_verified: bool = True,
) -> LinkDecision:
    """Apply the rules in order; the first that decides names itself in ``rule``.

    ``reply`` is ``reply_of(mail)`` when the caller worked it out already (it is pure and costly).
    A From of one of our users that is not ``sender_verified`` (docs/trust.md) is not believed:
    the mail is stored, nothing is done in that user's name.
    """
    sender = mail.sender
    if not sender_verified and sender is not None and sender.email in facts.users:
        return LinkDecision(
            "ignore", "sender_unverified", direction="incoming", automatic=kind.machine,
            mail_kind=kind.name, notes=("sender_unverified",),
        )
    view = _view(mail, facts, policy, reply)
    base = LinkDecision(
        "ignore", None, direction=view.parties.direction, automatic=kind.machine,
        mail_kind=kind.name, notes=view.notes, reply_text=view.reply.text,
    )
    if kind.name in {"loop", "bounce", "list"}:
        notes = (*base.notes, *((kind.reason,) if kind.reason else ()))
        return replace(base, rule=kind.name, notes=notes, bounced=kind.bounced)
    subjects = [mail.subject, *([view.forwarded.subject] if view.forwarded else [])]
    ids = _subject_ids(subjects, policy.patterns)
    notes = view.notes + tuple(
        f"unknown_id:{policy.patterns.label(i)}" for i in ids if i not in facts.records
    )
    found = _pick_records([facts.records[i] for i in ids if i in facts.records], policy, notes)
    if found[0] or found[1]:
        return _link_records(base, view, facts, policy, found, "subject_id", notes + found[2])
    thread = _thread_records(facts)
    if thread is not None:
        records, lead_id = thread
        if lead_id is not None and not any(records):
            links = _owner_links(view, facts, Links(inbox_lead=lead_id))
            return replace(base, kind="link", rule="thread", links=links, notes=notes)
        return _link_records(base, view, facts, policy, (*records, ()), "thread", notes)
    if kind.name == "auto_reply":
        reason = (kind.reason,) if kind.reason else ()
        return replace(base, rule="auto_reply", notes=(*notes, *reason))
    return _by_addresses(replace(base, notes=notes), view, facts, policy, envelope.role)


def reply_of(mail: ParsedMail) -> Reply:
    """The new part of the mail's own text (a forwarded original's is worked out in ``decide``)."""
    return split_reply(body_text(mail))


def _view(mail: ParsedMail, facts: Facts, policy: Policy, own: Reply | None = None) -> _View:
    parties = find_parties(mail, facts, policy.intake_addresses, policy.internal_domains)
    names = {a.email: a for a in (*mail.cc, *mail.to, *mail.from_, *mail.reply_to)}
    forwarded = None
    reply = own if own is not None else reply_of(mail)
    notes: tuple[str, ...] = ()
    if parties.user is not None and not parties.counterparties:
        # A user who sends a mail to no outside address but forwards one means its original.
        forwarded = find_forwarded(mail)
    if forwarded is not None:
        names.update({a.email: a for a in (*forwarded.cc, *forwarded.to, *forwarded.from_)})
        original = _forwarded_parties(forwarded, parties.user, facts, policy)
        if original.counterparties:
            parties = original
            reply = split_reply(forwarded.body)
            notes = (f"forwarded:{forwarded.style}",)
        else:
            forwarded = None
    counterparty = resolve_counterparty(parties.counterparties, facts)
    subject = forwarded.subject if forwarded is not None else mail.subject
    return _View(
        parties, counterparty, names, forwarded, reply, notes + counterparty.ambiguous, subject
    )


def _forwarded_parties(
    forwarded: Forwarded, user: UserRef | None, facts: Facts, policy: Policy
) -> Parties:
    """The original's counterparties: its sender, or its recipients if one of us wrote it."""
    exclude = policy.intake_addresses
    sender = forwarded.sender
    if sender is not None and sender.email in facts.users:
        others = [a.email for a in (*forwarded.to, *forwarded.cc)]
        direction: Direction = "outgoing"
    else:
        others = [a.email for a in forwarded.from_]
        direction = "incoming"
    external = tuple(
        dict.fromkeys(
            e for e in others if e not in exclude and e not in facts.users
            and e.rpartition("@")[2] not in policy.internal_domains
        )
    )
    return Parties(direction, user, external)


def _pick_records(
    records: list[RecordRef], policy: Policy, notes: tuple[str, ...]
) -> tuple[RecordRef | None, RecordRef | None, tuple[str, ...]]:
    """The first opportunity and the first ticket named; further ones of a kind are noted."""
    opportunity = next((r for r in records if r.ref.kind == "opportunity"), None)
    ticket = next((r for r in records if r.ref.kind == "ticket"), None)
    extra = tuple(
        f"ignored_id:{policy.patterns.label(r.ref)}" for r in records
        if r is not opportunity and r is not ticket
    )
    return opportunity, ticket, extra


_Pair = tuple[RecordRef | None, RecordRef | None]


def _thread_records(facts: Facts) -> tuple[_Pair, int | None] | None:
    """The records of the newest earlier mail in the thread that had any."""
    for ref in facts.thread:
        opportunity = (
            facts.records.get(RecordId("opportunity", ref.opportunity_id))
            if ref.opportunity_id else None
        )
        ticket = facts.records.get(RecordId("ticket", ref.ticket_id)) if ref.ticket_id else None
        if opportunity or ticket or ref.inbox_lead_id:
            return (opportunity, ticket), ref.inbox_lead_id
    return None


def _link_records(
    base: LinkDecision,
    view: _View,
    facts: Facts,
    policy: Policy,
    found: tuple[RecordRef | None, RecordRef | None, tuple[str, ...]],
    rule: str,
    notes: tuple[str, ...],
) -> LinkDecision:
    opportunity, ticket, _ = found
    main = opportunity or ticket
    assert main is not None
    for record in (opportunity, ticket):
        if record is not None and _is_closed(record):
            notes += (f"closed_record:{policy.patterns.label(record.ref)}",)
    contact = view.counterparty.contact
    account = view.counterparty.account
    # The person the mail is really with, if they belong to the record's customer; otherwise the
    # record's own contact.
    colleague = contact if contact and main.account_id in (None, contact.account_id) else None
    links = Links(
        account=main.account_id or (account.id if account else None),
        contact=(colleague.id if colleague else None) or main.contact_id
        or (contact.id if contact else None),
        owner=main.owner_id or _fallback_owner(view, facts),
        opportunity=opportunity.ref.number if opportunity else None,
        ticket=ticket.ref.number if ticket else None,
    )
    decision = replace(base, kind="link", rule=rule, links=links, notes=notes)
    if ticket is None or base.automatic:
        return decision
    return replace(decision, kind="ticket_update", ticket_update=_ticket_update(view, ticket))


def _is_closed(record: RecordRef) -> bool:
    if record.ref.kind == "opportunity":
        return record.status in CLOSED_OPPORTUNITY
    return record.status == "closed"


def _ticket_update(view: _View, ticket: RecordRef) -> TicketUpdateDraft:
    """Incoming mail reopens a resolved ticket; a closed ticket stays closed."""
    author = view.parties.user.email if view.parties.user else view.counterparty.email
    reopen = view.parties.direction == "incoming" and ticket.status == "resolved"
    return TicketUpdateDraft(ticket.ref.number, view.reply.text, author, reopen)


def _fallback_owner(view: _View, facts: Facts) -> int | None:
    """Without a record: the sending (or forwarding) user, the contact's, the account's owner."""
    contact = view.counterparty.contact
    account = view.counterparty.account
    return (
        (view.parties.user.id if view.parties.user else None)
        or (contact.owner_id if contact else None)
        or (account.owner_id if account else None)
        or facts.default_owner_id
    )


def _owner_links(view: _View, facts: Facts, links: Links) -> Links:
    contact = view.counterparty.contact
    account = view.counterparty.account
    return replace(
        links,
        account=links.account or (account.id if account else None),
        contact=links.contact or (contact.id if contact else None),
        owner=links.owner or _fallback_owner(view, facts),
    )


def _by_addresses(
    base: LinkDecision, view: _View, facts: Facts, policy: Policy, role: str
) -> LinkDecision:
    """No ID, no thread: the counterparty's open records, open lead, contact or account."""
    counterparty = view.counterparty
    notes = base.notes
    forward_rule = "forward" if view.forwarded is not None else "address"
    if counterparty.email is None:
        rule = "internal" if view.parties.user else None
        return replace(base, rule=rule, notes=(*notes, "no_counterparty"))
    contact = counterparty.contact
    if contact is not None:
        open_ids = (
            facts.open_tickets if role == "support" else facts.open_opportunities
        ).get(contact.id, ())
        if len(open_ids) == 1:
            kind: RecordKind = "ticket" if role == "support" else "opportunity"
            record = facts.records.get(RecordId(kind, open_ids[0]))
            if record is not None:
                return _link_records(
                    base, view, facts, policy, (
                        record if kind == "opportunity" else None,
                        record if kind == "ticket" else None, (),
                    ), "single_open_record", notes,
                )
        if len(open_ids) > 1:
            notes += ("several_open_records",)
        elif role == "support" and view.parties.direction == "incoming":
            return _new_ticket(replace(base, notes=notes), view, facts)
        links = _owner_links(view, facts, Links())
        return replace(base, kind="link", rule=forward_rule, links=links, notes=notes)
    lead_id = facts.open_leads.get(counterparty.email)
    if lead_id is not None and role != "support":
        links = _owner_links(view, facts, Links(inbox_lead=lead_id))
        return replace(base, kind="link", rule="open_lead", links=links, notes=notes)
    if role == "support" and view.parties.direction == "incoming":
        return _new_ticket(base, view, facts)
    if role == "bcc" and counterparty.account is not None:
        links = _owner_links(view, facts, Links())
        return replace(base, kind="link", rule=forward_rule, links=links, notes=notes)
    if role in {"bcc", "sales"}:
        return _new_lead(base, view, facts)
    return replace(base, rule=None, notes=(*notes, "no_match"))


def _address(view: _View, email: str) -> Address:
    return view.names.get(email) or Address("", email)


def _title(view: _View, person: Address) -> str:
    subject = strip_reply_prefixes(view.subject)
    return (subject or f"E-mail from {person.name or person.email}")[:300]


def _new_lead(base: LinkDecision, view: _View, facts: Facts) -> LinkDecision:
    assert view.counterparty.email is not None
    person = _address(view, view.counterparty.email)
    first, last = split_name(person)
    # Only a mail the person wrote carries their signature; a BCC'd mail carries ours.
    phone = phone_from_signature(view.reply) if view.parties.direction == "incoming" else None
    account = view.counterparty.account
    lead = LeadDraft(
        title=_title(view, person), email=person.email,
        first_name=first, last_name=last, company=account.name or None if account else None,
        phone=phone,
    )
    links = Links(
        account=account.id if account else None,
        owner=(view.parties.user.id if view.parties.user else None) or facts.default_owner_id,
    )
    return replace(base, kind="new_lead", rule="new_lead", links=links, lead=lead)


def _new_ticket(base: LinkDecision, view: _View, facts: Facts) -> LinkDecision:
    assert view.counterparty.email is not None
    person = _address(view, view.counterparty.email)
    ticket = TicketDraft(
        subject=_title(view, person)[:500],
        description=view.reply.text,
        requester_email=person.email,
        requester_name=person.name or None,
    )
    contact = view.counterparty.contact
    account = view.counterparty.account
    links = Links(
        account=account.id if account else None,
        contact=contact.id if contact else None,
        # A new ticket goes to the support queue's owner before the customer's sales owner.
        owner=(view.parties.user.id if view.parties.user else None)
        or facts.default_owner_id
        or (contact.owner_id if contact else None)
        or (account.owner_id if account else None),
    )
    return replace(base, kind="new_ticket", rule="new_ticket", links=links, ticket=ticket)
