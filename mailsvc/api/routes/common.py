"""Pieces shared by the routers: id parameters and the e-mail timeline of a record."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from sqlalchemy import ColumnElement

from mailsvc.api import schemas as s
from mailsvc.api import views
from mailsvc.api.deps import Session
from mailsvc.crmstore import services
from mailsvc.crmstore.models import LinkTarget
from mailsvc.crmstore.services.common import Actor
from mailsvc.errors import RuleViolation

PathId = Annotated[int, Path(ge=1, le=s.MAX_ID)]
Limit = Annotated[int, Query(ge=1, le=200)]
Offset = Annotated[int, Query(ge=0, le=s.MAX_ID)]


def my_id(caller: Actor) -> int:
    """The calling user's id, for "my" views; a key without a user has none."""
    if caller.user_id is None:
        raise RuleViolation("mine=true needs a user's API key (this key belongs to no user)")
    return caller.user_id


def mine(model: Any, query: s.ListQuery, caller: Actor) -> list[ColumnElement[bool]]:
    """``owner_id = me`` when the query asks for ``mine``."""
    return [model.owner_id == my_id(caller)] if getattr(query, "mine", None) else []


def add_timeline(router: APIRouter, prefix: str, target: LinkTarget, what: str,
                 tag: str | None = None) -> None:
    """``GET {prefix}/{id}/emails``: the record's e-mails, newest first (tagged ``tag`` when
    the router has no tag of its own)."""
    article = "an" if what[:1] in "aeiou" else "a"

    @router.get(f"{prefix}/{{record_id}}/emails", summary=f"E-mail timeline of {article} {what}",
                operation_id=f"timeline_{target.value}", tags=[tag] if tag else None)
    async def timeline(
        record_id: PathId, session: Session, limit: Limit = 50, offset: Offset = 0,
    ) -> s.Page[s.TimelineEntry]:
        rows, total = await services.timeline(session, target, record_id, limit=limit,
                                              offset=offset)
        items = [s.TimelineEntry(email=views.email(email), linked_by=rule)
                 for email, rule in rows]
        return s.Page(items=items, total=total, limit=limit, offset=offset)
