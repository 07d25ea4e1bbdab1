"""The chain of linking rules: one short pure function per rule, the order written once (RULES).

Each rule looks at the mail in its ``Context`` and either decides (returns a ``LinkDecision``) or
passes (``None``); ``decide`` walks the chain and the first rule that decides names itself.
A rule's docstring is its explanation for users (docs/linking.md lists them in this order), and
each rule declares the ``Fact`` values it reads: what the store loads and what a mail waits for
in a group (``linking/batch.py``) are derived from these declarations.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace

from mailsvc.linking.forwards import Forwarded
from mailsvc.linking.model import (
    Fact,
    Facts,
    LeadDraft,
    LinkDecision,
    Links,
    MailKind,
    Policy,
    RecordRef,
    Rule,
    TicketDraft,
    TicketUpdateDraft,
)
from mailsvc.linking.references import RecordId, RecordKind, strip_reply_prefixes
from mailsvc.linking.resolve import Counterparty, Parties, matches
from mailsvc.linking.text import Reply, phone_from_signature, split_name
from mailsvc.mail import Address, ParsedMail, Role

CLOSED_OPPORTUNITY = frozenset({"won", "lost"})


@dataclass(frozen=True, slots=True)
class View:
    """Who is on the mail after direction and forwards are settled."""

    parties: Parties
    counterparty: Counterparty
    names: dict[str, Address]
    forwarded: Forwarded | None
    reply: Reply
    notes: tuple[str, ...]
    subject: str


@dataclass(frozen=True, slots=True)
class Context:
    """Everything a rule may look at; ``base`` is the decision every rule starts from."""

    mail: ParsedMail
    role: Role
    facts: Facts
    policy: Policy
    kind: MailKind
    view: View
    ids: tuple[RecordId, ...]
    base: LinkDecision
    sender_verified: bool = True
    # The records named by the intake addresses with an extension it was sent to (bcc+OPP-12@).
    address_ids: tuple[RecordId, ...] = ()
    # Mail of an archive import: history, not a live loop.
    historical: bool = False

    @property
    def notes(self) -> tuple[str, ...]:
        return self.base.notes


Check = Callable[[Context], LinkDecision | None]

# Who is who (direction, counterparty, its contact and account) is worked out before any rule.
VIEW_READS = frozenset({
    Fact.USERS, Fact.USER_DOMAINS, Fact.CONTACTS, Fact.ACCOUNTS_BY_DOMAIN, Fact.ACCOUNTS,
})
# The owner when there is no record: the sending user, the contact's, the account's, the default.
OWNER_READS = frozenset({Fact.USERS, Fact.DEFAULT_OWNER})


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One rule of the chain: its name, the facts it reads and its check."""

    rule: Rule
    reads: frozenset[Fact]
    check: Check

    @property
    def explanation(self) -> str:
        return inspect.getdoc(self.check) or ""


def rule(name: Rule, *reads: Fact) -> Callable[[Check], RuleSpec]:
    def declare(check: Check) -> RuleSpec:
        return RuleSpec(name, frozenset(reads), check)

    return declare


# ------------------------------------------------------------------ never logged


def _participants(ctx: Context) -> list[str]:
    """Everyone on the mail: From, Reply-To, To, Cc, and a forwarded original's people; our
    intake addresses are none of them."""
    mail = ctx.mail
    people = [a.email for a in (*mail.from_, *mail.reply_to, *mail.to, *mail.cc)]
    forwarded = ctx.view.forwarded
    if forwarded is not None:
        people += [a.email for a in (*forwarded.from_, *forwarded.to, *forwarded.cc)]
    return [email for email in people if ctx.policy.intake_base(email) is None]


@rule(Rule.NEVER_LOG, Fact.NEVER_LOG)
def never_log(ctx: Context) -> LinkDecision | None:
    """Mail from or to an address or domain on the never-log list (a user's private contacts,
    HR, legal) is not stored at all: its raw bytes are dropped, nothing is linked, created,
    quarantined or announced; only the counter ``mailsvc_never_log_dropped_total`` moves."""
    if not ctx.facts.never_log:
        return None
    if not any(matches(email, ctx.facts.never_log) for email in _participants(ctx)):
        return None
    return LinkDecision("drop", Rule.NEVER_LOG, direction=ctx.base.direction)


# ------------------------------------------------------------------ machine mail


def _machine(ctx: Context, name: str) -> LinkDecision | None:
    if ctx.kind.name != name:
        return None
    reason = (ctx.kind.reason,) if ctx.kind.reason else ()
    return replace(ctx.base, notes=(*ctx.view.notes, *reason), bounced=ctx.kind.bounced)


@rule(Rule.LOOP)
def loop(ctx: Context) -> LinkDecision | None:
    """Mail that went round in a loop (our marker header, too many Received headers) is stored
    and ignored; it never creates anything."""
    return _machine(ctx, "loop")


@rule(Rule.BOUNCE)
def bounce(ctx: Context) -> LinkDecision | None:
    """A bounce is stored and ignored; the contact addresses that failed are marked bouncing."""
    return _machine(ctx, "bounce")


@rule(Rule.LIST)
def list_mail(ctx: Context) -> LinkDecision | None:
    """Mailing-list mail is stored and ignored, even with an ID in its subject."""
    return _machine(ctx, "list")


# ------------------------------------------------------------------ trust


@rule(Rule.SENDER_UNVERIFIED, Fact.USERS)
def sender_unverified(ctx: Context) -> LinkDecision | None:
    """A mail whose From is one of our users, but which the receiving server could not verify
    as sent by us, is stored and ignored (note ``sender_unverified``): nothing is created, owned
    or written in that user's name."""
    sender = ctx.mail.sender
    if ctx.sender_verified or sender is None or sender.email not in ctx.facts.users:
        return None
    return replace(ctx.base, direction="incoming", notes=("sender_unverified",))


# ------------------------------------------------------------------ the loop guard


def _targets(ctx: Context) -> list[RecordRef]:
    """The records the mail names or replies to (address, subject, thread), known ones only."""
    refs = [*ctx.address_ids, *ctx.ids]
    for ref in ctx.facts.thread:
        refs += [RecordId("opportunity", ref.opportunity_id)] if ref.opportunity_id else []
        refs += [RecordId("ticket", ref.ticket_id)] if ref.ticket_id else []
    return [ctx.facts.records[r] for r in dict.fromkeys(refs) if r in ctx.facts.records]


@rule(Rule.RATE_LIMITED, Fact.RECENT_MAIL, Fact.RECORDS, Fact.THREAD, Fact.OPEN_LEADS,
      *OWNER_READS)
def rate_limited(ctx: Context) -> LinkDecision | None:
    """More than ``MAILSVC_LOOP_GUARD_MAX`` mails from one sender to one record (or, when the
    mail names no record, to one intake address) within ``MAILSVC_LOOP_GUARD_MINUTES`` look like
    a mail loop: the mail is stored and linked to the record, contact, account or open inbox
    lead it names, as an automatic mail (note ``rate_limited``), but creates and updates nothing:
    no lead, no ticket, no ticket log, no reopening, no acknowledgement, nothing on the timeline.
    Our users' mail, senders on ``MAILSVC_LOOP_GUARD_ALLOW`` and mail of an archive import
    (history, not a loop; it is not counted either) are never held back."""
    sender = ctx.mail.sender
    limit = ctx.policy.loop_guard_max
    if limit <= 0 or ctx.historical or sender is None or sender.email in ctx.facts.users:
        return None
    if matches(sender.email, ctx.policy.loop_guard_allow):
        return None
    targets = _targets(ctx)
    keys = [f"{r.ref.kind}:{r.ref.number}" for r in targets] or [f"role:{ctx.role}"]
    if max(ctx.facts.recent_mail.get((sender.email, key), 0) for key in keys) < limit:
        return None
    held = replace(ctx.base, automatic=True, notes=(*ctx.notes, "rate_limited"))
    opportunity = next((r for r in targets if r.ref.kind == "opportunity"), None)
    ticket = next((r for r in targets if r.ref.kind == "ticket"), None)
    if opportunity is not None or ticket is not None:
        return _link_records(held, ctx, opportunity, ticket)  # automatic: no ticket log
    counterparty = ctx.view.counterparty
    lead = ctx.facts.open_leads.get(counterparty.email or "")
    if counterparty.contact is None and counterparty.account is None and lead is None:
        return held
    return _link(replace(ctx, base=held), Links(inbox_lead=lead))


# ------------------------------------------------------------------ records named or replied to


@rule(Rule.RECORD_ADDRESS, Fact.RECORDS, *OWNER_READS)
def record_address(ctx: Context) -> LinkDecision | None:
    """The mail was sent to a record's own address (``bcc+OPP-12@…``, ``support+TCK-7@…``):
    it is linked to that record, its account, contact and owner, as for an ID in the subject.
    The address is what the sender chose, so it wins over a subject that names another record
    of the same kind (noted ``ignored_id:``); a record of the other kind in the subject is linked
    too."""
    if not any(i in ctx.facts.records for i in ctx.address_ids):
        return None
    return _link_named(ctx, (*ctx.address_ids, *ctx.ids))


@rule(Rule.SUBJECT_ID, Fact.RECORDS, *OWNER_READS)
def subject_id(ctx: Context) -> LinkDecision | None:
    """The subject (or the forwarded original's) names an opportunity or a ticket: the mail is
    linked to it, its account, contact and owner."""
    return _link_named(ctx, ctx.ids)


def _link_named(ctx: Context, ids: tuple[RecordId, ...]) -> LinkDecision | None:
    """The first known opportunity and ticket of ``ids`` linked; other known ones noted."""
    known = [ctx.facts.records[i] for i in dict.fromkeys(ids) if i in ctx.facts.records]
    opportunity = next((r for r in known if r.ref.kind == "opportunity"), None)
    ticket = next((r for r in known if r.ref.kind == "ticket"), None)
    if opportunity is None and ticket is None:
        return None
    ignored = tuple(
        f"ignored_id:{ctx.policy.patterns.label(r.ref)}" for r in known
        if r is not opportunity and r is not ticket
    )
    return _link_records(replace(ctx.base, notes=ctx.notes + ignored), ctx, opportunity, ticket)


@rule(Rule.THREAD, Fact.THREAD, Fact.RECORDS, *OWNER_READS)
def thread(ctx: Context) -> LinkDecision | None:
    """In-Reply-To / References point to an earlier stored mail: its opportunity, ticket or
    inbox lead is taken (the newest such mail of the thread)."""
    for ref in ctx.facts.thread:
        records = ctx.facts.records
        opportunity = records.get(RecordId("opportunity", ref.opportunity_id or 0))
        ticket = records.get(RecordId("ticket", ref.ticket_id or 0))
        if opportunity or ticket:
            return _link_records(ctx.base, ctx, opportunity, ticket)
        if ref.inbox_lead_id:
            return _link(ctx, Links(inbox_lead=ref.inbox_lead_id))
    return None


@rule(Rule.AUTO_REPLY)
def auto_reply(ctx: Context) -> LinkDecision | None:
    """An auto-reply (out of office, read receipt, bulk) without ID or thread is ignored."""
    if ctx.kind.name != "auto_reply":
        return None
    reason = (ctx.kind.reason,) if ctx.kind.reason else ()
    return replace(ctx.base, notes=(*ctx.notes, *reason))


# ------------------------------------------------------------------ nobody outside


@rule(Rule.INTERNAL, Fact.USERS)
def internal(ctx: Context) -> LinkDecision | None:
    """A user's mail to colleagues or intake addresses only has no counterparty: ignored."""
    if ctx.view.counterparty.email is not None or ctx.view.parties.user is None:
        return None
    return replace(ctx.base, notes=(*ctx.notes, "no_counterparty"))


@rule(Rule.NO_COUNTERPARTY)
def no_counterparty(ctx: Context) -> LinkDecision | None:
    """A mail with no outside person on it (no From, or only internal addresses, such as a team
    mailbox of our own domain) is ignored."""
    if ctx.view.counterparty.email is not None:
        return None
    return replace(ctx.base, notes=(*ctx.notes, "no_counterparty"))


# ------------------------------------------------------------------ by the counterparty


def _open_records(ctx: Context) -> tuple[RecordKind, tuple[int, ...]]:
    """The contact's open tickets (support) or open opportunities (Smart BCC, sales)."""
    contact = ctx.view.counterparty.contact
    if ctx.role == Role.SUPPORT:
        return "ticket", ctx.facts.open_tickets.get(contact.id, ()) if contact else ()
    return "opportunity", ctx.facts.open_opportunities.get(contact.id, ()) if contact else ()


@rule(Rule.SINGLE_OPEN_RECORD, Fact.OPEN_OPPORTUNITIES, Fact.OPEN_TICKETS, Fact.RECORDS,
      *OWNER_READS)
def single_open_record(ctx: Context) -> LinkDecision | None:
    """The counterparty is a known contact with exactly one open opportunity (Smart BCC, sales)
    or one open ticket (support): the mail is linked to it."""
    kind, open_ids = _open_records(ctx)
    record = ctx.facts.records.get(RecordId(kind, open_ids[0])) if len(open_ids) == 1 else None
    if record is None:
        return None
    if kind == "ticket":
        return _link_records(ctx.base, ctx, None, record)
    return _link_records(ctx.base, ctx, record, None)


@rule(Rule.NEW_TICKET, Fact.OPEN_TICKETS, *OWNER_READS)
def new_ticket(ctx: Context) -> LinkDecision | None:
    """On support, incoming mail of an unknown person, or of a known contact without open
    tickets, opens a new ticket."""
    if ctx.role != Role.SUPPORT or ctx.view.parties.direction != "incoming":
        return None
    if _open_records(ctx)[1]:
        return None
    counterparty = ctx.view.counterparty
    assert counterparty.email is not None
    person = _address(ctx, counterparty.email)
    ticket = TicketDraft(
        subject=_title(ctx, person)[:500], description=ctx.view.reply.text,
        requester_email=person.email, requester_name=person.name or None,
    )
    contact, account = counterparty.contact, counterparty.account
    links = Links(
        account=account.id if account else None,
        contact=contact.id if contact else None,
        # A new ticket goes to the support queue's owner before the customer's sales owner.
        owner=(ctx.view.parties.user.id if ctx.view.parties.user else None)
        or ctx.facts.default_owner_id
        or (contact.owner_id if contact else None)
        or (account.owner_id if account else None),
    )
    return replace(ctx.base, kind="new_ticket", links=links, ticket=ticket)


@rule(Rule.OPEN_LEAD, Fact.OPEN_LEADS, *OWNER_READS)
def open_lead(ctx: Context) -> LinkDecision | None:
    """An unknown person with an inbox lead still open (Smart BCC, sales): the mail goes to that
    lead; no second lead is created."""
    counterparty = ctx.view.counterparty
    if ctx.role == Role.SUPPORT or counterparty.contact is not None or counterparty.email is None:
        return None
    lead_id = ctx.facts.open_leads.get(counterparty.email)
    return _link(ctx, Links(inbox_lead=lead_id)) if lead_id is not None else None


def _known(ctx: Context) -> bool:
    """A known contact; on the Smart BCC address also an unknown person of a known company."""
    counterparty = ctx.view.counterparty
    return counterparty.contact is not None or (
        ctx.role == Role.BCC and counterparty.account is not None
    )


def _by_address(ctx: Context) -> LinkDecision:
    several = ("several_open_records",) if len(_open_records(ctx)[1]) > 1 else ()
    return _link(replace(ctx, base=replace(ctx.base, notes=ctx.notes + several)), Links())


@rule(Rule.FORWARD, *OWNER_READS)
def forward(ctx: Context) -> LinkDecision | None:
    """As ``address``, for the sender (or recipient) of a mail a user forwarded."""
    return _by_address(ctx) if ctx.view.forwarded is not None and _known(ctx) else None


@rule(Rule.ADDRESS, *OWNER_READS)
def address(ctx: Context) -> LinkDecision | None:
    """A known contact: linked to contact, account and owner (noted ``several_open_records``
    when they have several). On the Smart BCC address an unknown person of a known company is
    linked to the company."""
    return _by_address(ctx) if ctx.view.forwarded is None and _known(ctx) else None


@rule(Rule.NEW_LEAD, *OWNER_READS)
def new_lead(ctx: Context) -> LinkDecision | None:
    """An unknown person on sales or the Smart BCC address becomes a new inbox lead."""
    counterparty = ctx.view.counterparty
    if ctx.role not in {Role.BCC, Role.SALES} or counterparty.email is None:
        return None
    person = _address(ctx, counterparty.email)
    first, last = split_name(person)
    incoming = ctx.view.parties.direction == "incoming"
    account = counterparty.account
    lead = LeadDraft(
        title=_title(ctx, person), email=person.email, first_name=first, last_name=last,
        company=account.name or None if account else None,
        # Only a mail the person wrote carries their signature; a BCC'd mail carries ours.
        phone=phone_from_signature(ctx.view.reply) if incoming else None,
    )
    user = ctx.view.parties.user
    links = Links(
        account=account.id if account else None,
        owner=(user.id if user else None) or ctx.facts.default_owner_id,
    )
    return replace(ctx.base, kind="new_lead", links=links, lead=lead)


@rule(Rule.NO_MATCH)
def no_match(ctx: Context) -> LinkDecision | None:
    """Nothing known and nothing to create (say a user's mail on support to an unknown
    address): ignored."""
    return replace(ctx.base, notes=(*ctx.notes, "no_match"))


RULES: tuple[RuleSpec, ...] = (
    never_log, loop, bounce, list_mail, sender_unverified, rate_limited, record_address,
    subject_id, thread, auto_reply, internal, no_counterparty, single_open_record, new_ticket,
    open_lead, forward, address, new_lead, no_match,
)
"""The chain, in the order the rules are checked; the last one always decides."""

CHAIN_READS: frozenset[Fact] = VIEW_READS.union(*(spec.reads for spec in RULES))
"""Every fact the chain may read: what the store loads for a mail."""


# ------------------------------------------------------------------ building decisions


def _link(ctx: Context, links: Links) -> LinkDecision:
    """``links`` completed by the counterparty's account, contact and the fallback owner."""
    counterparty = ctx.view.counterparty
    contact, account = counterparty.contact, counterparty.account
    links = replace(
        links,
        account=links.account or (account.id if account else None),
        contact=links.contact or (contact.id if contact else None),
        owner=links.owner or _fallback_owner(ctx),
    )
    return replace(ctx.base, kind="link", links=links)


def _fallback_owner(ctx: Context) -> int | None:
    """Without a record: the sending (or forwarding) user, the contact's, the account's owner,
    the intake address's default owner."""
    user = ctx.view.parties.user
    contact, account = ctx.view.counterparty.contact, ctx.view.counterparty.account
    return (
        (user.id if user else None)
        or (contact.owner_id if contact else None)
        or (account.owner_id if account else None)
        or ctx.facts.default_owner_id
    )


def _is_closed(record: RecordRef) -> bool:
    if record.ref.kind == "opportunity":
        return record.status in CLOSED_OPPORTUNITY
    return record.status == "closed"


def _of_the_customer(ctx: Context, account_id: int | None) -> bool:
    """Whether the counterparty's address is at a domain of the account ``account_id``."""
    email = ctx.view.counterparty.email
    if account_id is None or email is None:
        return False
    domain = email.rpartition("@")[2]
    return any(a.id == account_id for a in ctx.facts.accounts_by_domain.get(domain, ()))


def _link_records(
    base: LinkDecision, ctx: Context, opportunity: RecordRef | None, ticket: RecordRef | None,
) -> LinkDecision:
    """Link the records with their account and owner. The contact is the person the mail is
    really with when they belong to the record's customer, else the record's own contact; an
    unknown person at the customer's domain is nobody's contact yet (noted ``new_person``)."""
    main = opportunity or ticket
    assert main is not None
    notes = base.notes + tuple(
        f"closed_record:{ctx.policy.patterns.label(r.ref)}"
        for r in (opportunity, ticket) if r is not None and _is_closed(r)
    )
    contact, account = ctx.view.counterparty.contact, ctx.view.counterparty.account
    contact_account = (contact.account_id or (account.id if account else None)) if contact else None
    colleague = contact if contact and main.account_id in (None, contact_account) else None
    new_person = contact is None and _of_the_customer(ctx, main.account_id)
    if new_person:
        notes += ("new_person",)
    links = Links(
        account=main.account_id or (account.id if account else None),
        contact=None if new_person else (
            (colleague.id if colleague else None) or main.contact_id
            or (contact.id if contact else None)
        ),
        owner=main.owner_id or _fallback_owner(ctx),
        opportunity=opportunity.ref.number if opportunity else None,
        ticket=ticket.ref.number if ticket else None,
    )
    decision = replace(base, kind="link", links=links, notes=notes)
    if ticket is None or base.automatic:
        return decision
    return replace(decision, kind="ticket_update", ticket_update=_ticket_update(ctx, ticket))


def _ticket_update(ctx: Context, ticket: RecordRef) -> TicketUpdateDraft:
    """Incoming mail reopens a resolved ticket; a closed ticket stays closed."""
    user = ctx.view.parties.user
    author = user.email if user else ctx.view.counterparty.email
    reopen = ctx.view.parties.direction == "incoming" and ticket.status == "resolved"
    return TicketUpdateDraft(ticket.ref.number, ctx.view.reply.text, author, reopen)


def _address(ctx: Context, email: str) -> Address:
    return ctx.view.names.get(email) or Address("", email)


def _title(ctx: Context, person: Address) -> str:
    subject = strip_reply_prefixes(ctx.view.subject)
    return (subject or f"E-mail from {person.name or person.email}")[:300]
