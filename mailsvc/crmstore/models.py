"""The CRM store's tables as SQLAlchemy 2 typed models."""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from mailsvc.crmstore.base import Base, JSONType, Timestamped, utcnow

Money = Numeric(14, 2)


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as plain strings with a CHECK, so adding a value is a small migration on any backend.
    return Enum(
        cls, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e],
        create_constraint=True, name=cls.__name__.lower(),
    )


class UserRole(enum.StrEnum):
    SALES = "sales"
    SUPPORT = "support"
    ADMIN = "admin"


class AccountStatus(enum.StrEnum):
    PROSPECT = "prospect"
    CUSTOMER = "customer"


class OpportunityKind(enum.StrEnum):
    LEAD = "lead"
    DEAL = "deal"


class OpportunityStatus(enum.StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"


class TicketStatus(enum.StrEnum):
    OPEN = "open"
    IN_PROGRESS = "in_progress"
    RESOLVED = "resolved"
    CLOSED = "closed"


class LeadStatus(enum.StrEnum):
    """The processing pipeline of an inbox lead; ``done`` means: archive it or convert it."""

    NEW = "new"
    CONTACTED = "contacted"
    QUALIFYING = "qualifying"
    DONE = "done"


class ActivityType(enum.StrEnum):
    CALL = "call"
    EMAIL = "email"
    MEETING = "meeting"
    TASK = "task"


class User(Timestamped, Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[UserRole] = mapped_column(_enum(UserRole), default=UserRole.SALES)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("sales_teams.id"), index=True)

    addresses: Mapped[list[UserEmail]] = relationship(
        back_populates="user", cascade="all, delete-orphan", lazy="selectin"
    )


class ApiKey(Timestamped, Base):
    """An API key of a user: only its SHA-256 is stored; the key is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the key, to tell keys apart in lists (not enough to guess it).
    prefix: Mapped[str] = mapped_column(String(16))
    role: Mapped[UserRole] = mapped_column(_enum(UserRole), default=UserRole.SALES)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    revoked_at: Mapped[datetime | None]


class UserEmail(Base):
    """Every address a user sends from; the primary address is one of them."""

    __tablename__ = "user_emails"

    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)

    user: Mapped[User] = relationship(back_populates="addresses")


class Account(Timestamped, Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(300), index=True)
    status: Mapped[AccountStatus] = mapped_column(
        _enum(AccountStatus), default=AccountStatus.PROSPECT
    )
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    street: Mapped[str | None] = mapped_column(String(300))
    zip: Mapped[str | None] = mapped_column(String(20))
    city: Mapped[str | None] = mapped_column(String(200))
    country: Mapped[str | None] = mapped_column(String(100))
    industry: Mapped[str | None] = mapped_column(String(100))
    size: Mapped[str | None] = mapped_column(String(50))
    phone: Mapped[str | None] = mapped_column(String(50))
    website: Mapped[str | None] = mapped_column(String(300))
    territory_id: Mapped[int | None] = mapped_column(ForeignKey("territories.id"), index=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("sales_teams.id"), index=True)
    customer_since: Mapped[datetime | None]
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    # The name reduced for duplicate checks (see services.normalise_company).
    name_key: Mapped[str | None] = mapped_column(String(300), index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    domains: Mapped[list[AccountDomain]] = relationship(
        back_populates="account", cascade="all, delete-orphan", lazy="selectin"
    )


class AccountDomain(Base):
    """A mail domain that belongs to an account (several accounts may share one)."""

    __tablename__ = "account_domains"
    __table_args__ = (UniqueConstraint("account_id", "domain"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    domain: Mapped[str] = mapped_column(String(255), index=True)

    account: Mapped[Account] = relationship(back_populates="domains")


class Contact(Timestamped, Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(50))
    role: Mapped[str | None] = mapped_column(String(100))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    addresses: Mapped[list[ContactEmail]] = relationship(
        back_populates="contact", cascade="all, delete-orphan", lazy="selectin"
    )
    tags: Mapped[list[Tag]] = relationship(secondary="contact_tags", lazy="selectin")


class ContactEmail(Base):
    """An address of a contact; a contact may have several, a shared address several contacts."""

    __tablename__ = "contact_emails"
    __table_args__ = (UniqueConstraint("contact_id", "email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320), index=True)
    bouncing: Mapped[bool] = mapped_column(Boolean, default=False)
    bounced_at: Mapped[datetime | None]

    contact: Mapped[Contact] = relationship(back_populates="addresses")


class Pipeline(Timestamped, Base):
    """A sales funnel: an ordered list of stages, for leads or for deals."""

    __tablename__ = "pipelines"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[OpportunityKind] = mapped_column(
        _enum(OpportunityKind), default=OpportunityKind.DEAL
    )
    position: Mapped[int] = mapped_column(Integer, default=0)

    stages: Mapped[list[Stage]] = relationship(
        back_populates="pipeline", cascade="all, delete-orphan", order_by="Stage.position",
        lazy="selectin",
    )


class Stage(Base):
    __tablename__ = "stages"
    __table_args__ = (
        UniqueConstraint("pipeline_id", "name"),
        CheckConstraint("probability >= 0 AND probability <= 100", name="probability_range"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer, default=0)
    probability: Mapped[int] = mapped_column(Integer, default=0)

    pipeline: Mapped[Pipeline] = relationship(back_populates="stages")


class LossReason(Base):
    __tablename__ = "loss_reasons"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Opportunity(Timestamped, Base):
    """A lead or a deal; its id is the number shown in subjects (``OPP-<id>``)."""

    __tablename__ = "opportunities"
    __table_args__ = (
        CheckConstraint("probability >= 0 AND probability <= 100", name="probability_range"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    kind: Mapped[OpportunityKind] = mapped_column(
        _enum(OpportunityKind), default=OpportunityKind.LEAD
    )
    status: Mapped[OpportunityStatus] = mapped_column(
        _enum(OpportunityStatus), default=OpportunityStatus.OPEN, index=True
    )
    pipeline_id: Mapped[int | None] = mapped_column(ForeignKey("pipelines.id"))
    stage_id: Mapped[int | None] = mapped_column(ForeignKey("stages.id"))
    probability: Mapped[int] = mapped_column(Integer, default=0)
    amount: Mapped[Decimal | None] = mapped_column(Money)
    source: Mapped[str | None] = mapped_column(String(100))
    priority: Mapped[str | None] = mapped_column(String(50))
    delivery_date: Mapped[date | None]
    start_date: Mapped[date | None]
    close_date: Mapped[date | None]
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), index=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    loss_reason_id: Mapped[int | None] = mapped_column(ForeignKey("loss_reasons.id"))
    won_at: Mapped[datetime | None]
    lost_at: Mapped[datetime | None]
    last_contact_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # When the opportunity became a deal (equal to created_at when it was created as one).
    deal_at: Mapped[datetime | None]
    stage_changed_at: Mapped[datetime | None]
    loss_note: Mapped[str | None] = mapped_column(Text)
    # The owner credited with a won deal's revenue: the owner when it was won.
    credited_owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    description: Mapped[str | None] = mapped_column(Text)
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"), index=True)
    territory_id: Mapped[int | None] = mapped_column(ForeignKey("territories.id"), index=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("sales_teams.id"), index=True)

    tags: Mapped[list[Tag]] = relationship(secondary="opportunity_tags", lazy="selectin")
    subscribers: Mapped[list[OpportunitySubscriber]] = relationship(
        cascade="all, delete-orphan", lazy="selectin"
    )


class TicketType(enum.StrEnum):
    QUESTION = "question"
    INCIDENT = "incident"
    PROBLEM = "problem"
    COMPLAINT = "complaint"


class Ticket(Timestamped, Base):
    """A service ticket; its id is the number shown in subjects (``TCK-<id>``)."""

    __tablename__ = "tickets"
    __table_args__ = (
        CheckConstraint("order_id IS NULL OR invoice_id IS NULL", name="one_document"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(String(500))
    description: Mapped[str] = mapped_column(Text, default="")
    type: Mapped[str] = mapped_column(String(50), default=TicketType.QUESTION.value)
    status: Mapped[TicketStatus] = mapped_column(
        _enum(TicketStatus), default=TicketStatus.OPEN, index=True
    )
    priority: Mapped[str] = mapped_column(String(50), default="normal")
    value_eur: Mapped[Decimal | None] = mapped_column(Money)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), index=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    requester_email: Mapped[str | None] = mapped_column(String(320), index=True)
    requester_name: Mapped[str | None] = mapped_column(String(200))
    resolved_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    # A ticket may concern one order or one invoice, never both.
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), index=True)
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"), index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    updates: Mapped[list[TicketUpdate]] = relationship(
        back_populates="ticket", cascade="all, delete-orphan", order_by="TicketUpdate.id"
    )


class TicketUpdate(Timestamped, Base):
    """One entry of a ticket's running log: a note, a status change or an incoming mail."""

    __tablename__ = "ticket_updates"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    body: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str | None] = mapped_column(String(320))
    status_from: Mapped[str | None] = mapped_column(String(32))
    status_to: Mapped[str | None] = mapped_column(String(32))
    email_id: Mapped[int | None] = mapped_column(ForeignKey("emails.id"))
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    ticket: Mapped[Ticket] = relationship(back_populates="updates")


class InboxLead(Timestamped, Base):
    """An inbound lead waiting to be qualified, archived or converted."""

    __tablename__ = "inbox_leads"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    source: Mapped[str] = mapped_column(String(100), default="e-mail")
    priority: Mapped[str] = mapped_column(String(50), default="normal")
    status: Mapped[LeadStatus] = mapped_column(_enum(LeadStatus), default=LeadStatus.NEW)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    company: Mapped[str | None] = mapped_column(String(300))
    street: Mapped[str | None] = mapped_column(String(300))
    zip: Mapped[str | None] = mapped_column(String(20))
    city: Mapped[str | None] = mapped_column(String(200))
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    phone: Mapped[str | None] = mapped_column(String(50))
    budget: Mapped[Decimal | None] = mapped_column(Money)
    # The sender's address while the lead is open; unique, so concurrent mail cannot open two.
    open_key: Mapped[str | None] = mapped_column(String(320), unique=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    opportunity_id: Mapped[int | None] = mapped_column(ForeignKey("opportunities.id"))
    qualified_at: Mapped[datetime | None]
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    archived_at: Mapped[datetime | None]
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"))
    # What the prospect needs and wants, qualification notes (seed: "pain", wishes).
    notes: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(20))


class Activity(Timestamped, Base):
    __tablename__ = "activities"

    id: Mapped[int] = mapped_column(primary_key=True)
    type: Mapped[ActivityType] = mapped_column(_enum(ActivityType))
    subject: Mapped[str] = mapped_column(String(500))
    notes: Mapped[str | None] = mapped_column(Text)
    due_at: Mapped[datetime | None]
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    done_at: Mapped[datetime | None]
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    opportunity_id: Mapped[int | None] = mapped_column(ForeignKey("opportunities.id"), index=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), index=True)
    inbox_lead_id: Mapped[int | None] = mapped_column(ForeignKey("inbox_leads.id"))
    email_id: Mapped[int | None] = mapped_column(ForeignKey("emails.id"), index=True)
    plan_step_id: Mapped[int | None] = mapped_column(ForeignKey("activity_plan_steps.id"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class Email(Base):
    """A stored mail: raw bytes kept, parsed headers and bodies, how it was linked."""

    __tablename__ = "emails"

    id: Mapped[int] = mapped_column(primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(1000), unique=True)
    message_id: Mapped[str | None] = mapped_column(String(1000), index=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    from_email: Mapped[str | None] = mapped_column(String(320), index=True)
    from_name: Mapped[str | None] = mapped_column(String(300))
    to: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    cc: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    reply_to: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    sent_at: Mapped[datetime | None]
    in_reply_to: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    references: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    headers: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    text_body: Mapped[str] = mapped_column(Text, default="")
    html_body: Mapped[str] = mapped_column(Text, default="")
    reply_text: Mapped[str | None] = mapped_column(Text)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    envelope_from: Mapped[str | None] = mapped_column(String(320))
    envelope_to: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    intake_role: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16), default="smtp")
    kind: Mapped[str] = mapped_column(String(16), default="human")
    direction: Mapped[str] = mapped_column(String(16), default="incoming")
    automatic: Mapped[bool] = mapped_column(Boolean, default=False)
    outcome: Mapped[str] = mapped_column(String(32))
    rule: Mapped[str | None] = mapped_column(String(64))
    notes: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # When the raw bytes, headers, bodies and attachments were removed (erasure, retention).
    content_removed_at: Mapped[datetime | None]

    attachments: Mapped[list[EmailAttachment]] = relationship(
        back_populates="email", cascade="all, delete-orphan"
    )
    links: Mapped[list[EmailLink]] = relationship(
        back_populates="email", cascade="all, delete-orphan"
    )


class EmailAttachment(Base):
    __tablename__ = "email_attachments"

    id: Mapped[int] = mapped_column(primary_key=True)
    email_id: Mapped[int] = mapped_column(ForeignKey("emails.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str | None] = mapped_column(String(500))
    content_type: Mapped[str] = mapped_column(String(200))
    content_id: Mapped[str | None] = mapped_column(String(500))
    inline: Mapped[bool] = mapped_column(Boolean, default=False)
    size: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)

    email: Mapped[Email] = relationship(back_populates="attachments")


class LinkTarget(enum.StrEnum):
    ACCOUNT = "account"
    CONTACT = "contact"
    OWNER = "owner"
    OPPORTUNITY = "opportunity"
    TICKET = "ticket"
    INBOX_LEAD = "inbox_lead"


class EmailLink(Timestamped, Base):
    """The e-mail belongs to this record; ``rule`` says why (or ``manual``)."""

    __tablename__ = "email_links"
    __table_args__ = (
        UniqueConstraint("email_id", "target_type", "target_id"),
        Index("ix_email_links_target", "target_type", "target_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email_id: Mapped[int] = mapped_column(ForeignKey("emails.id", ondelete="CASCADE"))
    target_type: Mapped[LinkTarget] = mapped_column(_enum(LinkTarget))
    target_id: Mapped[int] = mapped_column(Integer)
    rule: Mapped[str] = mapped_column(String(64))
    # Who made a manual link (automatic links have none).
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    email: Mapped[Email] = relationship(back_populates="links")


class OutboxEvent(Base):
    """An event, written in the same transaction as its change, kept until the broker has it."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "sent_at", "seq"),)

    seq: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=lambda: str(uuid.uuid4()))
    type: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str | None] = mapped_column(String(200))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class QuarantinedMail(Base):
    """A message that could not be processed, with its raw bytes and the reason."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(1000), unique=True)
    reason: Mapped[str] = mapped_column(Text)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    envelope_from: Mapped[str | None] = mapped_column(String(320))
    envelope_to: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    intake_role: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16), default="smtp")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    released_at: Mapped[datetime | None]


class IntakeMail(Base):
    """Accepted mail not yet decided: the raw bytes, the envelope and the dedup key, committed
    before the SMTP 250. Decide workers claim rows in id (arrival) order and delete each in the
    transaction that stores its e-mail or quarantine entry. On SQLite the intake is a file of
    its own with the same columns (``crmstore/intake_writer.SqliteIntake``), and this table
    stays empty."""

    __tablename__ = "intake"
    # Ids are never reused on SQLite either: "queued as N" names one mail only.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(1000), unique=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    mail_from: Mapped[str | None] = mapped_column(Text)
    rcpt_tos: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    role: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16), default="smtp")
    # Further facts the adapter recorded on the envelope (peer address, SMTP AUTH identity, ...).
    envelope_extra: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    accepted_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class NeverLogRule(Timestamped, Base):
    """An address (``hr@example.com``) or a domain (``example.com``, subdomains included) whose
    mail is never stored: to or from it, it is dropped at the decide step (docs/linking.md)."""

    __tablename__ = "never_log_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    pattern: Mapped[str] = mapped_column(String(320), unique=True)
    created_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )


class Erasure(Base):
    """The audit trail of removed personal data: who, when, how much; never whose."""

    __tablename__ = "erasures"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # "erase" (a person's data) or "retention" (old mail content).
    kind: Mapped[str] = mapped_column(String(16))
    # Who asked: "cli", "api", "retention"; never a name or an address.
    actor: Mapped[str] = mapped_column(String(100))
    counts: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class MailboxState(Base):
    """Where an IMAP poller stands in a mailbox: UIDVALIDITY and the last UID committed."""

    __tablename__ = "mailbox_state"

    name: Mapped[str] = mapped_column(String(500), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class QuoteStatus(enum.StrEnum):
    OPEN = "open"
    SENT = "sent"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class OrderStatus(enum.StrEnum):
    OPEN = "open"
    CONFIRMED = "confirmed"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


class InvoiceStatus(enum.StrEnum):
    """Stored status; ``overdue`` is derived (open and past its due date), never stored."""

    OPEN = "open"
    PAID = "paid"
    CANCELLED = "cancelled"


class Territory(Timestamped, Base):
    __tablename__ = "territories"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str | None] = mapped_column(Text)


class SalesTeam(Timestamped, Base):
    __tablename__ = "sales_teams"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    territory_id: Mapped[int | None] = mapped_column(ForeignKey("territories.id"))


class Campaign(Timestamped, Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    start_date: Mapped[date | None]
    end_date: Mapped[date | None]
    budget: Mapped[Decimal | None] = mapped_column(Money)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Tag(Base):
    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


class OpportunityTag(Base):
    __tablename__ = "opportunity_tags"

    opportunity_id: Mapped[int] = mapped_column(
        ForeignKey("opportunities.id", ondelete="CASCADE"), primary_key=True
    )
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)


class ContactTag(Base):
    __tablename__ = "contact_tags"

    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)


class OpportunitySubscriber(Timestamped, Base):
    """A user who follows an opportunity (shown on their board)."""

    __tablename__ = "opportunity_subscribers"

    opportunity_id: Mapped[int] = mapped_column(
        ForeignKey("opportunities.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True)


class ChoiceOption(Base):
    """An admin-added value of an extensible list (lead source, priority, ticket type)."""

    __tablename__ = "choice_options"
    __table_args__ = (UniqueConstraint("kind", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(100))
    position: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class StageChange(Base):
    """One move of an opportunity between stages (or pipelines)."""

    __tablename__ = "stage_history"

    id: Mapped[int] = mapped_column(primary_key=True)
    opportunity_id: Mapped[int] = mapped_column(
        ForeignKey("opportunities.id", ondelete="CASCADE"), index=True
    )
    from_stage_id: Mapped[int | None] = mapped_column(ForeignKey("stages.id"))
    to_stage_id: Mapped[int | None] = mapped_column(ForeignKey("stages.id"))
    probability: Mapped[int] = mapped_column(Integer, default=0)
    changed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class OpportunitySnapshot(Base):
    """The state of an open opportunity at the start of a month, for trend reports."""

    __tablename__ = "opportunity_snapshots"
    __table_args__ = (UniqueConstraint("month", "opportunity_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    month: Mapped[date] = mapped_column(index=True)
    opportunity_id: Mapped[int] = mapped_column(ForeignKey("opportunities.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    pipeline_id: Mapped[int | None] = mapped_column(ForeignKey("pipelines.id"))
    stage_id: Mapped[int | None] = mapped_column(ForeignKey("stages.id"))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    amount: Mapped[Decimal | None] = mapped_column(Money)
    probability: Mapped[int] = mapped_column(Integer, default=0)


class SnapshotMonth(Base):
    """A month whose opportunity snapshot was taken (also when nothing was open)."""

    __tablename__ = "snapshot_months"

    month: Mapped[date] = mapped_column(primary_key=True)
    taken_at: Mapped[datetime] = mapped_column(default=utcnow)


class ActivityPlanStep(Base):
    """A standard task of a pipeline's activity plan, due ``offset_days`` after the start date."""

    __tablename__ = "activity_plan_steps"

    id: Mapped[int] = mapped_column(primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(
        ForeignKey("pipelines.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer, default=0)
    type: Mapped[ActivityType] = mapped_column(_enum(ActivityType), default=ActivityType.TASK)
    subject: Mapped[str] = mapped_column(String(500))
    offset_days: Mapped[int] = mapped_column(Integer, default=0)


class Quote(Timestamped, Base):
    __tablename__ = "quotes"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    amount: Mapped[Decimal] = mapped_column(Money)
    valid_until: Mapped[date | None]
    status: Mapped[QuoteStatus] = mapped_column(
        _enum(QuoteStatus), default=QuoteStatus.OPEN, index=True
    )
    opportunity_id: Mapped[int | None] = mapped_column(ForeignKey("opportunities.id"), index=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    sent_at: Mapped[datetime | None]
    decided_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Order(Timestamped, Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    amount: Mapped[Decimal] = mapped_column(Money)
    delivery_date: Mapped[date | None]
    delivered_at: Mapped[datetime | None]
    status: Mapped[OrderStatus] = mapped_column(
        _enum(OrderStatus), default=OrderStatus.OPEN, index=True
    )
    quote_id: Mapped[int | None] = mapped_column(ForeignKey("quotes.id"))
    opportunity_id: Mapped[int | None] = mapped_column(ForeignKey("opportunities.id"), index=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Invoice(Timestamped, Base):
    __tablename__ = "invoices"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str | None] = mapped_column(String(50), unique=True)
    amount: Mapped[Decimal] = mapped_column(Money)
    issued_on: Mapped[date]
    due_date: Mapped[date] = mapped_column(index=True)
    paid_date: Mapped[date | None]
    status: Mapped[InvoiceStatus] = mapped_column(
        _enum(InvoiceStatus), default=InvoiceStatus.OPEN, index=True
    )
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"))
    opportunity_id: Mapped[int | None] = mapped_column(ForeignKey("opportunities.id"), index=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Budget(Timestamped, Base):
    """Revenue targets of one year, the company's (no user) or one user's; its 12 months are
    created with it. One budget per year and user, one company budget per year."""

    __tablename__ = "budgets"
    __table_args__ = (
        UniqueConstraint("year", "user_id"),
        # NULLs are distinct in a unique constraint: the company's budget needs its own index.
        Index("uq_budgets_company_year", "year", unique=True,
              postgresql_where=text("user_id IS NULL"), sqlite_where=text("user_id IS NULL")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    year: Mapped[int] = mapped_column(Integer)
    name: Mapped[str | None] = mapped_column(String(200))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)

    months: Mapped[list[BudgetMonth]] = relationship(
        cascade="all, delete-orphan", order_by="BudgetMonth.month", lazy="selectin"
    )


class BudgetMonth(Base):
    __tablename__ = "budget_months"
    __table_args__ = (
        UniqueConstraint("budget_id", "month"),
        CheckConstraint("month >= 1 AND month <= 12", name="month_range"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    budget_id: Mapped[int] = mapped_column(ForeignKey("budgets.id", ondelete="CASCADE"))
    month: Mapped[int] = mapped_column(Integer)
    target: Mapped[Decimal] = mapped_column(Money, default=Decimal("0"))


class Product(Timestamped, Base):
    """Something we sell, with its list price and tax rate (a line item may differ)."""

    __tablename__ = "products"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    sku: Mapped[str | None] = mapped_column(String(64), unique=True)
    unit_price: Mapped[Decimal] = mapped_column(Money, default=Decimal("0"))
    tax_rate: Mapped[Decimal] = mapped_column(Numeric(5, 2), default=Decimal("0"))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class LineItem(Base):
    """A line of one quote, order or invoice; ``net`` is derived (quantity × price − discount)
    and kept for the reports; the document's amount is the sum of its lines' net."""

    __tablename__ = "line_items"
    __table_args__ = (
        CheckConstraint(
            "(CASE WHEN quote_id IS NULL THEN 0 ELSE 1 END + CASE WHEN order_id IS NULL THEN 0 "
            "ELSE 1 END + CASE WHEN invoice_id IS NULL THEN 0 ELSE 1 END) = 1",
            name="one_document"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    quote_id: Mapped[int | None] = mapped_column(
        ForeignKey("quotes.id", ondelete="CASCADE"), index=True)
    order_id: Mapped[int | None] = mapped_column(
        ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    invoice_id: Mapped[int | None] = mapped_column(
        ForeignKey("invoices.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    product_id: Mapped[int | None] = mapped_column(ForeignKey("products.id"), index=True)
    description: Mapped[str] = mapped_column(String(500))
    quantity: Mapped[Decimal] = mapped_column(Numeric(12, 3))
    unit_price: Mapped[Decimal] = mapped_column(Money)
    discount_percent: Mapped[Decimal] = mapped_column(Numeric(5, 2), default=Decimal("0"))
    tax_rate: Mapped[Decimal] = mapped_column(Numeric(5, 2), default=Decimal("0"))
    net: Mapped[Decimal] = mapped_column(Money)


# Outbound mail's and webhooks' tables live in their own modules; imported here so they register
# with the rest.
from mailsvc.crmstore import outbound_models, webhook_models  # noqa: E402, F401
