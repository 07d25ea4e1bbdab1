"""Filter, search, sort and paginate a list query in the database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from mailsvc.api.schemas import ListQuery
from mailsvc.errors import RuleViolation

PAGING = frozenset({"limit", "offset", "sort", "q"})


def equality_filters(model: Any, query: ListQuery, skip: Sequence[str] = ()) -> list[Any]:
    """``field=value`` for every filter of the query model that is a column of ``model``."""
    conditions = []
    for name, value in query.model_dump(exclude_none=True).items():
        if name in PAGING or name in skip:
            continue
        column = getattr(model, name, None)
        if isinstance(column, InstrumentedAttribute):
            conditions.append(column == value)
    return conditions


async def page(
    session: AsyncSession, model: Any, query: ListQuery, *,
    conditions: Sequence[ColumnElement[bool]] = (), search: Sequence[Any] = (),
    sorts: Sequence[str] = ("id", "created_at"), default_sort: str = "-id",
    statement: Select[Any] | None = None,
) -> tuple[list[Any], int]:
    stmt = statement if statement is not None else select(model)
    stmt = stmt.where(*conditions)
    if query.q and search:
        needle = query.q.strip().lower()
        stmt = stmt.where(or_(*(func.lower(col).contains(needle, autoescape=True)
                                for col in search)))
    # Count over the ids only: the rows' columns (a mail's raw bytes) are never read to count.
    counted = stmt.with_only_columns(model.id, maintain_column_froms=True).subquery()
    total = await session.scalar(select(func.count()).select_from(counted)) or 0
    sort = query.sort or default_sort
    name = sort.lstrip("-")
    if name not in sorts:
        raise RuleViolation(f"cannot sort by {name!r} (sortable: {', '.join(sorts)})")
    column = getattr(model, name)
    order = column.desc() if sort.startswith("-") else column.asc()
    tie = model.id.desc() if sort.startswith("-") else model.id.asc()
    rows = await session.scalars(stmt.order_by(order, tie).limit(query.limit).offset(query.offset))
    return list(rows), total
