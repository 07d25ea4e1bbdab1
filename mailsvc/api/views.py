"""ORM rows to response bodies (numbers as in subjects, derived values, traffic light)."""

from __future__ import annotations

from datetime import datetime

from mailsvc.api import schemas as s
from mailsvc.config import LinkingSettings
from mailsvc.crmstore import services
from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import (
    Account,
    Activity,
    Contact,
    Email,
    InboxLead,
    Invoice,
    Opportunity,
    Ticket,
    User,
)
from mailsvc.mail import Role


def user(row: User) -> s.UserOut:
    return s.UserOut(id=row.id, email=row.email, name=row.name, role=row.role, active=row.active,
                     team_id=row.team_id, created_at=row.created_at,
                     aliases=[a.email for a in row.addresses if a.email != row.email])


def account(row: Account, duplicate_of: int | None = None) -> s.AccountOut:
    data = {name: getattr(row, name) for name in s.AccountOut.model_fields
            if name not in ("domains", "duplicate_of")}
    return s.AccountOut(**data, domains=[d.domain for d in row.domains],
                        duplicate_of=duplicate_of)


def contact(row: Contact, duplicate_of: int | None = None) -> s.ContactOut:
    data = {name: getattr(row, name) for name in s.ContactOut.model_fields
            if name not in ("addresses", "tags", "duplicate_of")}
    return s.ContactOut(**data, addresses=[a.email for a in row.addresses],
                        tags=[t.name for t in row.tags], duplicate_of=duplicate_of)


def opportunity(
    row: Opportunity, linking: LinkingSettings, now: datetime | None = None
) -> s.OpportunityOut:
    skip = {"number", "weighted_value", "tags", "subscriber_ids", "traffic_light", "mail_address"}
    data = {name: getattr(row, name) for name in s.OpportunityOut.model_fields if name not in skip}
    number = f"{linking.opportunity_prefix}-{row.id}"
    return s.OpportunityOut(
        **data, number=number, mail_address=linking.record_address(Role.BCC, number),
        weighted_value=services.weighted_value(row), tags=[t.name for t in row.tags],
        subscriber_ids=[sub.user_id for sub in row.subscribers],
        traffic_light=services.traffic_light(row, now or utcnow(), linking.stale_contact_days,
                                             linking.critical_contact_days),
    )


def ticket(row: Ticket, linking: LinkingSettings) -> s.TicketOut:
    data = {name: getattr(row, name) for name in s.TicketOut.model_fields
            if name not in ("number", "mail_address")}
    number = f"{linking.ticket_prefix}-{row.id}"
    return s.TicketOut(**data, number=number,
                       mail_address=linking.record_address(Role.SUPPORT, number))


def inbox_lead(row: InboxLead) -> s.InboxLeadOut:
    data = {name: getattr(row, name) for name in s.InboxLeadOut.model_fields
            if name != "qualified"}
    return s.InboxLeadOut(**data, qualified=row.opportunity_id is not None)


def activity(row: Activity, now: datetime | None = None) -> s.ActivityOut:
    data = {name: getattr(row, name) for name in s.ActivityOut.model_fields if name != "overdue"}
    overdue = not row.done and row.due_at is not None and row.due_at < (now or utcnow())
    return s.ActivityOut(**data, overdue=overdue)


def invoice(row: Invoice) -> s.InvoiceOut:
    data = {name: getattr(row, name) for name in s.InvoiceOut.model_fields if name != "status"}
    status = services.invoice_status(row, utcnow().date())
    return s.InvoiceOut(**data, status=status)


def email(row: Email, detail: bool = False) -> s.EmailOut:
    model = s.EmailDetailOut if detail else s.EmailOut
    data = {name: getattr(row, name) for name in model.model_fields
            if name not in ("links", "delivery")}
    return model(**data, links=[s.EmailLinkOut.model_validate(link) for link in row.links])
