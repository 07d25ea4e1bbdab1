"""What the benchmark scripts share: a throw-away PostgreSQL database and a plain-text table."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

PG_ADMIN_DSN = os.environ.get("MAILSVC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


async def create_database() -> tuple[str, str]:
    """A new empty database on the local server: its name and its mailsvc URL."""
    name = f"mailsvc_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return name, f"{base}/{name}"


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def render_table(columns: Sequence[tuple[str, str]], rows: Sequence[dict[str, Any]]) -> str:
    """Rows as an aligned text table; ``columns`` are (key, title) pairs."""
    header = [title for _, title in columns]
    body = [["" if row[key] is None else str(row[key]) for key, _ in columns] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *body, strict=True)]
    lines = [" | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
             for cells in (header, *body)]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
