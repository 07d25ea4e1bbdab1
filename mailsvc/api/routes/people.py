"""Users, accounts and contacts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import select

from mailsvc.api import schemas as s
from mailsvc.api import views
from mailsvc.api.deps import Caller, Session
from mailsvc.api.listing import equality_filters, page
from mailsvc.api.routes.common import PathId, add_timeline
from mailsvc.crmstore import services
from mailsvc.crmstore.models import (
    Account,
    AccountDomain,
    AccountStatus,
    Contact,
    ContactEmail,
    ContactTag,
    LinkTarget,
    Tag,
    User,
    UserRole,
)
from mailsvc.crmstore.services import access
from mailsvc.crmstore.services.common import get_or_404

router = APIRouter()


class UserQuery(s.ListQuery):
    role: UserRole | None = None
    active: bool | None = None
    team_id: s.Id | None = None


@router.get("/users", tags=["users"])
async def list_users(query: Annotated[UserQuery, Query()], session: Session) -> s.Page[s.UserOut]:
    rows, total = await page(session, User, query, conditions=equality_filters(User, query),
                             search=(User.name, User.email), sorts=("id", "name", "email",
                                                                    "created_at"))
    return s.Page(items=[views.user(r) for r in rows], total=total, limit=query.limit,
                  offset=query.offset)


@router.post("/users", tags=["users"], status_code=201)
async def create_user(body: s.UserIn, session: Session) -> s.UserOut:
    user = await services.create_user(session, body.email, body.name, body.role, body.aliases,
                                      team_id=body.team_id)
    return views.user(user)


@router.get("/me", tags=["users"], summary="Who the caller is (the key's user and role)")
async def me(caller: Caller, session: Session) -> s.MeOut:
    user = await session.get(User, caller.user_id) if caller.user_id is not None else None
    return s.MeOut(user=views.user(user) if user else None, role=UserRole(caller.role),
                   key_id=caller.key_id, via=caller.via)


@router.get("/keys", tags=["users"], summary="API keys (admin); the keys themselves never")
async def list_keys(
    session: Session, user_id: Annotated[int | None, Query(ge=1, le=s.MAX_ID)] = None,
) -> list[s.ApiKeyOut]:
    return [s.ApiKeyOut.model_validate(k) for k in await access.list_api_keys(session, user_id)]


@router.post("/keys", tags=["users"], status_code=201,
             summary="Create a user's API key (admin); the key is in this response only")
async def create_key(body: s.ApiKeyIn, session: Session) -> s.ApiKeyIssuedOut:
    issued = await access.create_api_key(session, body.user_id, role=body.role, name=body.name)
    out = s.ApiKeyOut.model_validate(issued.record)
    return s.ApiKeyIssuedOut(**out.model_dump(), key=issued.secret)


@router.delete("/keys/{key_id}", tags=["users"], summary="Revoke an API key (admin)")
async def revoke_key(key_id: PathId, session: Session) -> s.ApiKeyOut:
    return s.ApiKeyOut.model_validate(await access.revoke_api_key(session, key_id))


@router.get("/users/{user_id}", tags=["users"])
async def get_user(user_id: PathId, session: Session) -> s.UserOut:
    return views.user(await get_or_404(session, User, user_id))


@router.patch("/users/{user_id}", tags=["users"])
async def update_user(user_id: PathId, body: s.UserPatch, session: Session) -> s.UserOut:
    user = await services.update_user(session, user_id, body.model_dump(exclude_unset=True))
    return views.user(user)


class AccountQuery(s.ListQuery):
    status: AccountStatus | None = None
    archived: bool | None = None
    owner_id: s.Id | None = None
    territory_id: s.Id | None = None
    team_id: s.Id | None = None
    city: s.Str200 | None = None
    industry: s.Str100 | None = None
    domain: s.Str300 | None = None


@router.get("/accounts", tags=["accounts"])
async def list_accounts(
    query: Annotated[AccountQuery, Query()], session: Session
) -> s.Page[s.AccountOut]:
    conditions = equality_filters(Account, query)
    if query.domain:
        conditions.append(Account.id.in_(
            select(AccountDomain.account_id)
            .where(AccountDomain.domain == query.domain.strip().lower().lstrip("@"))
        ))
    rows, total = await page(session, Account, query, conditions=conditions,
                             search=(Account.name, Account.city),
                             sorts=("id", "name", "city", "created_at", "updated_at"))
    return s.Page(items=[views.account(r) for r in rows], total=total, limit=query.limit,
                  offset=query.offset)


AllowDuplicate = Annotated[bool, Query(description=(
    "Create or change it although it duplicates an existing record (recorded in the event)."))]


@router.post("/accounts", tags=["accounts"], status_code=201, responses={
    409: {"description": "An account with the same name or domain exists (`existing_id`)"}})
async def create_account(
    body: s.AccountIn, session: Session, allow_duplicate: AllowDuplicate = False,
) -> s.AccountOut:
    fields = body.model_dump(exclude={"name", "domains", "owner_id", "allow_duplicate"})
    outcome = await services.add_account(
        session, body.name, body.domains, owner_id=body.owner_id,
        allow_duplicate=allow_duplicate or body.allow_duplicate, **fields)
    return views.account(outcome.record, outcome.duplicate_of)


@router.get("/accounts/{account_id}", tags=["accounts"])
async def get_account(account_id: PathId, session: Session) -> s.AccountOut:
    return views.account(await get_or_404(session, Account, account_id))


@router.patch("/accounts/{account_id}", tags=["accounts"])
async def update_account(
    account_id: PathId, body: s.AccountPatch, session: Session,
    allow_duplicate: AllowDuplicate = False,
) -> s.AccountOut:
    changes = body.model_dump(exclude_unset=True)
    return views.account(await services.update_account(session, account_id, changes,
                                                       allow_duplicate=allow_duplicate))


@router.post("/accounts/{account_id}/archive", tags=["accounts"],
             summary="Archive an account (history kept)")
async def archive_account(account_id: PathId, session: Session) -> s.AccountOut:
    return views.account(await services.archive_account(session, account_id))


@router.delete("/accounts/{account_id}", tags=["accounts"], status_code=204,
               summary="Delete = archive: the account and its history stay, out of the way")
async def delete_account(account_id: PathId, session: Session) -> Response:
    await services.archive_account(session, account_id)
    return Response(status_code=204)


@router.post("/accounts/{account_id}/restore", tags=["accounts"], summary="Undo the archiving")
async def restore_account(account_id: PathId, session: Session) -> s.AccountOut:
    return views.account(await services.archive_account(session, account_id, archived=False))


class ContactQuery(s.ListQuery):
    account_id: s.Id | None = None
    owner_id: s.Id | None = None
    active: bool | None = None
    email: s.Str320 | None = None
    tag: s.Str100 | None = None


@router.get("/contacts", tags=["contacts"])
async def list_contacts(
    query: Annotated[ContactQuery, Query()], session: Session
) -> s.Page[s.ContactOut]:
    conditions = equality_filters(Contact, query, skip=("email",))
    if query.email:
        conditions.append(Contact.id.in_(
            select(ContactEmail.contact_id)
            .where(ContactEmail.email == services.normalise_email(query.email))
        ))
    if query.tag:
        conditions.append(Contact.id.in_(
            select(ContactTag.contact_id).join(Tag).where(Tag.name == query.tag)
        ))
    rows, total = await page(session, Contact, query, conditions=conditions,
                             search=(Contact.first_name, Contact.last_name, Contact.email,
                                     Contact.phone),
                             sorts=("id", "last_name", "first_name", "created_at", "updated_at"))
    return s.Page(items=[views.contact(r) for r in rows], total=total, limit=query.limit,
                  offset=query.offset)


@router.post("/contacts", tags=["contacts"], status_code=201, responses={
    409: {"description": "A contact with one of the addresses exists (`existing_id`)"}})
async def create_contact(
    body: s.ContactIn, session: Session, allow_duplicate: AllowDuplicate = False,
) -> s.ContactOut:
    outcome = await services.add_contact(
        session, body.last_name, body.email, first_name=body.first_name,
        account_id=body.account_id, owner_id=body.owner_id, aliases=body.aliases,
        phone=body.phone, role=body.role, tags=body.tags, active=body.active,
        allow_duplicate=allow_duplicate or body.allow_duplicate,
    )
    return views.contact(outcome.record, outcome.duplicate_of)


@router.get("/contacts/{contact_id}", tags=["contacts"])
async def get_contact(contact_id: PathId, session: Session) -> s.ContactOut:
    return views.contact(await get_or_404(session, Contact, contact_id))


@router.patch("/contacts/{contact_id}", tags=["contacts"])
async def update_contact(
    contact_id: PathId, body: s.ContactPatch, session: Session,
    allow_duplicate: AllowDuplicate = False,
) -> s.ContactOut:
    changes = body.model_dump(exclude_unset=True)
    return views.contact(await services.update_contact(session, contact_id, changes,
                                                       allow_duplicate=allow_duplicate))


@router.post("/contacts/{contact_id}/archive", tags=["contacts"],
             summary="Archive (deactivate) a contact (history kept)")
async def archive_contact(contact_id: PathId, session: Session) -> s.ContactOut:
    return views.contact(await services.archive_contact(session, contact_id))


@router.delete("/contacts/{contact_id}", tags=["contacts"], status_code=204,
               summary="Delete = archive (deactivate): the contact and its history stay")
async def delete_contact(contact_id: PathId, session: Session) -> Response:
    await services.archive_contact(session, contact_id)
    return Response(status_code=204)


@router.post("/contacts/{contact_id}/restore", tags=["contacts"], summary="Undo the archiving")
async def restore_contact(contact_id: PathId, session: Session) -> s.ContactOut:
    return views.contact(await services.archive_contact(session, contact_id, archived=False))


add_timeline(router, "/accounts", LinkTarget.ACCOUNT, "account", tag="accounts")
add_timeline(router, "/contacts", LinkTarget.CONTACT, "contact", tag="contacts")
add_timeline(router, "/users", LinkTarget.OWNER, "user (as owner)", tag="users")
