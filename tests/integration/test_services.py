"""Every business rule of the service layer, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore import services as crm
from mailsvc.crmstore.db import create_engine, create_session_factory
from mailsvc.crmstore.models import (
    Account,
    AccountStatus,
    Activity,
    ActivityType,
    BudgetMonth,
    Email,
    EmailLink,
    LinkTarget,
    OpportunityKind,
    OpportunitySnapshot,
    OpportunityStatus,
    OutboxEvent,
    Pipeline,
    TicketStatus,
)
from mailsvc.errors import Conflict, NotFound, RuleViolation


@pytest.fixture
async def session(database_url: str) -> AsyncIterator[AsyncSession]:
    engine = create_engine(database_url)
    async with create_session_factory(engine)() as session, session.begin():
        yield session
    await engine.dispose()


async def events(session: AsyncSession) -> list[str]:
    await session.flush()
    return list(await session.scalars(select(OutboxEvent.type).order_by(OutboxEvent.seq)))


async def deal_pipeline(session: AsyncSession) -> tuple[int, int, int]:
    # First among the pipelines: new deals start here rather than in the default one.
    pipeline = await crm.create_pipeline(session, "Deals", OpportunityKind.DEAL, [
        crm.StageSpec("Qualified", 20), crm.StageSpec("Proposal", 60)], position=0)
    return pipeline.id, pipeline.stages[0].id, pipeline.stages[1].id


async def stored_email(session: AsyncSession, key: str = "k") -> Email:
    email = Email(dedup_key=key, subject="Hello", from_email="eva@acme.example", raw=b"x",
                  size=1, intake_role="sales", outcome="lead_created",
                  received_at=datetime(2025, 1, 2, 10, tzinfo=UTC))
    session.add(email)
    await session.flush()
    return email


async def test_converting_an_inbox_lead_carries_data_and_keeps_the_link(
    session: AsyncSession,
) -> None:
    lead = await crm.create_inbox_lead(session, "Web: 50 seats", source="web form",
                                       company="Acme GmbH", first_name="Eva", last_name="Mai",
                                       email="Eva@Acme.example", budget=Decimal("5000"))
    email = await stored_email(session)
    session.add(EmailLink(email_id=email.id, target_type=LinkTarget.INBOX_LEAD,
                          target_id=lead.id, rule="new-lead"))
    opp, warnings = await crm.convert_inbox_lead(session, lead.id, create_company=True,
                                                 create_person=True)
    assert warnings == []
    assert (opp.title, opp.amount, opp.source) == ("Web: 50 seats", Decimal("5000"), "web form")
    assert opp.account_id == lead.account_id and opp.contact_id == lead.contact_id
    assert lead.opportunity_id == opp.id and lead.qualified_at is not None
    assert lead.open_key is None and str(lead.status) == "done"
    rows, total = await crm.timeline(session, LinkTarget.OPPORTUNITY, opp.id)
    assert total == 1 and rows[0][1] == "inbox-lead-converted"
    assert "inbox_lead.converted" in await events(session)
    first_qualified = lead.qualified_at
    with pytest.raises(Conflict, match="was converted"):
        await crm.convert_inbox_lead(session, lead.id)
    assert lead.qualified_at == first_qualified


async def test_created_at_and_qualified_at_are_never_editable(session: AsyncSession) -> None:
    lead = await crm.create_inbox_lead(session, "Lead")
    with pytest.raises(RuleViolation, match="qualified_at is set by the system"):
        await crm.update_inbox_lead(session, lead.id, {"qualified_at": datetime.now(UTC)})
    opp = await crm.create_opportunity(session, "Opp")
    with pytest.raises(RuleViolation, match="created_at is set by the system"):
        await crm.update_opportunity(session, opp.id, {"created_at": datetime.now(UTC)})


async def test_create_company_warns_and_links_an_existing_one(session: AsyncSession) -> None:
    existing = await crm.create_account(session, "ACME GmbH", ["acme.example"])
    lead = await crm.create_inbox_lead(session, "L", company="Acme gmbh.",
                                       email="x@other.example")
    outcome = await crm.create_company_from_lead(session, lead.id)
    assert outcome.created is False and outcome.record.id == existing.id
    assert "exists already" in (outcome.warning or "")
    by_domain = await crm.create_inbox_lead(session, "L2", company="Acme Cloud",
                                            email="y@acme.example")
    outcome = await crm.create_company_from_lead(session, by_domain.id)
    assert outcome.created is False and outcome.record.id == existing.id
    assert await session.scalar(select(func.count()).select_from(Account)) == 1


async def test_person_first_then_company_links_them(session: AsyncSession) -> None:
    lead = await crm.create_inbox_lead(session, "L", company="Initech", street="Main 1",
                                       zip="10115", city="Berlin", last_name="Lumbergh",
                                       email="bill@initech.example")
    person = await crm.create_person_from_lead(session, lead.id)
    company = await crm.create_company_from_lead(session, lead.id)
    assert person.created and company.created
    assert person.record.account_id == company.record.id
    assert (company.record.street, company.record.zip, company.record.city) == (
        "Main 1", "10115", "Berlin")
    assert [d.domain for d in company.record.domains] == ["initech.example"]
    again = await crm.create_inbox_lead(session, "L2", last_name="Other",
                                        email="BILL@initech.example")
    duplicate = await crm.create_person_from_lead(session, again.id)
    assert duplicate.created is False and duplicate.record.id == person.record.id
    assert "exists already" in (duplicate.warning or "")


async def test_freemail_domain_is_not_given_to_a_new_company(session: AsyncSession) -> None:
    lead = await crm.create_inbox_lead(session, "L", company="Solo", email="solo@gmail.com")
    outcome = await crm.create_company_from_lead(session, lead.id)
    assert outcome.created and outcome.record.domains == []


async def test_archived_lead_frees_its_open_key_and_cannot_convert(session: AsyncSession) -> None:
    lead = await crm.create_inbox_lead(session, "L")
    lead.open_key = "x@y.example"
    await crm.archive_inbox_lead(session, lead.id)
    assert lead.archived and lead.archived_at and lead.open_key is None
    with pytest.raises(RuleViolation, match="archived"):
        await crm.convert_inbox_lead(session, lead.id)


async def test_a_lead_becomes_a_deal_in_the_deal_pipeline(session: AsyncSession) -> None:
    pipeline_id, first, _ = await deal_pipeline(session)
    opp = await crm.create_opportunity(session, "Lead")
    assert opp.kind == OpportunityKind.LEAD and opp.deal_at is None
    lead_pipeline = await session.get(Pipeline, opp.pipeline_id)
    assert lead_pipeline is not None and lead_pipeline.kind == OpportunityKind.LEAD
    await crm.convert_to_deal(session, opp.id)
    assert opp.kind == OpportunityKind.DEAL and opp.deal_at is not None
    assert (opp.pipeline_id, opp.stage_id, opp.probability) == (pipeline_id, first, 20)
    with pytest.raises(Conflict, match="is a deal already"):
        await crm.convert_to_deal(session, opp.id)
    with pytest.raises(RuleViolation, match="is for deals, not for leads"):
        await crm.create_opportunity(session, "Lead", pipeline_id=pipeline_id)


async def test_stage_change_records_history_and_takes_the_default_probability(
    session: AsyncSession,
) -> None:
    pipeline_id, first, second = await deal_pipeline(session)
    opp = await crm.create_opportunity(session, "Deal", kind=OpportunityKind.DEAL,
                                       amount=Decimal("1000"))
    assert (opp.stage_id, opp.probability) == (first, 20)
    await crm.change_stage(session, opp.id, second)
    assert opp.probability == 60 and crm.weighted_value(opp) == Decimal("600.00")
    await crm.change_stage(session, opp.id, second, probability=75)
    assert opp.probability == 75
    history = await crm.stage_history(session, opp.id)
    assert [(h.from_stage_id, h.to_stage_id) for h in history] == [(None, first), (first, second)]
    other = await crm.create_pipeline(session, "Other", OpportunityKind.DEAL,
                                      [crm.StageSpec("X", 5)])
    with pytest.raises(RuleViolation, match="is not a stage of pipeline"):
        await crm.change_stage(session, opp.id, other.stages[0].id, pipeline_id=pipeline_id)
    assert (await events(session)).count("opportunity.stage_changed") == 2


async def test_won_makes_the_account_a_customer_and_freezes_the_deal(
    session: AsyncSession,
) -> None:
    _, _, second = await deal_pipeline(session)
    account = await crm.create_account(session, "Acme")
    opp = await crm.create_opportunity(session, "Deal", account_id=account.id,
                                       kind=OpportunityKind.DEAL, amount=Decimal("10"))
    await crm.mark_won(session, opp.id)
    assert opp.status == OpportunityStatus.WON and opp.won_at and opp.close_date
    assert account.status == AccountStatus.CUSTOMER and account.customer_since
    for change in ({"amount": Decimal("99")}, {"title": "New"}, {"tags": ["x"]}):
        with pytest.raises(RuleViolation, match="can no longer change"):
            await crm.update_opportunity(session, opp.id, change)
    with pytest.raises(RuleViolation, match="can no longer change"):
        await crm.change_stage(session, opp.id, second)
    with pytest.raises(RuleViolation, match="is won"):
        await crm.mark_lost(session, opp.id, None)
    owner = await crm.create_user(session, "o@corp.example", "O")
    await crm.update_opportunity(session, opp.id, {"owner_id": owner.id})  # not business data
    assert {"opportunity.won", "account.became_customer"} <= set(await events(session))


async def test_lost_needs_a_loss_reason(session: AsyncSession) -> None:
    opp = await crm.create_opportunity(session, "Deal")
    with pytest.raises(RuleViolation, match="lost needs a loss reason"):
        await crm.mark_lost(session, opp.id, None)
    reason = await crm.create_loss_reason(session, "Price")
    retired = await crm.create_loss_reason(session, "Old")
    await crm.update_loss_reason(session, retired.id, {"active": False})
    with pytest.raises(RuleViolation, match="retired"):
        await crm.mark_lost(session, opp.id, retired.id)
    await crm.mark_lost(session, opp.id, reason.id, note="too dear")
    assert opp.status == OpportunityStatus.LOST and opp.loss_reason_id == reason.id
    assert "opportunity.lost" in await events(session)


async def test_activity_plan_is_scheduled_in_order_from_the_start_date(
    session: AsyncSession,
) -> None:
    pipeline_id, _, _ = await deal_pipeline(session)
    await crm.set_activity_plan(session, pipeline_id, [
        crm.PlanStepSpec("Send offer", 3), crm.PlanStepSpec("Kick-off call", 0,
                                                            ActivityType.CALL),
        crm.PlanStepSpec("Follow up", 10)])
    opp = await crm.create_opportunity(session, "Deal", kind=OpportunityKind.DEAL)
    created = await crm.schedule_activity_plan(session, opp.id, date(2025, 6, 2))
    assert [(a.subject, a.due_at.date() if a.due_at else None) for a in created] == [
        ("Kick-off call", date(2025, 6, 2)), ("Send offer", date(2025, 6, 5)),
        ("Follow up", date(2025, 6, 12))]
    assert all(a.opportunity_id == opp.id for a in created)
    lead = await crm.create_opportunity(session, "In the default lead pipeline")
    with pytest.raises(RuleViolation, match="has no activity plan"):
        await crm.schedule_activity_plan(session, lead.id, date(2025, 6, 2))


async def test_ticket_status_transitions_write_updates(session: AsyncSession) -> None:
    ticket = await crm.create_ticket(session, "Broken", type="incident")
    await crm.change_ticket_status(session, ticket.id, TicketStatus.IN_PROGRESS)
    await crm.add_ticket_update(session, ticket.id, "Looking into it")
    await crm.change_ticket_status(session, ticket.id, TicketStatus.RESOLVED, note="patched")
    assert ticket.resolved_at is not None
    await crm.change_ticket_status(session, ticket.id, TicketStatus.CLOSED)
    assert ticket.closed_at is not None
    with pytest.raises(RuleViolation, match="cannot go from closed to resolved"):
        await crm.change_ticket_status(session, ticket.id, TicketStatus.RESOLVED)
    with pytest.raises(Conflict, match="is closed already"):
        await crm.change_ticket_status(session, ticket.id, TicketStatus.CLOSED)
    await crm.change_ticket_status(session, ticket.id, TicketStatus.OPEN)  # reopened
    assert ticket.resolved_at is None and ticket.closed_at is None
    await session.refresh(ticket, ["updates"])
    assert [(u.status_from, u.status_to) for u in ticket.updates] == [
        ("open", "in_progress"), (None, None), ("in_progress", "resolved"),
        ("resolved", "closed"), ("closed", "open")]
    assert (await events(session)).count("ticket.updated") == 5


async def test_a_ticket_concerns_one_order_or_one_invoice(session: AsyncSession) -> None:
    order = await crm.create_order(session, "O", Decimal("1"))
    invoice = await crm.create_invoice(session, Decimal("1"), date(2030, 1, 1),
                                       issued_on=date(2029, 12, 1))
    with pytest.raises(RuleViolation, match="not both"):
        await crm.create_ticket(session, "T", order_id=order.id, invoice_id=invoice.id)
    ticket = await crm.create_ticket(session, "T", order_id=order.id)
    with pytest.raises(RuleViolation, match="not both"):
        await crm.update_ticket(session, ticket.id, {"invoice_id": invoice.id})


async def test_ingested_mail_is_an_email_activity_on_the_timeline(
    session: AsyncSession,
) -> None:
    opp = await crm.create_opportunity(session, "Deal")
    email = await stored_email(session)
    session.add(EmailLink(email_id=email.id, target_type=LinkTarget.OPPORTUNITY,
                          target_id=opp.id, rule="subject-opportunity-id"))
    await session.flush()
    first = await crm.log_email_activity(session, email.id)
    again = await crm.log_email_activity(session, email.id)
    assert first.id == again.id and first.type == ActivityType.EMAIL and first.done
    assert first.opportunity_id == opp.id and opp.last_contact_at == email.received_at
    assert await session.scalar(select(func.count()).select_from(Activity)) == 1
    rows, total = await crm.timeline(session, LinkTarget.OPPORTUNITY, opp.id)
    assert total == 1 and rows[0][0].id == email.id


async def test_manual_link_and_unlink_record_events(session: AsyncSession) -> None:
    ticket = await crm.create_ticket(session, "T")
    email = await stored_email(session)
    link = await crm.link_email(session, email.id, LinkTarget.TICKET, ticket.id)
    assert link.rule == "manual"
    with pytest.raises(Conflict):
        await crm.link_email(session, email.id, LinkTarget.TICKET, ticket.id)
    with pytest.raises(NotFound, match="ticket 999"):
        await crm.link_email(session, email.id, LinkTarget.TICKET, 999)
    await crm.unlink_email(session, email.id, LinkTarget.TICKET, ticket.id)
    with pytest.raises(NotFound, match="is not linked"):
        await crm.unlink_email(session, email.id, LinkTarget.TICKET, ticket.id)
    assert (await events(session))[-2:] == ["email.linked", "email.unlinked"]


async def test_a_contact_cannot_work_for_another_account(session: AsyncSession) -> None:
    acme = await crm.create_account(session, "Acme")
    globex = await crm.create_account(session, "Globex")
    carla = await crm.create_contact(session, "Customer", "c@acme.example", account_id=acme.id)
    with pytest.raises(RuleViolation, match="belongs to account"):
        await crm.create_opportunity(session, "X", account_id=globex.id, contact_id=carla.id)
    opp = await crm.create_opportunity(session, "X", contact_id=carla.id)
    assert opp.account_id == acme.id  # taken from the contact


async def test_subscribers_follow_and_unfollow(session: AsyncSession) -> None:
    user = await crm.create_user(session, "u@corp.example", "U")
    opp = await crm.create_opportunity(session, "X")
    await crm.subscribe(session, opp.id, user.id)
    with pytest.raises(Conflict, match="follows"):
        await crm.subscribe(session, opp.id, user.id)
    await crm.unsubscribe(session, opp.id, user.id)
    assert opp.subscribers == []
    with pytest.raises(RuleViolation, match="does not follow"):
        await crm.unsubscribe(session, opp.id, user.id)


async def test_a_budget_year_gets_twelve_monthly_targets(session: AsyncSession) -> None:
    budget = await crm.create_budget(session, 2026, annual_total=Decimal("1000"))
    assert [m.month for m in budget.months] == list(range(1, 13))
    assert sum(m.target for m in budget.months) == Decimal("1000")
    with pytest.raises(Conflict, match="exists already"):
        await crm.create_budget(session, 2026)
    with pytest.raises(RuleViolation, match="12 monthly targets"):
        await crm.create_budget(session, 2027, [Decimal(1)] * 11)
    await crm.set_budget_target(session, budget.id, 3, Decimal("5"))
    assert await session.scalar(select(BudgetMonth.target).where(BudgetMonth.month == 3)) == 5


async def test_extensible_lists_accept_admin_values(session: AsyncSession) -> None:
    with pytest.raises(RuleViolation, match="unknown lead source"):
        await crm.create_inbox_lead(session, "L", source="trade fair")
    await crm.add_choice(session, "lead_source", "Trade fair")
    lead = await crm.create_inbox_lead(session, "L", source="trade FAIR")
    assert lead.source == "Trade fair"
    with pytest.raises(Conflict):
        await crm.add_choice(session, "lead_source", "facebook")


async def test_quote_order_invoice_rules(session: AsyncSession) -> None:
    from mailsvc.crmstore.models import QuoteStatus

    quote = await crm.create_quote(session, "Q", Decimal("10"))
    with pytest.raises(RuleViolation, match="only an accepted quote"):
        await crm.create_order(session, "O", Decimal("10"), quote_id=quote.id)
    await crm.set_quote_status(session, quote.id, QuoteStatus.ACCEPTED)
    with pytest.raises(RuleViolation, match="can no longer change"):
        await crm.update_quote(session, quote.id, {"amount": Decimal("11")})
    order = await crm.create_order(session, "O", Decimal("10"), quote_id=quote.id)
    invoice = await crm.create_invoice(session, Decimal("10"), date(2025, 1, 31),
                                       issued_on=date(2025, 1, 1), order_id=order.id)
    assert invoice.number == f"INV-2025-{invoice.id:05d}"
    assert crm.invoice_status(invoice, date(2025, 2, 1)) == "overdue"
    with pytest.raises(RuleViolation, match="before it is issued"):
        await crm.pay_invoice(session, invoice.id, date(2024, 12, 31))
    await crm.pay_invoice(session, invoice.id, date(2025, 2, 2))
    assert crm.invoice_status(invoice, date(2025, 3, 1)) == "paid"


async def test_monthly_snapshot_of_open_opportunities_is_idempotent(
    session: AsyncSession,
) -> None:
    await crm.create_opportunity(session, "A", amount=Decimal("5"))
    closed = await crm.create_opportunity(session, "B")
    await crm.mark_won(session, closed.id)
    assert await crm.snapshot_open_opportunities(session, date(2025, 3, 17)) == 1
    assert await crm.snapshot_open_opportunities(session, date(2025, 3, 1)) == 0
    month = await session.scalar(select(OpportunitySnapshot.month))
    assert month == date(2025, 3, 1)


async def test_first_slice_signatures_still_work(session: AsyncSession) -> None:
    user = await crm.create_user(session, "Anna@Corp.example", "Anna", aliases=["a@corp.example"])
    assert await crm.find_user(session, "A@CORP.example") == user
    account = await crm.create_account(session, "Acme", ["@Acme.example"], owner_id=user.id,
                                       city="Berlin")
    contact = await crm.create_contact(session, "Customer", "C@acme.example", first_name="C",
                                       account_id=account.id, owner_id=user.id)
    opp = await crm.create_opportunity(session, "O", account_id=account.id,
                                       contact_id=contact.id, owner_id=user.id,
                                       amount=Decimal("1"), probability=40)
    ticket = await crm.create_ticket(session, "T", description="d", account_id=account.id,
                                     requester_email="X@Y.example", type="incident")
    assert (opp.probability, ticket.requester_email, crm.normalise_email(" A@B ")) == (
        40, "x@y.example", "a@b")
    with pytest.raises(Conflict):
        await crm.create_user(session, "a@corp.example", "Dup")
