"""Never-log rules: addresses and domains whose mail is never stored (docs/linking.md)."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.crmstore.models import NeverLogRule
from mailsvc.crmstore.services.common import actor_id, get_or_404
from mailsvc.errors import Conflict, RuleViolation

_LABEL = r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")
_LOCAL = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")


def normalise_pattern(value: str) -> str:
    """An address (``hr@example.com``) or a domain (``example.com``; ``@example.com`` is read
    as the domain), lower case; RuleViolation for anything else."""
    pattern = value.strip().lower().removeprefix("@")
    local, at, domain = pattern.rpartition("@")
    if len(pattern) > 320 or not _DOMAIN.fullmatch(domain.rstrip(".") if domain else ""):
        raise RuleViolation(f"{value!r} is neither an e-mail address nor a domain")
    if at and not _LOCAL.fullmatch(local):
        raise RuleViolation(f"{value!r} is neither an e-mail address nor a domain")
    return f"{local}@{domain.rstrip('.')}" if at else domain.rstrip(".")


async def list_rules(session: AsyncSession) -> list[NeverLogRule]:
    return list(await session.scalars(select(NeverLogRule).order_by(NeverLogRule.pattern)))


async def add_rule(session: AsyncSession, value: str) -> NeverLogRule:
    """A new rule; Conflict when the pattern is listed already."""
    pattern = normalise_pattern(value)
    if await session.scalar(select(NeverLogRule.id).where(NeverLogRule.pattern == pattern)):
        raise Conflict(f"{pattern} is on the never-log list already")
    rule = NeverLogRule(pattern=pattern, created_by_id=actor_id(session))
    session.add(rule)
    await session.flush()
    return rule


async def delete_rule(session: AsyncSession, rule_id: int) -> None:
    await session.delete(await get_or_404(session, NeverLogRule, rule_id, "never-log rule"))
    await session.flush()
