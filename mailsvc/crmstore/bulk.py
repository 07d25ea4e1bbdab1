"""Rows inserted together, with their new ids in the rows' order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import FromClause, Table, insert
from sqlalchemy.ext.asyncio import AsyncSession


async def insert_ids(
    session: AsyncSession, table: FromClause, rows: Sequence[Mapping[str, Any]]
) -> list[int]:
    """Insert ``rows`` into ``table`` with as few statements as the driver allows (SQLAlchemy's
    "insertmanyvalues"); the ids the database gave them, in the rows' order.

    PostgreSQL returns them in that order when asked (SQLAlchemy orders by a sentinel). On
    SQLite asking would cost one statement per row, so the ids are read back as they come and
    sorted: SQLite inserts a statement's rows in order and gives each the next larger id, and
    the caller's transaction holds the database's one write lock meanwhile.
    """
    if not rows:
        return []
    table = cast(Table, table)  # a model's __table__
    key = table.c.id
    if session.get_bind().dialect.name == "sqlite":
        result = await session.execute(insert(table).returning(key), list(rows))
        return sorted(result.scalars())
    ordered = insert(table).returning(key, sort_by_parameter_order=True)
    return list((await session.execute(ordered, list(rows))).scalars())
