"""A small demo dataset, so a newcomer can see a linked mail within a minute."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore import services
from mailsvc.crmstore.models import (
    Account,
    Contact,
    LossReason,
    Opportunity,
    OpportunityKind,
    Pipeline,
    Ticket,
    User,
    UserRole,
)

USERS = (
    ("anna.seller@mailsvc.example", "Anna Seller", UserRole.SALES),
    ("sam.support@mailsvc.example", "Sam Support", UserRole.SUPPORT),
)
ACCOUNTS = (
    ("Acme GmbH", "acme.example", "Berlin"),
    ("Globex Ltd", "globex.example", "London"),
)
PIPELINES = (
    ("Leads", OpportunityKind.LEAD, (("New", 5), ("Contacted", 10), ("Qualified", 25))),
    ("Deals", OpportunityKind.DEAL, (("Needs analysis", 30), ("Proposal", 50),
                                     ("Negotiation", 75), ("Verbal yes", 90))),
)
LOSS_REASONS = ("Price", "Competitor", "No budget", "No decision", "Timing")
CONTACTS = (
    ("Carla", "Customer", "carla.customer@acme.example", 0),
    ("Gordon", "Buyer", "gordon.buyer@globex.example", 1),
)


async def seed(
    session: AsyncSession, opportunity_prefix: str = "OPP", ticket_prefix: str = "TCK"
) -> dict[str, list[dict[str, Any]]]:
    """Create the demo rows, or return them if they exist already (safe to run twice)."""
    users = [await _user(session, *row) for row in USERS]
    await _settings(session)
    accounts = [await _account(session, name, domain, city, users[0].id)
                for name, domain, city in ACCOUNTS]
    contacts = [
        await _contact(session, first, last, email, accounts[i].id, users[0].id)
        for first, last, email, i in CONTACTS
    ]
    opportunity = await session.scalar(
        select(Opportunity).where(Opportunity.title == "Acme: 20 seats, annual plan")
    ) or await services.create_opportunity(
        session, "Acme: 20 seats, annual plan", account_id=accounts[0].id,
        contact_id=contacts[0].id, owner_id=users[0].id, amount=Decimal("24000.00"),
        probability=40,
    )
    ticket = await session.scalar(
        select(Ticket).where(Ticket.subject == "Globex: login fails after update")
    ) or await services.create_ticket(
        session, "Globex: login fails after update", description="Reported by phone.",
        account_id=accounts[1].id, contact_id=contacts[1].id, owner_id=users[1].id,
        type="incident",
    )
    return {
        "users": [{"id": u.id, "email": u.email, "name": u.name, "role": str(u.role)}
                  for u in users],
        "accounts": [{"id": a.id, "name": a.name, "domains": [d.domain for d in a.domains],
                      "owner_id": a.owner_id} for a in accounts],
        "contacts": [{"id": c.id, "email": c.email, "name": f"{c.first_name} {c.last_name}",
                      "account_id": c.account_id, "owner_id": c.owner_id} for c in contacts],
        "opportunities": [{
            "id": opportunity.id, "number": f"{opportunity_prefix}-{opportunity.id}",
            "title": opportunity.title, "account_id": opportunity.account_id,
            "contact_id": opportunity.contact_id, "owner_id": opportunity.owner_id,
        }],
        "tickets": [{
            "id": ticket.id, "number": f"{ticket_prefix}-{ticket.id}", "subject": ticket.subject,
            "account_id": ticket.account_id, "contact_id": ticket.contact_id,
            "owner_id": ticket.owner_id,
        }],
    }


async def _user(session: AsyncSession, email: str, name: str, role: UserRole) -> User:
    return await services.find_user(session, email) or await services.create_user(
        session, email, name, role
    )


async def _account(
    session: AsyncSession, name: str, domain: str, city: str, owner_id: int
) -> Account:
    return await session.scalar(select(Account).where(Account.name == name)) or (
        await services.create_account(session, name, [domain], owner_id=owner_id, city=city)
    )


async def _contact(
    session: AsyncSession, first: str, last: str, email: str, account_id: int, owner_id: int
) -> Contact:
    return await session.scalar(select(Contact).where(Contact.email == email)) or (
        await services.create_contact(
            session, last, email, first_name=first, account_id=account_id, owner_id=owner_id
        )
    )


async def _settings(session: AsyncSession) -> None:
    """Pipelines with stages and default probabilities, an activity plan, loss reasons."""
    for name, kind, stages in PIPELINES:
        if await session.scalar(select(Pipeline.id).where(Pipeline.name == name)) is None:
            pipeline = await services.create_pipeline(
                session, name, kind, [services.StageSpec(s, p) for s, p in stages]
            )
            if kind == OpportunityKind.DEAL:
                await services.set_activity_plan(session, pipeline.id, [
                    services.PlanStepSpec("Kick-off call", 0),
                    services.PlanStepSpec("Send proposal", 3),
                    services.PlanStepSpec("Follow up on proposal", 10),
                ])
    for reason in LOSS_REASONS:
        if await session.scalar(select(LossReason.id).where(LossReason.name == reason)) is None:
            await services.create_loss_reason(session, reason)
