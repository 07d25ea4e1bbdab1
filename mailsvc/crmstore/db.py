"""Engine and session factory for SQLite (aiosqlite) and PostgreSQL (asyncpg)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

# Execution option: how a SQLite transaction begins. IMMEDIATE (the default) is right for anything
# that reads and then writes; read-only work passes READ_ONLY to not queue behind writers.
SQLITE_BEGIN = "sqlite_begin"
READ_ONLY: dict[str, Any] = {SQLITE_BEGIN: "DEFERRED"}


def create_engine(database_url: str, **kwargs: Any) -> AsyncEngine:
    """An engine for the URL; SQLite gets WAL, a busy timeout, foreign keys and real SAVEPOINTs."""
    if database_url.startswith("sqlite"):
        engine = create_async_engine(database_url, **kwargs)
        _tune_sqlite(engine)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(database_url, **kwargs)


def _tune_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy, not the driver, open transactions, so SAVEPOINT works (SQLAlchemy docs,
        # "Serializable isolation / Savepoints / Transactional DDL"). IMMEDIATE takes the write lock
        # up front, so a read-then-write transaction never fails on a stale snapshot.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN, "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {mode}")


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def read_session(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session for reading only: on SQLite it does not take the write lock."""
    async with sessions() as session:
        await session.connection(execution_options=READ_ONLY)
        yield session
