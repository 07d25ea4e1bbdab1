"""Alembic environment: runs on the connection mailsvc hands over (see crmstore/migrate.py)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from mailsvc.crmstore import models  # noqa: F401  (registers all tables)
from mailsvc.crmstore.base import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_from_url() -> None:
    from mailsvc.config import load_settings
    from mailsvc.crmstore.db import create_engine

    async def go() -> None:
        engine = create_engine(load_settings().database_url)
        async with engine.begin() as conn:
            await conn.run_sync(_run)
        await engine.dispose()

    asyncio.run(go())


connection = context.config.attributes.get("connection")
if connection is None:
    _run_from_url()
else:
    _run(connection)
