"""Helpers shared by the service modules: lookups, edit guards, extensible lists."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.base import Base
from mailsvc.crmstore.models import ChoiceOption, Tag
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


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """The result of a create-with-duplicate-protection: the record and whether it is new."""

    record: T
    created: bool
    warning: str | None = None


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
    extra = await session.scalars(
        select(ChoiceOption.name).where(ChoiceOption.kind == kind, ChoiceOption.active)
        .order_by(ChoiceOption.position, ChoiceOption.name)
    )
    return list(dict.fromkeys([*BUILTIN_CHOICES[kind], *extra]))


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
    session: AsyncSession, kind: str, name: str, position: int = 0
) -> ChoiceOption:
    if kind not in BUILTIN_CHOICES:
        raise RuleViolation(f"unknown list {kind!r} (lists: {', '.join(BUILTIN_CHOICES)})")
    name = name.strip()
    if not name:
        raise RuleViolation("a list value needs a name")
    if name.lower() in (v.lower() for v in await allowed_choices(session, kind)):
        raise Conflict(f"{name!r} is already in the {kind.replace('_', ' ')} list")
    option = ChoiceOption(kind=kind, name=name, position=position)
    session.add(option)
    await session.flush()
    return option


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
             "sa", "sarl", "bv", "nv", "plc", "se", "mbh", "e", "v", "ev", "haftungsbeschränkt"}
    core = [w for w in words if w not in legal]
    return " ".join(core or words)


def email_domain(address: str | None) -> str | None:
    if not address or "@" not in address:
        return None
    return address.rsplit("@", 1)[1].strip().lower() or None
