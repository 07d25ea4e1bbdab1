"""Helpers shared by the service modules: lookups, edit guards, extensible lists."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.base import Base
from mailsvc.crmstore.models import (
    ChoiceOption,
    Contact,
    Invoice,
    Opportunity,
    Order,
    Quote,
    Tag,
    Ticket,
)
from mailsvc.errors import Conflict, NotFound, RuleViolation
from mailsvc.freemail import freemail_domains

M = TypeVar("M", bound=Base)
T = TypeVar("T")

# Fields the store sets itself; no edit may touch them (seed 004: "never editable").
SYSTEM_FIELDS = frozenset({
    "id", "created_at", "updated_at", "qualified_at", "won_at", "lost_at", "deal_at",
    "archived_at", "resolved_at", "closed_at", "sent_at", "decided_at", "delivered_at",
    "stage_changed_at", "number", "customer_since",
})

# Built-in values of the extensible lists; admins add more as ChoiceOption rows.
BUILTIN_CHOICES: dict[str, tuple[str, ...]] = {
    "lead_source": ("facebook", "web form", "lead agency", "csv file", "cold calling", "e-mail",
                    "phone", "referral"),
    "priority": ("low", "normal", "high", "urgent"),
    "ticket_type": ("question", "incident", "problem", "complaint"),
}

# The one freemail list (mailsvc/freemail.py), shared with linking and CSV import.
FREEMAIL_DOMAINS = freemail_domains()


class DuplicateRecord(Conflict):
    """The record exists already (a conflict that names it): ``existing_id`` is its id."""

    def __init__(self, message: str, kind: str, existing_id: int) -> None:
        super().__init__(message)
        self.kind = kind
        self.existing_id = existing_id


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change: a user (by id and role), or a bootstrap / system key without a user.

    The caller puts it on the session (``act_as``); services read it from there, so stage history,
    activities, ticket updates, links and every event record the same actor."""

    user_id: int | None
    role: str
    key_id: int | None = None
    via: str = "api"

    def as_event(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "role": self.role, "key_id": self.key_id,
                "via": self.via}


ACTOR_KEY = "mailsvc.actor"


def act_as(session: AsyncSession, actor: Actor | None) -> None:
    """Every change made in this session from now on is ``actor``'s."""
    if actor is None:
        session.info.pop(ACTOR_KEY, None)
    else:
        session.info[ACTOR_KEY] = actor


def current_actor(session: AsyncSession) -> Actor | None:
    actor = session.info.get(ACTOR_KEY)
    return actor if isinstance(actor, Actor) else None


def actor_id(session: AsyncSession, explicit: int | None = None) -> int | None:
    """The acting user's id: the one passed explicitly, else the session's actor."""
    if explicit is not None:
        return explicit
    actor = current_actor(session)
    return actor.user_id if actor is not None else None


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """The result of a create-with-duplicate-protection: the record and whether it is new."""

    record: T
    created: bool
    warning: str | None = None
    # Created although it duplicates this record, on the caller's explicit override.
    duplicate_of: int | None = None


def label(model: type[Base]) -> str:
    return str(getattr(model, "__label__", model.__name__.lower()))


async def get_or_404(session: AsyncSession, model: type[M], ident: int, what: str = "") -> M:
    obj = await session.get(model, ident)
    if obj is None:
        raise NotFound(f"{what or _humane(model)} {ident} does not exist")
    return obj


async def ensure_exists(
    session: AsyncSession, model: type[Base], ident: int | None, what: str = ""
) -> None:
    """A referenced id must exist: a clear 'not found' beats a foreign-key error."""
    if ident is not None:
        await get_or_404(session, model, ident, what)


_ACCOUNT_REFS: dict[str, type[Base]] = {
    "opportunity": Opportunity, "contact": Contact, "quote": Quote, "order": Order,
    "invoice": Invoice, "ticket": Ticket,
}


async def same_account(
    session: AsyncSession, account_id: int | None, **refs: Base | int | None
) -> int | None:
    """Every referenced record (``contact=``/``contact_id=`` an instance or an id) that belongs
    to an account belongs to the same one, ``account_id`` if given. Returns that account (None
    when nothing names one). A record without an account fits any."""
    common = account_id
    source = "account"
    for name, ref in refs.items():
        if ref is None:
            continue
        kind = name.removesuffix("_id")
        record = ref if not isinstance(ref, int) else await get_or_404(
            session, _ACCOUNT_REFS[kind], ref, kind)
        owner = getattr(record, "account_id", None)
        if owner is None:
            continue
        if common is None:
            common, source = owner, f"{kind} {getattr(record, 'id', '')}"
        elif owner != common:
            where = (f"account {common}" if source == "account"
                     else f"account {common} (of {source})")
            raise RuleViolation(f"{kind} {getattr(record, 'id', '')} belongs to account {owner}, "
                                f"not to {where}")
    return common


def _humane(model: type[Base]) -> str:
    name = model.__name__
    return "".join(f" {c.lower()}" if c.isupper() else c for c in name).strip()


def guard_system_fields(changes: Mapping[str, Any]) -> None:
    forbidden = sorted(SYSTEM_FIELDS & set(changes))
    if forbidden:
        raise RuleViolation(
            f"{', '.join(forbidden)} {'is' if len(forbidden) == 1 else 'are'} set by the system "
            "and can never be edited"
        )


def apply_changes(obj: Base, changes: Mapping[str, Any], allowed: Iterable[str]) -> dict[str, Any]:
    """Set the allowed attributes; returns what really changed (name -> new value)."""
    guard_system_fields(changes)
    allowed = set(allowed)
    unknown = sorted(set(changes) - allowed)
    if unknown:
        raise RuleViolation(f"cannot change {', '.join(unknown)} here")
    columns = obj.__table__.columns
    for name, value in changes.items():
        if value is None and name in columns and not columns[name].nullable:
            raise RuleViolation(f"{name} cannot be empty")
    changed: dict[str, Any] = {}
    for name, value in changes.items():
        if getattr(obj, name) != value:
            setattr(obj, name, value)
            changed[name] = value
    return changed


async def allowed_choices(session: AsyncSession, kind: str) -> list[str]:
    """The active values of a list: the built-in ones an admin has not retired (or edited as
    rows), then the rows in their order."""
    rows = list(await session.execute(
        select(ChoiceOption.name, ChoiceOption.active).where(ChoiceOption.kind == kind)
        .order_by(ChoiceOption.position, ChoiceOption.id)
    ))
    as_rows = {name.lower() for name, _active in rows}
    builtin = [b for b in BUILTIN_CHOICES[kind] if b.lower() not in as_rows]
    return list(dict.fromkeys([*builtin, *(name for name, active in rows if active)]))


async def check_choice(session: AsyncSession, kind: str, value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    known = await allowed_choices(session, kind)
    for option in known:
        if option.lower() == value.lower():
            return option
    raise RuleViolation(
        f"unknown {kind.replace('_', ' ')} {value!r} (known: {', '.join(known)}; "
        "an admin can add more)"
    )


async def add_choice(
    session: AsyncSession, kind: str, name: str, position: int | None = None
) -> ChoiceOption:
    if kind not in BUILTIN_CHOICES:
        raise RuleViolation(f"unknown list {kind!r} (lists: {', '.join(BUILTIN_CHOICES)})")
    name = name.strip()
    if not name:
        raise RuleViolation("a list value needs a name")
    if name.lower() in (v.lower() for v in await allowed_choices(session, kind)):
        raise Conflict(f"{name!r} is already in the {kind.replace('_', ' ')} list")
    retired = await _choice_row(session, kind, name)
    if retired is not None:  # added again: it comes back
        retired.active = True
        await session.flush()
        return retired
    if position is None:
        last = await session.scalar(select(func.max(ChoiceOption.position))
                                    .where(ChoiceOption.kind == kind))
        position = 0 if last is None else last + 1
    option = ChoiceOption(kind=kind, name=name, position=position)
    session.add(option)
    await session.flush()
    return option


async def _choice_row(session: AsyncSession, kind: str, name: str) -> ChoiceOption | None:
    return await session.scalar(select(ChoiceOption).where(
        ChoiceOption.kind == kind, func.lower(ChoiceOption.name) == name.strip().lower()))


async def update_choice(
    session: AsyncSession, kind: str, value: str, changes: Mapping[str, Any]
) -> ChoiceOption:
    """Rename, move or retire (``active``) a value of a list, built-in ones included. Records
    keep the value they have."""
    if kind not in BUILTIN_CHOICES:
        raise RuleViolation(f"unknown list {kind!r} (lists: {', '.join(BUILTIN_CHOICES)})")
    row = await _choice_row(session, kind, value)
    builtin = next((b for b in BUILTIN_CHOICES[kind] if b.lower() == value.strip().lower()), None)
    if row is None:
        if builtin is None:
            raise NotFound(f"{value!r} is not in the {kind.replace('_', ' ')} list")
        row = ChoiceOption(kind=kind, name=builtin,
                           position=BUILTIN_CHOICES[kind].index(builtin))
        session.add(row)
    new_name = (changes.get("name") or "").strip()
    if new_name and new_name.lower() != row.name.lower():
        if await _choice_row(session, kind, new_name) is not None or new_name.lower() in (
                b.lower() for b in BUILTIN_CHOICES[kind]):
            raise Conflict(f"{new_name!r} is already in the {kind.replace('_', ' ')} list")
        row.name = new_name
        await session.flush()
        if builtin is not None:  # the built-in name stays retired
            session.add(ChoiceOption(kind=kind, name=builtin, position=row.position,
                                     active=False))
    elif new_name:
        row.name = new_name
    if changes.get("active") is not None:
        row.active = bool(changes["active"])
    if changes.get("position") is not None:
        row.position = int(changes["position"])
    await session.flush()
    return row


async def resolve_tags(session: AsyncSession, names: Iterable[str]) -> list[Tag]:
    """Tags by name, created on first use (names are compared case-insensitively)."""
    wanted = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    tags: list[Tag] = []
    for name in wanted:
        tag = await session.scalar(select(Tag).where(func.lower(Tag.name) == name.lower()))
        if tag is None:
            tag = Tag(name=name)
            session.add(tag)
            await session.flush()
        if tag not in tags:
            tags.append(tag)
    return tags


def normalise_email(address: str) -> str:
    return address.strip().lower()


def normalise_company(name: str) -> str:
    """A company name reduced for duplicate checks: case, punctuation and legal form ignored."""
    words = "".join(c.lower() if c.isalnum() else " " for c in name).split()
    legal = {"gmbh", "ag", "kg", "ohg", "ug", "ltd", "limited", "inc", "llc", "co", "corp",
             "sa", "sarl", "bv", "nv", "plc", "se", "mbh", "e", "v", "ev", "haftungsbeschränkt",
             "corporation", "incorporated", "company", "kgaa", "gbr", "llp", "lp", "pty", "oy",
             "ab", "spa", "srl", "sas", "gesmbh", "kft", "sp", "zoo"}
    core = [w for w in words if w not in legal]
    return " ".join(core or words)


def email_domain(address: str | None) -> str | None:
    if not address or "@" not in address:
        return None
    return address.rsplit("@", 1)[1].strip().lower() or None
