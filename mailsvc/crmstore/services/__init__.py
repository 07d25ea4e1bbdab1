"""Business rules of the CRM in one layer. Functions take a session and never commit: the caller
owns the transaction. Rule violations raise RuleViolation, missing records NotFound, duplicates
Conflict (mailsvc.errors); every change records its event in the outbox."""

from mailsvc.crmstore.services.activities import (
    complete_activity,
    create_activity,
    log_email_activity,
    schedule_activity_plan,
    update_activity,
)
from mailsvc.crmstore.services.admin import (
    create_budget,
    create_campaign,
    create_team,
    create_territory,
    set_budget_target,
    update_named,
)
from mailsvc.crmstore.services.common import (
    BUILTIN_CHOICES,
    Outcome,
    add_choice,
    allowed_choices,
    normalise_company,
    normalise_email,
)
from mailsvc.crmstore.services.documents import (
    cancel_invoice,
    create_invoice,
    create_order,
    create_quote,
    invoice_status,
    pay_invoice,
    set_order_status,
    set_quote_status,
    update_invoice,
    update_order,
    update_quote,
)
from mailsvc.crmstore.services.emails import link_email, timeline, unlink_email
from mailsvc.crmstore.services.inbox import (
    archive_inbox_lead,
    convert_inbox_lead,
    create_company_from_lead,
    create_inbox_lead,
    create_person_from_lead,
    update_inbox_lead,
)
from mailsvc.crmstore.services.opportunities import (
    change_stage,
    convert_to_deal,
    create_opportunity,
    mark_lost,
    mark_won,
    snapshot_open_opportunities,
    stage_history,
    subscribe,
    traffic_light,
    unsubscribe,
    update_opportunity,
    weighted_value,
)
from mailsvc.crmstore.services.people import (
    create_account,
    create_contact,
    create_user,
    find_account_duplicate,
    find_contact_duplicate,
    find_user,
    update_account,
    update_contact,
    update_user,
)
from mailsvc.crmstore.services.pipelines import (
    PlanStepSpec,
    StageSpec,
    activity_plan,
    add_stage,
    create_loss_reason,
    create_pipeline,
    delete_stage,
    set_activity_plan,
    update_loss_reason,
    update_pipeline,
    update_stage,
)
from mailsvc.crmstore.services.tickets import (
    add_ticket_update,
    change_ticket_status,
    create_ticket,
    update_ticket,
)

__all__ = [
    "BUILTIN_CHOICES", "Outcome", "PlanStepSpec", "StageSpec", "activity_plan", "add_choice",
    "add_stage", "add_ticket_update", "allowed_choices", "archive_inbox_lead", "cancel_invoice",
    "change_stage", "change_ticket_status", "complete_activity", "convert_inbox_lead",
    "convert_to_deal", "create_account", "create_activity", "create_budget", "create_campaign",
    "create_company_from_lead", "create_contact", "create_inbox_lead", "create_invoice",
    "create_loss_reason", "create_opportunity", "create_order", "create_person_from_lead",
    "create_pipeline", "create_quote", "create_team", "create_territory", "create_ticket",
    "create_user", "delete_stage", "find_account_duplicate", "find_contact_duplicate",
    "find_user", "invoice_status", "link_email", "log_email_activity", "mark_lost", "mark_won",
    "normalise_company", "normalise_email", "pay_invoice", "schedule_activity_plan",
    "set_activity_plan", "set_budget_target", "set_order_status", "set_quote_status",
    "snapshot_open_opportunities", "stage_history", "subscribe", "timeline", "traffic_light",
    "unlink_email", "unsubscribe", "update_account", "update_activity", "update_contact",
    "update_inbox_lead", "update_invoice", "update_loss_reason", "update_named",
    "update_opportunity", "update_order", "update_pipeline", "update_quote", "update_stage",
    "update_ticket", "update_user", "weighted_value",
]
