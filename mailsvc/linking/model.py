"""The values linking works with: what the store knows and what linking decided."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from mailsvc.linking.references import IdPatterns, RecordId
from mailsvc.mail import split_extension

DecisionKind = Literal["link", "new_lead", "new_ticket", "ticket_update", "ignore", "drop"]
KindName = Literal["human", "auto_reply", "bounce", "list", "loop"]


@dataclass(frozen=True, slots=True)
class MailKind:
    """What sort of mail this is, why, and (for a bounce) which recipients bounced."""

    name: KindName = "human"
    reason: str | None = None
    bounced: tuple[str, ...] = ()

    @property
    def machine(self) -> bool:
        return self.name != "human"


HUMAN = MailKind()


class Rule(StrEnum):
    """The rules of linking; a decision names the one that decided (stored, and in the events).

    The values are the names stored with every mail and link; the order of the chain is
    ``mailsvc.linking.rules.RULES``, explained for users in docs/linking.md.
    """

    NEVER_LOG = "never_log"
    LOOP = "loop"
    BOUNCE = "bounce"
    LIST = "list"
    SENDER_UNVERIFIED = "sender_unverified"
    RATE_LIMITED = "rate_limited"
    RECORD_ADDRESS = "record_address"
    SUBJECT_ID = "subject_id"
    THREAD = "thread"
    AUTO_REPLY = "auto_reply"
    INTERNAL = "internal"
    NO_COUNTERPARTY = "no_counterparty"
    SINGLE_OPEN_RECORD = "single_open_record"
    NEW_TICKET = "new_ticket"
    OPEN_LEAD = "open_lead"
    FORWARD = "forward"
    ADDRESS = "address"
    NEW_LEAD = "new_lead"
    NO_MATCH = "no_match"


class Fact(StrEnum):
    """What the store knows that a rule may read: each value names a field of ``Facts``."""

    USERS = "users"
    USER_DOMAINS = "user_domains"
    CONTACTS = "contacts"
    ACCOUNTS_BY_DOMAIN = "accounts_by_domain"
    ACCOUNTS = "accounts"
    RECORDS = "records"
    THREAD = "thread"
    OPEN_OPPORTUNITIES = "open_opportunities"
    OPEN_TICKETS = "open_tickets"
    OPEN_LEADS = "open_leads"
    DEFAULT_OWNER = "default_owner_id"
    RECENT_MAIL = "recent_mail"
    NEVER_LOG = "never_log"


@dataclass(frozen=True, slots=True)
class Policy:
    """The parts of the settings that linking needs.

    ``internal_domains`` empty: the domains of our own users' (non-freemail) addresses are
    internal (``Facts.user_domains``).
    """

    patterns: IdPatterns
    intake_addresses: frozenset[str]
    internal_domains: frozenset[str] = frozenset()
    # Plus-addressing (bcc+OPP-12@...): the characters that start an extension ("" = off).
    recipient_delimiter: str = ""
    # Each intake address with its role, for record addresses found in headers (IMAP).
    intake_roles: tuple[tuple[str, str], ...] = ()
    # The loop guard: more mails than this from one sender to one record (or intake role) in
    # the window (MAILSVC_LOOP_GUARD_MINUTES, applied where the counts are loaded) create and
    # update nothing; 0 turns it off. Senders (addresses or domains) it never holds back.
    loop_guard_max: int = 0
    loop_guard_allow: frozenset[str] = frozenset()

    def intake_base(self, email: str) -> str | None:
        """The intake address ``email`` is, itself or with an extension; None if it is none."""
        if email in self.intake_addresses:
            return email
        base = split_extension(email, self.recipient_delimiter)[0]
        return base if base in self.intake_addresses else None


@dataclass(frozen=True, slots=True)
class UserRef:
    id: int
    email: str


@dataclass(frozen=True, slots=True)
class ContactRef:
    id: int
    account_id: int | None
    owner_id: int | None
    email: str


@dataclass(frozen=True, slots=True)
class AccountRef:
    id: int
    owner_id: int | None
    name: str = ""


@dataclass(frozen=True, slots=True)
class RecordRef:
    """An opportunity or ticket as linking sees it."""

    ref: RecordId
    status: str
    account_id: int | None
    contact_id: int | None
    owner_id: int | None


@dataclass(frozen=True, slots=True)
class ThreadRef:
    """The links of an earlier stored mail that this one replies to or references."""

    message_id: str
    opportunity_id: int | None = None
    ticket_id: int | None = None
    inbox_lead_id: int | None = None


@dataclass(frozen=True, slots=True)
class Wanted:
    """What linking needs looked up in the store before it can decide."""

    emails: frozenset[str]
    domains: frozenset[str]
    record_ids: tuple[RecordId, ...]
    message_ids: tuple[str, ...]
    # The header From address (the loop guard counts mails per sender).
    senders: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Facts:
    """The answers of the store to a Wanted."""

    users: Mapping[str, UserRef] = field(default_factory=dict)
    # The domains of all active users' addresses, freemail domains left out.
    user_domains: frozenset[str] = frozenset()
    contacts: Mapping[str, tuple[ContactRef, ...]] = field(default_factory=dict)
    accounts_by_domain: Mapping[str, tuple[AccountRef, ...]] = field(default_factory=dict)
    accounts: Mapping[int, AccountRef] = field(default_factory=dict)
    records: Mapping[RecordId, RecordRef] = field(default_factory=dict)
    thread: tuple[ThreadRef, ...] = ()
    open_opportunities: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    open_tickets: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    # Sender address -> the inbox lead still open for it (InboxLead.open_key).
    open_leads: Mapping[str, int] = field(default_factory=dict)
    default_owner_id: int | None = None
    # Mails stored from a sender in the loop guard's window, by (sender, target); the target is
    # ``opportunity:<id>`` or ``ticket:<id>`` (mails linked to it), or ``role:<role>`` (all its
    # mails that arrived on that intake role).
    recent_mail: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # The never-log rules (addresses, domains) that name an address of the mail(s) looked up.
    never_log: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Links:
    account: int | None = None
    contact: int | None = None
    owner: int | None = None
    opportunity: int | None = None
    ticket: int | None = None
    inbox_lead: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return {
            "account": self.account,
            "contact": self.contact,
            "owner": self.owner,
            "opportunity": self.opportunity,
            "ticket": self.ticket,
            "inbox_lead": self.inbox_lead,
        }

    @property
    def any(self) -> bool:
        return any(value is not None for value in self.as_dict().values())


@dataclass(frozen=True, slots=True)
class LeadDraft:
    """A new inbox lead as the mail describes it; ``email`` becomes its open key."""

    title: str
    email: str
    first_name: str | None
    last_name: str | None
    company: str | None = None
    phone: str | None = None


@dataclass(frozen=True, slots=True)
class TicketDraft:
    subject: str
    description: str
    requester_email: str
    requester_name: str | None
    type: str = "question"
    priority: str = "normal"


@dataclass(frozen=True, slots=True)
class TicketUpdateDraft:
    """An entry for a ticket's log: the new part of the mail, and whether to reopen the ticket."""

    ticket_id: int
    body: str
    author: str | None
    reopen: bool = False


@dataclass(frozen=True, slots=True)
class LinkDecision:
    """What to do with a mail, and which rule said so."""

    kind: DecisionKind
    rule: Rule
    links: Links = Links()
    direction: Literal["incoming", "outgoing"] = "incoming"
    automatic: bool = False
    mail_kind: str = "human"
    notes: tuple[str, ...] = ()
    lead: LeadDraft | None = None
    ticket: TicketDraft | None = None
    ticket_update: TicketUpdateDraft | None = None
    reply_text: str | None = None
    bounced: tuple[str, ...] = ()
    # The rules checked in chain order, the deciding one last.
    rules_tried: tuple[Rule, ...] = ()
