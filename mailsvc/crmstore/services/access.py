"""Users act as themselves: API keys (stored as SHA-256 only), what each role may change."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import ApiKey, User, UserRole
from mailsvc.crmstore.outbox import record_event
from mailsvc.crmstore.services.common import Actor, actor_id, get_or_404
from mailsvc.errors import Conflict, RuleViolation

KEY_PREFIX = "msk_"

# What each role may change (POST, PUT, PATCH, DELETE), by the first path segment under
# /api/v1. Every role may read everything except the keys and the webhooks (their URLs and delivery
# log); admins may change everything.
WRITABLE: dict[str, frozenset[str]] = {
    UserRole.SALES: frozenset({
        "accounts", "contacts", "inbox-leads", "opportunities", "activities", "quotes",
        "orders", "invoices", "emails", "tags", "products"}),
    UserRole.SUPPORT: frozenset({"tickets", "activities", "contacts", "accounts", "emails"}),
}
ADMIN_ONLY_READS = frozenset({"keys", "webhooks"})
READS = frozenset({"GET", "HEAD", "OPTIONS"})


def may(role: str, method: str, area: str) -> bool:
    """Whether a caller with ``role`` may send ``method`` to the ``area`` (path segment)."""
    if role == UserRole.ADMIN:
        return True
    if method.upper() in READS:
        return area not in ADMIN_ONLY_READS
    return area in WRITABLE.get(role, frozenset())


def new_key() -> str:
    """A high-entropy random key (256 bits), recognisable by its prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just created: ``secret`` is shown this once and never stored."""

    record: ApiKey
    secret: str


async def create_api_key(
    session: AsyncSession, user_id: int, *, role: UserRole | None = None,
    name: str | None = None,
) -> IssuedKey:
    """A new key for the user, acting with ``role`` (default: the user's role)."""
    user = await get_or_404(session, User, user_id, "user")
    if not user.active:
        raise RuleViolation(f"user {user_id} is inactive: no new keys")
    secret = new_key()
    key = ApiKey(user_id=user.id, name=(name or "").strip() or None, key_hash=hash_key(secret),
                 prefix=secret[:len(KEY_PREFIX) + 6], role=role or user.role,
                 created_by_id=actor_id(session))
    session.add(key)
    await session.flush()
    record_event(session, "api_key.created",
                 {"id": key.id, "user_id": user.id, "role": str(key.role), "prefix": key.prefix},
                 subject=f"user/{user.id}")
    return IssuedKey(key, secret)


async def revoke_api_key(session: AsyncSession, key_id: int) -> ApiKey:
    key = await get_or_404(session, ApiKey, key_id, "API key")
    if key.revoked_at is not None:
        raise Conflict(f"API key {key_id} is revoked already")
    key.revoked_at = utcnow()
    await session.flush()
    record_event(session, "api_key.revoked", {"id": key.id, "user_id": key.user_id},
                 subject=f"user/{key.user_id}")
    return key


async def list_api_keys(session: AsyncSession, user_id: int | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.id)
    if user_id is not None:
        await get_or_404(session, User, user_id, "user")
        query = query.where(ApiKey.user_id == user_id)
    return list(await session.scalars(query))


async def resolve_api_key(session: AsyncSession, supplied: str) -> Actor | None:
    """The user a key belongs to (with the key's role), or None: unknown, revoked, or the
    user is inactive. Only hashes are compared, so the lookup leaks nothing of a key."""
    if not supplied.startswith(KEY_PREFIX) or len(supplied) > 200:
        return None
    digest = hash_key(supplied)
    row = (await session.execute(
        select(ApiKey, User.active).join(User, User.id == ApiKey.user_id)
        .where(ApiKey.key_hash == digest)
    )).first()
    if row is None:
        return None
    key, active = row
    if key.revoked_at is not None or not active or not hmac.compare_digest(key.key_hash, digest):
        return None
    return Actor(user_id=key.user_id, role=str(key.role), key_id=key.id, via="api-key")
