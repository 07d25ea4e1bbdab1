"""Users, accounts (companies) and contacts (people)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import (
    Account,
    AccountDomain,
    AccountStatus,
    Contact,
    ContactEmail,
    Opportunity,
    OpportunityStatus,
    SalesTeam,
    Territory,
    User,
    UserEmail,
    UserRole,
)
from mailsvc.crmstore.outbox import record_event
from mailsvc.crmstore.services.common import (
    DuplicateRecord,
    Outcome,
    apply_changes,
    ensure_exists,
    get_or_404,
    normalise_company,
    normalise_email,
    resolve_tags,
)
from mailsvc.errors import Conflict, RuleViolation

ACCOUNT_FIELDS = ("name", "status", "owner_id", "street", "zip", "city", "country", "industry",
                  "size", "phone", "website", "territory_id", "team_id")
CONTACT_FIELDS = ("first_name", "last_name", "email", "phone", "role", "account_id", "owner_id",
                  "active")
USER_FIELDS = ("name", "role", "active", "team_id")


async def create_user(
    session: AsyncSession, email: str, name: str, role: UserRole = UserRole.SALES,
    aliases: Iterable[str] = (), team_id: int | None = None,
) -> User:
    primary = normalise_email(email)
    addresses = list(dict.fromkeys([primary, *(normalise_email(a) for a in aliases)]))
    taken = await session.scalar(select(UserEmail.email).where(UserEmail.email.in_(addresses)))
    if taken:
        raise Conflict(f"the address {taken} belongs to another user already")
    await ensure_exists(session, SalesTeam, team_id, "sales team")
    user = User(email=primary, name=name, role=role, team_id=team_id,
                addresses=[UserEmail(email=a) for a in addresses])
    session.add(user)
    await session.flush()
    record_event(session, "user.created", {"id": user.id, "email": user.email},
                 subject=f"user/{user.id}")
    return user


async def update_user(session: AsyncSession, user_id: int, changes: Mapping[str, Any]) -> User:
    user = await get_or_404(session, User, user_id)
    await ensure_exists(session, SalesTeam, changes.get("team_id"), "sales team")
    changed = apply_changes(user, changes, USER_FIELDS)
    if changed:
        await session.flush()
        record_event(session, "user.updated", {"id": user.id, "changed": sorted(changed)},
                     subject=f"user/{user.id}")
    return user


async def find_user(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(
        select(User).join(UserEmail).where(UserEmail.email == normalise_email(email))
    )


def _domain(value: str) -> str:
    """A mail domain as compared: lower case, without scheme, ``www.``, path or leading ``@``."""
    value = value.strip().lower().lstrip("@")
    value = value.removeprefix("https://").removeprefix("http://").removeprefix("www.")
    return value.split("/", 1)[0].strip(".")


async def add_account(
    session: AsyncSession, name: str, domains: Iterable[str] = (), owner_id: int | None = None,
    *, allow_duplicate: bool = False, **fields: Any,
) -> Outcome[Account]:
    """A new account, unless one with the same normalised name or one of its domains exists:
    then DuplicateRecord (409) names it, or, with ``allow_duplicate``, it is created anyway and
    the response and the ``account.created`` event say which account it duplicates."""
    if not name.strip():
        raise RuleViolation("an account needs a name")
    await ensure_exists(session, User, owner_id, "user")
    await ensure_exists(session, Territory, fields.get("territory_id"), "territory")
    await ensure_exists(session, SalesTeam, fields.get("team_id"), "sales team")
    wanted = [d for d in dict.fromkeys(map(_domain, domains)) if d]
    existing = await _account_clash(session, name, wanted)
    if existing is not None and not allow_duplicate:
        raise existing[1]
    account = Account(
        name=name.strip(), name_key=normalise_company(name), owner_id=owner_id,
        domains=[AccountDomain(domain=d) for d in wanted], **fields,
    )
    session.add(account)
    await session.flush()
    duplicate_of = existing[0].id if existing is not None else None
    record_event(session, "account.created",
                 {"id": account.id, "name": account.name, "duplicate_of": duplicate_of,
                  "override": duplicate_of is not None},
                 subject=f"account/{account.id}")
    return Outcome(account, True, duplicate_of=duplicate_of)


async def create_account(
    session: AsyncSession, name: str, domains: Iterable[str] = (), owner_id: int | None = None,
    *, allow_duplicate: bool = False, **fields: Any,
) -> Account:
    outcome = await add_account(session, name, domains, owner_id,
                                allow_duplicate=allow_duplicate, **fields)
    return outcome.record


async def _account_clash(
    session: AsyncSession, name: str | None, domains: Iterable[str], exclude: int | None = None,
) -> tuple[Account, DuplicateRecord] | None:
    """The account another one would duplicate: same normalised name, or a domain it owns."""
    if name and name.strip():
        query = select(Account).where(Account.name_key == normalise_company(name))
        if exclude is not None:
            query = query.where(Account.id != exclude)
        found = await session.scalar(query.order_by(Account.id).limit(1))
        if found is not None:
            return found, DuplicateRecord(
                f"account {found.id} ({found.name!r}) has the same name; "
                "send allow_duplicate=true to create it anyway", "account", found.id)
    for domain in domains:
        query = select(Account).join(AccountDomain).where(AccountDomain.domain == domain)
        if exclude is not None:
            query = query.where(Account.id != exclude)
        found = await session.scalar(query.order_by(Account.id).limit(1))
        if found is not None:
            return found, DuplicateRecord(
                f"the domain {domain} belongs to account {found.id} ({found.name!r}); "
                "send allow_duplicate=true to use it anyway", "account", found.id)
    return None


async def update_account(
    session: AsyncSession, account_id: int, changes: Mapping[str, Any], *,
    allow_duplicate: bool = False,
) -> Account:
    account = await get_or_404(session, Account, account_id)
    changes = dict(changes)
    domains = changes.pop("domains", None)
    new_name = changes.get("name") if changes.get("name") not in (None, account.name) else None
    new_domains = [d for d in dict.fromkeys(map(_domain, domains or ())) if d
                   and d not in {x.domain for x in account.domains}]
    clash = await _account_clash(session, new_name, new_domains, exclude=account.id)
    if clash is not None and not allow_duplicate:
        raise clash[1]
    if changes.get("status") == AccountStatus.PROSPECT and account.status != changes["status"]:
        await _ensure_no_won_deal(session, account)
    await ensure_exists(session, User, changes.get("owner_id"), "user")
    await ensure_exists(session, Territory, changes.get("territory_id"), "territory")
    await ensure_exists(session, SalesTeam, changes.get("team_id"), "sales team")
    changed = apply_changes(account, changes, ACCOUNT_FIELDS)
    if changed.get("status") == AccountStatus.CUSTOMER and account.customer_since is None:
        account.customer_since = utcnow()
    if "name" in changed:
        account.name_key = normalise_company(account.name)
    if domains is not None:
        wanted = [d for d in dict.fromkeys(map(_domain, domains)) if d]
        if wanted != [d.domain for d in account.domains]:
            keep = {d.domain: d for d in account.domains}
            account.domains = [keep.get(d) or AccountDomain(domain=d) for d in wanted]
            changed["domains"] = wanted
    if changed:
        await session.flush()
        record_event(session, "account.updated", {"id": account.id, "changed": sorted(changed)},
                     subject=f"account/{account.id}")
    return account


async def archive_account(session: AsyncSession, account_id: int, archived: bool = True
                          ) -> Account:
    """Archive (or restore) an account: it stays with its history, but is out of the way."""
    account = await get_or_404(session, Account, account_id)
    if account.archived == archived:
        raise Conflict(f"account {account_id} is {'archived' if archived else 'not archived'} "
                       "already")
    account.archived = archived
    await session.flush()
    if archived:
        record_event(session, "account.archived", {"id": account.id},
                     subject=f"account/{account.id}")
    else:
        record_event(session, "account.restored", {"id": account.id},
                     subject=f"account/{account.id}")
    return account


async def archive_contact(session: AsyncSession, contact_id: int, archived: bool = True
                          ) -> Contact:
    """Archive (deactivate) or restore a contact; its mail and history stay."""
    contact = await get_or_404(session, Contact, contact_id)
    if contact.active != archived:
        raise Conflict(f"contact {contact_id} is {'archived' if archived else 'active'} already")
    contact.active = not archived
    await session.flush()
    record_event(session, "contact.updated", {"id": contact.id, "changed": ["active"]},
                 subject=f"contact/{contact.id}")
    return contact


async def _ensure_no_won_deal(session: AsyncSession, account: Account) -> None:
    won = await session.scalar(
        select(Opportunity.id).where(Opportunity.account_id == account.id,
                                     Opportunity.status == OpportunityStatus.WON).limit(1))
    if won is not None:
        raise RuleViolation(
            f"account {account.id} has won opportunity {won}: it is a customer (since "
            f"{account.customer_since:%Y-%m-%d}) and cannot go back to prospect"
            if account.customer_since else
            f"account {account.id} has won opportunity {won} and cannot go back to prospect")


async def find_account_duplicate(
    session: AsyncSession, name: str | None, domain: str | None = None
) -> Account | None:
    """An existing account with the same normalised name, or owning the mail domain."""
    if name and name.strip():
        found = await session.scalar(
            select(Account).where(Account.name_key == normalise_company(name))
            .order_by(Account.id).limit(1)
        )
        if found is not None:
            return found
    if domain:
        return await session.scalar(
            select(Account).join(AccountDomain).where(AccountDomain.domain == _domain(domain))
            .order_by(Account.id).limit(1)
        )
    return None


async def add_contact(
    session: AsyncSession, last_name: str, email: str | None = None, *,
    first_name: str | None = None, account_id: int | None = None, owner_id: int | None = None,
    aliases: Iterable[str] = (), phone: str | None = None, role: str | None = None,
    tags: Iterable[str] = (), active: bool = True, allow_duplicate: bool = False,
) -> Outcome[Contact]:
    """A new contact, unless one of its addresses (any case) belongs to a contact already: then
    DuplicateRecord (409) names that contact, or, with ``allow_duplicate``, it is created anyway
    and the response and the ``contact.created`` event say which contact it duplicates."""
    if not last_name.strip():
        raise RuleViolation("a contact needs a last name")
    await ensure_exists(session, Account, account_id, "account")
    await ensure_exists(session, User, owner_id, "user")
    primary = normalise_email(email) if email else None
    addresses = list(dict.fromkeys([a for a in [primary, *map(normalise_email, aliases)] if a]))
    clash = await _contact_clash(session, addresses)
    if clash is not None and not allow_duplicate:
        raise clash[1]
    contact = Contact(
        first_name=first_name, last_name=last_name.strip(), email=primary, phone=phone, role=role,
        account_id=account_id, owner_id=owner_id, active=active,
        addresses=[ContactEmail(email=a) for a in addresses],
        tags=await resolve_tags(session, tags),
    )
    session.add(contact)
    await session.flush()
    duplicate_of = clash[0].id if clash is not None else None
    record_event(session, "contact.created",
                 {"id": contact.id, "email": contact.email, "account_id": account_id,
                  "duplicate_of": duplicate_of, "override": duplicate_of is not None},
                 subject=f"contact/{contact.id}")
    return Outcome(contact, True, duplicate_of=duplicate_of)


async def create_contact(
    session: AsyncSession, last_name: str, email: str | None = None, *,
    first_name: str | None = None, account_id: int | None = None, owner_id: int | None = None,
    aliases: Iterable[str] = (), phone: str | None = None, role: str | None = None,
    tags: Iterable[str] = (), active: bool = True, allow_duplicate: bool = False,
) -> Contact:
    outcome = await add_contact(
        session, last_name, email, first_name=first_name, account_id=account_id,
        owner_id=owner_id, aliases=aliases, phone=phone, role=role, tags=tags, active=active,
        allow_duplicate=allow_duplicate)
    return outcome.record


async def _contact_clash(
    session: AsyncSession, addresses: Iterable[str], exclude: int | None = None,
) -> tuple[Contact, DuplicateRecord] | None:
    """The contact that owns one of the addresses already (addresses are stored lower-case)."""
    wanted = [normalise_email(a) for a in addresses if a]
    if not wanted:
        return None
    query = select(Contact, ContactEmail.email).join(ContactEmail).where(
        ContactEmail.email.in_(wanted))
    if exclude is not None:
        query = query.where(Contact.id != exclude)
    row = (await session.execute(query.order_by(Contact.id).limit(1))).first()
    if row is None:
        return None
    found, address = row
    return found, DuplicateRecord(
        f"the address {address} belongs to contact {found.id} already; "
        "send allow_duplicate=true to create it anyway", "contact", found.id)


async def update_contact(
    session: AsyncSession, contact_id: int, changes: Mapping[str, Any], *,
    allow_duplicate: bool = False,
) -> Contact:
    contact = await get_or_404(session, Contact, contact_id)
    changes = dict(changes)
    tags = changes.pop("tags", None)
    aliases = changes.pop("aliases", None)
    clash = await _contact_clash(session, [changes.get("email") or "", *(aliases or ())],
                                 exclude=contact.id)
    if clash is not None and not allow_duplicate:
        raise clash[1]
    await ensure_exists(session, Account, changes.get("account_id"), "account")
    await ensure_exists(session, User, changes.get("owner_id"), "user")
    if changes.get("email"):
        changes["email"] = normalise_email(changes["email"])
    changed = apply_changes(contact, changes, CONTACT_FIELDS)
    if tags is not None:
        contact.tags = await resolve_tags(session, tags)
        changed["tags"] = [t.name for t in contact.tags]
    wanted = [a for a in [contact.email, *map(normalise_email, aliases or ())] if a]
    current = {a.email: a for a in contact.addresses}
    if aliases is not None or (contact.email and contact.email not in current):
        keep = wanted if aliases is not None else [*current, *wanted]
        contact.addresses = [current.get(a) or ContactEmail(email=a) for a in dict.fromkeys(keep)]
        changed["addresses"] = list(dict.fromkeys(keep))
    if changed:
        await session.flush()
        record_event(session, "contact.updated", {"id": contact.id, "changed": sorted(changed)},
                     subject=f"contact/{contact.id}")
    return contact


async def find_contact_duplicate(
    session: AsyncSession, email: str | None, first_name: str | None = None,
    last_name: str | None = None, account_id: int | None = None,
) -> Contact | None:
    """An existing contact with the address, or the same name at the same company."""
    if email:
        found = await session.scalar(
            select(Contact).join(ContactEmail)
            .where(ContactEmail.email == normalise_email(email)).order_by(Contact.id).limit(1)
        )
        if found is not None:
            return found
    if last_name and last_name.strip():
        query = select(Contact).where(
            func.lower(Contact.last_name) == last_name.strip().lower(),
            func.lower(func.coalesce(Contact.first_name, ""))
            == (first_name or "").strip().lower(),
        )
        if account_id is not None:
            query = query.where(Contact.account_id == account_id)
        elif email:
            return None  # a different address and no company: a namesake, not a duplicate
        return await session.scalar(query.order_by(Contact.id).limit(1))
    return None
