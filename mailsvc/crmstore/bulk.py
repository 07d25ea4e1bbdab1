"""Rows inserted together, through SQLAlchemy Core: a group's rows go in one statement (or a few),
without the ORM's per-row bookkeeping, which cost more than the statement on the intake's
hot path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncSession


def table_of(model: Any) -> Table:
    """A mapped class's table."""
    return cast(Table, model.__table__)


async def insert_rows(session: AsyncSession, model: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (column name -> value; columns left out get their defaults)."""
    if rows:
        await session.execute(insert(table_of(model)), [dict(row) for row in rows])


async def insert_ids(
    session: AsyncSession, model: Any, rows: Sequence[Mapping[str, Any]]
) -> list[int]:
    """Insert ``rows`` into ``model``'s table with as few statements as the driver allows
    (SQLAlchemy's "insertmanyvalues"); the ids the database gave them, in the rows' order.

    PostgreSQL returns them in that order when asked (SQLAlchemy orders by a sentinel). On
    SQLite asking would cost one statement per row, so the ids are read back as they come and
    sorted: SQLite inserts a statement's rows in order and gives each the next larger id, and
    the caller's transaction holds the database's one write lock meanwhile.
    """
    if not rows:
        return []
    table = table_of(model)
    key = table.c.id
    if session.get_bind().dialect.name == "sqlite":
        result = await session.execute(insert(table).returning(key), list(rows))
        return sorted(result.scalars())
    ordered = insert(table).returning(key, sort_by_parameter_order=True)
    return list((await session.execute(ordered, list(rows))).scalars())
