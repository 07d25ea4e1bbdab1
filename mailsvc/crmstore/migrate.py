"""Schema migrations with Alembic: upgrade to head, and tell whether a database is current.

On PostgreSQL an upgrade holds a transaction-scoped advisory lock, so processes that start together
on the same database migrate one after the other: the first upgrades, the others then find the
schema current and do nothing. Migrations run on a connection of their own without the statement
and command timeouts of normal work (a schema change may legitimately take long), but they wait
for another migrator's lock at most ``Timeouts.for_migrations().lock`` seconds.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from mailsvc.crmstore.db import create_engine
from mailsvc.crmstore.timeouts import Timeouts

MIGRATIONS = Path(__file__).with_name("migrations")
# pg_advisory_xact_lock key shared by every mailsvc process migrating a database ("mailsvc").
MIGRATION_LOCK_KEY = 0x6D61696C737663


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` inside one transaction (transactional DDL where possible),
    serialised across processes on PostgreSQL."""
    if engine.dialect.name != "postgresql":
        # SQLite: the transaction begins IMMEDIATE, which already takes the one write lock.
        await _upgrade(engine, revision, lock=False)
        return
    migrator = create_engine(
        engine.url.render_as_string(hide_password=False),
        Timeouts().for_migrations(),
        poolclass=NullPool,
    )
    try:
        await _upgrade(migrator, revision, lock=True)
    finally:
        await migrator.dispose()


async def _upgrade(engine: AsyncEngine, revision: str, *, lock: bool) -> None:
    def run(connection: Connection) -> None:
        if lock:  # released at COMMIT; the next process then sees the upgraded schema
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        command.upgrade(alembic_config(connection), revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)
