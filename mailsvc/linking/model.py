"""The values linking works with: what the store knows and what linking decided."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from mailsvc.linking.references import RecordId

DecisionKind = Literal["link", "new_lead", "new_ticket", "ticket_update", "ignore"]
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


@dataclass(frozen=True, slots=True)
class Facts:
    """The answers of the store to a Wanted."""

    users: Mapping[str, UserRef] = field(default_factory=dict)
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
    rule: str | None
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
