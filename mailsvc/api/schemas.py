"""Request and response bodies of the REST API (pydantic), with limits that match the store."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from mailsvc.crmstore.models import (
    AccountStatus,
    ActivityType,
    LeadStatus,
    LinkTarget,
    OpportunityKind,
    OpportunityStatus,
    OrderStatus,
    QuoteStatus,
    TicketStatus,
    UserRole,
)
from mailsvc.crmstore.services.common import SYSTEM_FIELDS

T = TypeVar("T")
MAX_ID = 2**31 - 1


def _clean_text(value: str) -> str:
    # The databases refuse NUL characters and lone surrogates: say so instead of failing later.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


def _utc(value: datetime) -> datetime:
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of the supported date range") from None


def _plausible_date(value: date) -> date:
    if not 1900 <= value.year <= 2999:
        raise ValueError("must be between the years 1900 and 2999")
    return value


def _plausible_datetime(value: datetime) -> datetime:
    if not 1900 <= value.year <= 2999:
        raise ValueError("must be between the years 1900 and 2999")
    return value


_clean = AfterValidator(_clean_text)
Str20 = Annotated[str, StringConstraints(max_length=20), _clean]
Str50 = Annotated[str, StringConstraints(max_length=50), _clean]
Str100 = Annotated[str, StringConstraints(max_length=100), _clean]
Str200 = Annotated[str, StringConstraints(max_length=200), _clean]
Str300 = Annotated[str, StringConstraints(max_length=300), _clean]
Str320 = Annotated[str, StringConstraints(max_length=320), _clean]
Str2000 = Annotated[str, StringConstraints(max_length=2000), _clean]
Str20000 = Annotated[str, StringConstraints(max_length=20000), _clean]
Str100000 = Annotated[str, StringConstraints(max_length=100000), _clean]
Req50 = Annotated[str, StringConstraints(min_length=1, max_length=50), _clean]
Req100 = Annotated[str, StringConstraints(min_length=1, max_length=100), _clean]
Req200 = Annotated[str, StringConstraints(min_length=1, max_length=200), _clean]
Req255 = Annotated[str, StringConstraints(min_length=1, max_length=255), _clean]
Req300 = Annotated[str, StringConstraints(min_length=1, max_length=300), _clean]
Req500 = Annotated[str, StringConstraints(min_length=1, max_length=500), _clean]


Id = Annotated[int, Field(ge=1, le=MAX_ID)]
def _cents(value: Decimal) -> Decimal:
    return value.quantize(CENT)


CENT = Decimal("0.01")
# Money in: up to 2 decimals, kept as cents; money out: always with 2 decimals ("20000.00"), on
# write as on read.
Amount = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=2, allow_inf_nan=False),
                   AfterValidator(_cents)]
Money = Annotated[Decimal, AfterValidator(_cents)]
Probability = Annotated[int, Field(ge=0, le=100)]
When = Annotated[datetime, AfterValidator(_utc), AfterValidator(_plausible_datetime)]
Day = Annotated[date, AfterValidator(_plausible_date)]
Email = Annotated[str, StringConstraints(max_length=320, pattern=r"^[^@\s]+@[^@\s]+$"),
                  AfterValidator(_clean_text)]
Name = Req200
Title = Req300
Short = Str100
TagList = Annotated[list[Req100], Field(max_length=50)]


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Patch(In):
    """A partial update: only the fields sent change; system fields are refused by name."""

    @model_validator(mode="before")
    @classmethod
    def _no_system_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            fixed = sorted(SYSTEM_FIELDS & set(data))
            if fixed:
                raise ValueError(f"{', '.join(fixed)}: set by the system, never editable")
        return data


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class ListQuery(BaseModel):
    limit: int = Field(50, ge=1, le=200, description="Page size.")
    offset: int = Field(0, ge=0, le=MAX_ID, description="Rows to skip.")
    sort: str | None = Field(None, max_length=60,
                             description="A field to sort by, `-field` for descending.")
    q: Str200 | None = Field(None, description="Free-text search.")


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


# ---------------------------------------------------------------- users, accounts, contacts
class UserIn(In):
    email: Email
    name: Name
    role: UserRole = UserRole.SALES
    aliases: Annotated[list[Email], Field(max_length=20)] = []
    team_id: Id | None = None


class UserPatch(Patch):
    name: Name | None = None
    role: UserRole | None = None
    active: bool | None = None
    team_id: Id | None = None


class UserOut(Out):
    id: int
    email: str
    name: str
    role: UserRole
    active: bool
    team_id: int | None
    aliases: list[str]
    created_at: datetime


class ApiKeyIn(In):
    user_id: Id
    role: UserRole | None = Field(None, description="Default: the user's role.")
    name: Str200 | None = None


class ApiKeyOut(Out):
    id: int
    user_id: int
    name: str | None
    prefix: str
    role: UserRole
    created_by_id: int | None
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyIssuedOut(ApiKeyOut):
    key: str = Field(description="The key itself: shown this once, only its hash is stored.")


class MeOut(BaseModel):
    user: UserOut | None
    role: UserRole
    key_id: int | None
    via: str


class AccountIn(In):
    name: Title
    domains: Annotated[list[Req255], Field(max_length=20)] = []
    status: AccountStatus = AccountStatus.PROSPECT
    owner_id: Id | None = None
    street: Str300 | None = None
    zip: Str20 | None = None
    city: Name | None = None
    country: Short | None = None
    industry: Short | None = None
    size: Str50 | None = None
    phone: Str50 | None = None
    website: Str300 | None = None
    territory_id: Id | None = None
    team_id: Id | None = None
    allow_duplicate: bool = Field(False, description=(
        "Create it although an account with the same name or domain exists (recorded)."))


class AccountPatch(Patch):
    name: Title | None = None
    domains: Annotated[list[Req255], Field(max_length=20)] | None = None
    status: AccountStatus | None = None
    owner_id: Id | None = None
    street: Str300 | None = None
    zip: Str20 | None = None
    city: Name | None = None
    country: Short | None = None
    industry: Short | None = None
    size: Str50 | None = None
    phone: Str50 | None = None
    website: Str300 | None = None
    territory_id: Id | None = None
    team_id: Id | None = None


class AccountOut(Out):
    id: int
    name: str
    status: AccountStatus
    domains: list[str]
    owner_id: int | None
    street: str | None
    zip: str | None
    city: str | None
    country: str | None
    industry: str | None
    size: str | None
    phone: str | None
    website: str | None
    territory_id: int | None
    team_id: int | None
    customer_since: datetime | None
    archived: bool
    created_at: datetime
    updated_at: datetime
    duplicate_of: int | None = Field(None, description=(
        "Created on an explicit override although it duplicates this account."))


class ContactIn(In):
    last_name: Req100
    first_name: Str100 | None = None
    email: Email | None = None
    aliases: Annotated[list[Email], Field(max_length=20)] = []
    phone: Str50 | None = None
    role: Short | None = None
    account_id: Id | None = None
    owner_id: Id | None = None
    active: bool = True
    tags: TagList = []
    allow_duplicate: bool = Field(False, description=(
        "Create it although a contact with one of its addresses exists (recorded)."))


class ContactPatch(Patch):
    last_name: Req100 | None = None
    first_name: Str100 | None = None
    email: Email | None = None
    aliases: Annotated[list[Email], Field(max_length=20)] | None = None
    phone: Str50 | None = None
    role: Short | None = None
    account_id: Id | None = None
    owner_id: Id | None = None
    active: bool | None = None
    tags: TagList | None = None


class ContactOut(Out):
    id: int
    first_name: str | None
    last_name: str
    email: str | None
    addresses: list[str]
    phone: str | None
    role: str | None
    account_id: int | None
    owner_id: int | None
    active: bool
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    duplicate_of: int | None = Field(None, description=(
        "Created on an explicit override although it duplicates this contact."))


# ---------------------------------------------------------------- pipelines
class StageIn(In):
    name: Name
    probability: Probability
    position: Annotated[int, Field(ge=0, le=1000)] | None = Field(None, description=(
        "Where among the pipeline's stages (0 = first); default: last."))


class StagePatch(Patch):
    name: Name | None = None
    probability: Probability | None = None
    position: Annotated[int, Field(ge=0, le=1000)] | None = None


class StageOut(Out):
    id: int
    pipeline_id: int
    name: str
    position: int
    probability: int


class PlanStepIn(In):
    subject: Req500
    offset_days: Annotated[int, Field(ge=0, le=3650)] = 0
    type: ActivityType = ActivityType.TASK


class PlanStepOut(Out):
    id: int
    position: int
    subject: str
    offset_days: int
    type: ActivityType


class PipelineIn(In):
    name: Name
    kind: OpportunityKind = OpportunityKind.DEAL
    position: Annotated[int, Field(ge=0, le=1000)] | None = Field(None, description=(
        "Where among all pipelines (0 = first, the default for new opportunities of its "
        "kind); default: last."))
    stages: Annotated[list[StageIn], Field(max_length=50)] = []


class PipelinePatch(Patch):
    name: Name | None = None
    kind: OpportunityKind | None = None
    position: Annotated[int, Field(ge=0, le=1000)] | None = None


class PipelineOut(Out):
    id: int
    name: str
    kind: OpportunityKind
    position: int
    stages: list[StageOut]
    created_at: datetime


class NamedIn(In):
    name: Name


class LossReasonPatch(Patch):
    name: Name | None = None
    active: bool | None = None


class LossReasonOut(Out):
    id: int
    name: str
    active: bool


# ---------------------------------------------------------------- opportunities
class OpportunityIn(In):
    title: Title
    description: Str20000 | None = Field(None, description="Needs, pains, wishes, notes.")
    kind: OpportunityKind = OpportunityKind.LEAD
    pipeline_id: Id | None = None
    stage_id: Id | None = None
    probability: Probability | None = None
    amount: Amount | None = None
    source: Short | None = None
    priority: Str50 | None = None
    tags: TagList = []
    delivery_date: Day | None = None
    start_date: Day | None = None
    close_date: Day | None = None
    account_id: Id | None = None
    contact_id: Id | None = None
    owner_id: Id | None = None
    subscriber_ids: Annotated[list[Id], Field(max_length=50)] = []
    campaign_id: Id | None = None
    territory_id: Id | None = None
    team_id: Id | None = None


class OpportunityPatch(Patch):
    title: Title | None = None
    description: Str20000 | None = None
    kind: Literal["deal"] | None = Field(None, description=(
        "Only `deal`: a lead becomes a deal (a deal never goes back to lead)."))
    pipeline_id: Id | None = None
    stage_id: Id | None = None
    probability: Probability | None = None
    amount: Amount | None = None
    source: Short | None = None
    priority: Str50 | None = None
    tags: TagList | None = None
    delivery_date: Day | None = None
    start_date: Day | None = None
    close_date: Day | None = None
    account_id: Id | None = None
    contact_id: Id | None = None
    owner_id: Id | None = None
    campaign_id: Id | None = None
    territory_id: Id | None = None
    team_id: Id | None = None


class OpportunityOut(Out):
    id: int
    number: str
    title: str
    description: str | None
    kind: OpportunityKind
    status: OpportunityStatus
    pipeline_id: int | None
    stage_id: int | None
    probability: int
    amount: Money | None
    weighted_value: Money | None
    source: str | None
    priority: str | None
    tags: list[str]
    delivery_date: date | None
    start_date: date | None
    close_date: date | None
    account_id: int | None
    contact_id: int | None
    owner_id: int | None
    subscriber_ids: list[int]
    loss_reason_id: int | None
    loss_note: str | None
    won_at: datetime | None
    lost_at: datetime | None
    deal_at: datetime | None
    last_contact_at: datetime | None
    traffic_light: Literal["green", "yellow", "red"] | None
    campaign_id: int | None
    territory_id: int | None
    team_id: int | None
    mail_address: str | None = Field(
        None, description="The opportunity's own address (bcc+OPP-12@...): mail sent or BCC'd "
        "to it is linked here (null when plus-addressing is off).")
    created_at: datetime
    updated_at: datetime


class StageChangeIn(In):
    stage_id: Id
    probability: Probability | None = None


class ConvertToDealIn(In):
    pipeline_id: Id | None = None
    stage_id: Id | None = None


class WonIn(In):
    close_date: Day | None = None


class LostIn(In):
    loss_reason_id: Id | None = None
    note: Str2000 | None = None
    close_date: Day | None = None


class SubscriberIn(In):
    user_id: Id


class ActivityPlanIn(In):
    start_date: Day
    owner_id: Id | None = None


class StageChangeOut(Out):
    id: int
    opportunity_id: int
    from_stage_id: int | None
    to_stage_id: int | None
    probability: int
    changed_by_id: int | None
    changed_at: datetime


# ---------------------------------------------------------------- inbox
class InboxLeadIn(In):
    title: Title
    source: Short = "e-mail"
    priority: Str50 = "normal"
    owner_id: Id | None = None
    company: Str300 | None = None
    street: Str300 | None = None
    zip: Str20 | None = None
    city: Name | None = None
    first_name: Str100 | None = None
    last_name: Str100 | None = None
    email: Email | None = None
    phone: Str50 | None = None
    budget: Amount | None = None
    campaign_id: Id | None = None
    notes: Str20000 | None = Field(None, description=(
        "Qualification notes: the prospect's pain, wishes, criteria (carried into the "
        "opportunity's description on conversion)."))
    category: Literal["cold", "mql", "sql"] | None = Field(None, description=(
        "Lead category: cold, marketing-qualified (mql), sales-qualified (sql)."))


class InboxLeadPatch(Patch):
    title: Title | None = None
    notes: Str20000 | None = Field(None, description=(
        "Qualification notes: the prospect's pain, wishes, criteria (carried into the "
        "opportunity's description on conversion)."))
    category: Literal["cold", "mql", "sql"] | None = Field(None, description=(
        "Lead category: cold, marketing-qualified (mql), sales-qualified (sql)."))
    source: Short | None = None
    priority: Str50 | None = None
    status: LeadStatus | None = None
    owner_id: Id | None = None
    company: Str300 | None = None
    street: Str300 | None = None
    zip: Str20 | None = None
    city: Name | None = None
    first_name: Str100 | None = None
    last_name: Str100 | None = None
    email: Email | None = None
    phone: Str50 | None = None
    budget: Amount | None = None
    campaign_id: Id | None = None


class InboxLeadOut(Out):
    id: int
    title: str
    notes: str | None
    category: str | None
    source: str
    priority: str
    status: LeadStatus
    owner_id: int | None
    company: str | None
    street: str | None
    zip: str | None
    city: str | None
    first_name: str | None
    last_name: str | None
    email: str | None
    phone: str | None
    budget: Money | None
    account_id: int | None
    contact_id: int | None
    opportunity_id: int | None
    qualified: bool
    qualified_at: datetime | None
    archived: bool
    archived_at: datetime | None
    campaign_id: int | None
    created_at: datetime


class ConvertLeadIn(In):
    kind: OpportunityKind = OpportunityKind.LEAD
    pipeline_id: Id | None = None
    owner_id: Id | None = None
    create_company: bool = False
    create_person: bool = False


class ConvertLeadOut(BaseModel):
    opportunity: OpportunityOut
    inbox_lead: InboxLeadOut
    warnings: list[str]


class CreatedFromLeadOut(BaseModel):
    id: int
    created: bool
    warning: str | None
    inbox_lead: InboxLeadOut


# ---------------------------------------------------------------- activities
class ActivityIn(In):
    type: ActivityType
    subject: Req500
    notes: Str20000 | None = None
    due_at: When | None = None
    done: bool = False
    owner_id: Id | None = None
    opportunity_id: Id | None = None
    ticket_id: Id | None = None
    account_id: Id | None = None
    contact_id: Id | None = None
    inbox_lead_id: Id | None = None


class ActivityPatch(Patch):
    type: ActivityType | None = None
    subject: Req500 | None = None
    notes: Str20000 | None = None
    due_at: When | None = None
    done: bool | None = None
    owner_id: Id | None = None
    opportunity_id: Id | None = None
    ticket_id: Id | None = None
    account_id: Id | None = None
    contact_id: Id | None = None
    inbox_lead_id: Id | None = None


class ActivityOut(Out):
    id: int
    type: ActivityType
    subject: str
    notes: str | None
    due_at: datetime | None
    done: bool
    done_at: datetime | None
    overdue: bool
    owner_id: int | None
    opportunity_id: int | None
    ticket_id: int | None
    account_id: int | None
    contact_id: int | None
    inbox_lead_id: int | None
    email_id: int | None
    created_by_id: int | None
    created_at: datetime


# ---------------------------------------------------------------- quotes, orders, invoices
class QuoteIn(In):
    title: Title
    amount: Amount
    valid_until: Day | None = None
    opportunity_id: Id | None = None
    account_id: Id | None = None
    contact_id: Id | None = None
    owner_id: Id | None = None


class QuotePatch(Patch):
    title: Title | None = None
    amount: Amount | None = None
    valid_until: Day | None = None
    owner_id: Id | None = None


class QuoteStatusIn(In):
    status: QuoteStatus


class QuoteOut(Out):
    id: int
    title: str
    amount: Money
    valid_until: date | None
    status: QuoteStatus
    opportunity_id: int | None
    account_id: int | None
    contact_id: int | None
    owner_id: int | None
    sent_at: datetime | None
    decided_at: datetime | None
    created_at: datetime


class OrderIn(In):
    title: Title
    amount: Amount
    delivery_date: Day | None = None
    quote_id: Id | None = None
    opportunity_id: Id | None = None
    account_id: Id | None = None
    owner_id: Id | None = None


class OrderPatch(Patch):
    title: Title | None = None
    amount: Amount | None = None
    delivery_date: Day | None = None
    owner_id: Id | None = None


class OrderStatusIn(In):
    status: OrderStatus


class OrderOut(Out):
    id: int
    title: str
    amount: Money
    delivery_date: date | None
    delivered_at: datetime | None
    status: OrderStatus
    quote_id: int | None
    opportunity_id: int | None
    account_id: int | None
    owner_id: int | None
    created_at: datetime


class InvoiceIn(In):
    amount: Amount
    due_date: Day
    issued_on: Day | None = None
    number: Req50 | None = None
    order_id: Id | None = None
    opportunity_id: Id | None = None
    account_id: Id | None = None
    owner_id: Id | None = None


class InvoicePatch(Patch):
    amount: Amount | None = None
    due_date: Day | None = None
    owner_id: Id | None = None


class PaymentIn(In):
    paid_date: Day


class InvoiceOut(Out):
    id: int
    number: str | None
    amount: Money
    issued_on: date
    due_date: date
    paid_date: date | None
    status: Literal["open", "paid", "cancelled", "overdue"]
    order_id: int | None
    opportunity_id: int | None
    account_id: int | None
    owner_id: int | None
    created_at: datetime


Rate = Annotated[Decimal, Field(ge=0, le=100, max_digits=5, decimal_places=2,
                                allow_inf_nan=False)]
Quantity = Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=3, allow_inf_nan=False)]


class ProductIn(In):
    name: Name
    sku: Str50 | None = None
    unit_price: Amount
    tax_rate: Rate = Decimal("0")


class ProductPatch(Patch):
    name: Name | None = None
    sku: Str50 | None = None
    unit_price: Amount | None = None
    tax_rate: Rate | None = None
    active: bool | None = None


class ProductOut(Out):
    id: int
    name: str
    sku: str | None
    unit_price: Money
    tax_rate: Decimal
    active: bool
    created_at: datetime


class LineItemIn(In):
    product_id: Id | None = None
    description: Str300 | None = None
    quantity: Quantity
    unit_price: Amount | None = Field(None, description="Default: the product's price.")
    discount_percent: Rate = Decimal("0")
    tax_rate: Rate | None = Field(None, description="Default: the product's rate, else 0.")


class LineItemOut(Out):
    id: int
    position: int
    product_id: int | None
    description: str
    quantity: Decimal
    unit_price: Money
    discount_percent: Decimal
    tax_rate: Decimal
    net: Money


class LineItemsOut(BaseModel):
    items: list[LineItemOut]
    net_total: Money = Field(description="The document's amount.")
    tax_total: Money
    gross_total: Money


# ---------------------------------------------------------------- tickets
class TicketIn(In):
    subject: Req500
    description: Str100000 = ""
    type: Req50 = "question"
    priority: Req50 = "normal"
    value_eur: Amount | None = None
    account_id: Id | None = None
    contact_id: Id | None = None
    owner_id: Id | None = None
    requester_email: Email | None = None
    requester_name: Name | None = None
    order_id: Id | None = None
    invoice_id: Id | None = None


class TicketPatch(Patch):
    subject: Req500 | None = None
    description: Str100000 | None = None
    type: Req50 | None = None
    priority: Req50 | None = None
    status: TicketStatus | None = None
    value_eur: Amount | None = None
    account_id: Id | None = None
    contact_id: Id | None = None
    owner_id: Id | None = None
    requester_email: Email | None = None
    requester_name: Name | None = None
    order_id: Id | None = None
    invoice_id: Id | None = None


class TicketUpdateIn(In):
    body: Str100000 = ""
    author: Str320 | None = None
    status: TicketStatus | None = None


class TicketUpdateOut(Out):
    id: int
    body: str
    author: str | None
    status_from: str | None
    status_to: str | None
    email_id: int | None
    author_id: int | None
    created_at: datetime


class TicketOut(Out):
    id: int
    number: str
    subject: str
    description: str
    type: str
    status: TicketStatus
    priority: str
    value_eur: Money | None
    account_id: int | None
    contact_id: int | None
    owner_id: int | None
    requester_email: str | None
    requester_name: str | None
    order_id: int | None
    invoice_id: int | None
    resolved_at: datetime | None
    closed_at: datetime | None
    mail_address: str | None = Field(
        None, description="The ticket's own address (support+TCK-7@...): mail sent to it is "
        "logged on the ticket (null when plus-addressing is off).")
    created_at: datetime
    updated_at: datetime


# ---------------------------------------------------------------- e-mails
class EmailLinkOut(Out):
    target_type: LinkTarget
    target_id: int
    rule: str
    created_by_id: int | None = Field(None, description="Who linked it by hand.")
    created_at: datetime


class EmailOut(Out):
    id: int
    message_id: str | None
    subject: str
    from_email: str | None
    from_name: str | None
    to: list[Any]
    cc: list[Any]
    sent_at: datetime | None
    received_at: datetime
    kind: str
    direction: str
    outcome: str
    rule: str | None
    intake_role: str
    links: list[EmailLinkOut]


class DeliveryOut(Out):
    """How the delivery of a mail we sent stands (docs/outbound.md)."""

    status: Literal["queued", "sent", "deferred", "failed"]
    attempts: int
    last_reply: str | None
    sent_at: datetime | None


class EmailDetailOut(EmailOut):
    text_body: str
    reply_text: str | None
    delivery: DeliveryOut | None = None


class AttachmentOut(BaseModel):
    id: int
    filename: str | None
    content_type: str
    content_id: str | None
    inline: bool
    size: int
    download: str


class TimelineEntry(BaseModel):
    email: EmailOut
    linked_by: str


class LinkIn(In):
    target_type: LinkTarget
    target_id: Id


# ---------------------------------------------------------------- reference data
class TerritoryIn(In):
    name: Name
    description: Str2000 | None = None


class TerritoryOut(Out):
    id: int
    name: str
    description: str | None


class TerritoryPatch(Patch):
    name: Name | None = None
    description: Str2000 | None = None


class TeamIn(In):
    name: Name
    territory_id: Id | None = None


class TeamPatch(Patch):
    name: Name | None = None
    territory_id: Id | None = None


class TeamOut(Out):
    id: int
    name: str
    territory_id: int | None


class CampaignIn(In):
    name: Name
    start_date: Day | None = None
    end_date: Day | None = None
    budget: Amount | None = None


class CampaignPatch(Patch):
    name: Name | None = None
    start_date: Day | None = None
    end_date: Day | None = None
    budget: Amount | None = None
    active: bool | None = None


class CampaignOut(Out):
    id: int
    name: str
    start_date: date | None
    end_date: date | None
    budget: Money | None
    active: bool


class TagOut(Out):
    id: int
    name: str


class ChoiceIn(In):
    name: Short
    position: Annotated[int, Field(ge=0, le=1000)] | None = Field(
        None, description="Where in the list (default: last).")


class ChoicePatch(Patch):
    name: Short | None = None
    active: bool | None = Field(None, description="false retires the value (records keep it).")
    position: Annotated[int, Field(ge=0, le=1000)] | None = None


class BudgetIn(In):
    year: Annotated[int, Field(ge=2000, le=2100)]
    name: Name | None = None
    user_id: Id | None = Field(None, description="A user's own targets; none: the company's.")
    targets: Annotated[list[Amount], Field(min_length=12, max_length=12)] | None = None
    annual_total: Amount | None = None


class BudgetMonthOut(Out):
    month: int
    target: Money


class BudgetOut(Out):
    id: int
    year: int
    name: str | None
    user_id: int | None
    months: list[BudgetMonthOut]


class BudgetTargetIn(In):
    target: Amount
