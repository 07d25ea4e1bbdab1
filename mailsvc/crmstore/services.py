"""Business rules of the CRM. Functions take a session and never commit: the caller owns the
transaction."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.models import (
    Account,
    AccountDomain,
    Contact,
    ContactEmail,
    Opportunity,
    Ticket,
    User,
    UserEmail,
    UserRole,
)
from mailsvc.crmstore.outbox import record_event


def normalise_email(address: str) -> str:
    return address.strip().lower()


async def create_user(
    session: AsyncSession, email: str, name: str, role: UserRole = UserRole.SALES,
    aliases: Iterable[str] = (),
) -> User:
    primary = normalise_email(email)
    addresses = dict.fromkeys([primary, *(normalise_email(a) for a in aliases)])
    user = User(email=primary, name=name, role=role,
                addresses=[UserEmail(email=a) for a in addresses])
    session.add(user)
    await session.flush()
    record_event(session, "user.created", {"id": user.id, "email": user.email},
                 subject=f"user/{user.id}")
    return user


async def create_account(
    session: AsyncSession, name: str, domains: Iterable[str] = (), owner_id: int | None = None,
    **fields: str | None,
) -> Account:
    account = Account(
        name=name, owner_id=owner_id,
        domains=[
            AccountDomain(domain=d.strip().lower().lstrip("@")) for d in dict.fromkeys(domains)
        ],
        **fields,
    )
    session.add(account)
    await session.flush()
    record_event(session, "account.created", {"id": account.id, "name": account.name},
                 subject=f"account/{account.id}")
    return account


async def create_contact(
    session: AsyncSession, last_name: str, email: str | None = None, *,
    first_name: str | None = None, account_id: int | None = None, owner_id: int | None = None,
    aliases: Iterable[str] = (), phone: str | None = None, role: str | None = None,
) -> Contact:
    primary = normalise_email(email) if email else None
    addresses = dict.fromkeys([a for a in [primary, *map(normalise_email, aliases)] if a])
    contact = Contact(
        first_name=first_name, last_name=last_name, email=primary, phone=phone, role=role,
        account_id=account_id, owner_id=owner_id,
        addresses=[ContactEmail(email=a) for a in addresses],
    )
    session.add(contact)
    await session.flush()
    record_event(session, "contact.created",
                 {"id": contact.id, "email": contact.email, "account_id": account_id},
                 subject=f"contact/{contact.id}")
    return contact


async def create_opportunity(
    session: AsyncSession, title: str, *, account_id: int | None = None,
    contact_id: int | None = None, owner_id: int | None = None, amount: Decimal | None = None,
    probability: int = 0,
) -> Opportunity:
    opportunity = Opportunity(
        title=title, account_id=account_id, contact_id=contact_id, owner_id=owner_id,
        amount=amount, probability=probability,
    )
    session.add(opportunity)
    await session.flush()
    record_event(
        session, "opportunity.created",
        {"id": opportunity.id, "title": title, "account_id": account_id,
         "contact_id": contact_id, "owner_id": owner_id},
        subject=f"opportunity/{opportunity.id}",
    )
    return opportunity


async def create_ticket(
    session: AsyncSession, subject: str, *, description: str = "",
    account_id: int | None = None, contact_id: int | None = None, owner_id: int | None = None,
    requester_email: str | None = None, requester_name: str | None = None,
    type: str = "question", priority: str = "normal",
) -> Ticket:
    ticket = Ticket(
        subject=subject[:500], description=description, account_id=account_id,
        contact_id=contact_id, owner_id=owner_id,
        requester_email=normalise_email(requester_email) if requester_email else None,
        requester_name=requester_name, type=type, priority=priority,
    )
    session.add(ticket)
    await session.flush()
    record_event(
        session, "ticket.created",
        {"id": ticket.id, "subject": ticket.subject, "account_id": account_id,
         "contact_id": contact_id, "owner_id": owner_id, "type": type},
        subject=f"ticket/{ticket.id}",
    )
    return ticket


async def find_user(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(
        select(User).join(UserEmail).where(UserEmail.email == normalise_email(email))
    )
