"""Engine and session factory for SQLite (aiosqlite) and PostgreSQL (asyncpg).

Every wait on the database is bounded: a hung, black-holed or half-open database must turn into an
error (SMTP 451, /readyz 503) within seconds, never into a stall. On PostgreSQL that takes
server-side timeouts (statement, lock, idle in transaction; TCP keepalives so the server drops a
dead client and its locks), a client-side timeout per command (the only one that helps when the
server never sees the query), a connect timeout and a pool checkout timeout. A connection whose
command timed out is thrown away, not reused: its protocol state is unknown. A transaction of
ours whose client fell silent mid-request, which no server timeout ends, is ended by whoever waits
on its locks (``end_stalled_transactions``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import aiosqlite
from sqlalchemy import event, make_url, text
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

from mailsvc.crmstore.timeouts import Timeouts, postgres_connect_args

logger = logging.getLogger(__name__)

# Execution option: how a SQLite transaction begins. IMMEDIATE (the default) is right for anything
# that reads and then writes; read-only work passes READ_ONLY to not queue behind writers.
SQLITE_BEGIN = "sqlite_begin"
READ_ONLY: dict[str, Any] = {SQLITE_BEGIN: "DEFERRED"}

# SQLSTATEs after which the same transaction may simply be tried again.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected


def create_engine(
    database_url: str, timeouts: Timeouts | None = None, application_name: str | None = None,
    *, sqlite_in_loop: bool = False, **kwargs: Any,
) -> AsyncEngine:
    """An engine for the URL with every wait bounded by ``timeouts`` (defaults if not given).

    SQLite gets WAL, a busy timeout, foreign keys and real SAVEPOINTs. With ``sqlite_in_loop``
    its statements run in the event loop's thread (``InLoopConnection``): only for a process
    whose loop has nothing else to serve meanwhile.
    """
    timeouts = timeouts or Timeouts()
    if database_url.startswith("sqlite"):
        connect_args = {"factory": RollbackOnClose, **kwargs.pop("connect_args", {})}
        if sqlite_in_loop:
            kwargs["async_creator"] = _in_loop_connector(database_url, connect_args)
        engine = create_async_engine(database_url, connect_args=connect_args, **kwargs)
        _tune_sqlite(engine, timeouts)
        return engine
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 10)
        kwargs.setdefault("pool_pre_ping", True)
        kwargs.setdefault("pool_timeout", timeouts.pool or None)
    connect_args = (postgres_connect_args(timeouts, application_name) if application_name
                    else postgres_connect_args(timeouts))
    connect_args.update(kwargs.pop("connect_args", {}))
    engine = create_async_engine(database_url, connect_args=connect_args, **kwargs)
    _tune_postgres(engine, timeouts)
    return engine


# Our own transactions whose client went silent in the middle of a request: the server waits
# for the rest of the message ("active", ClientRead), where neither statement_timeout nor
# idle_in_transaction_session_timeout applies, and keeps the transaction's locks. TCP keepalive
# ends them only when the path is dead; a proxy or pooler in between keeps it alive for ever.
_STALLED = text(
    """
    SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
      AND usename = current_user AND application_name = current_setting('application_name')
      AND xact_start IS NOT NULL AND state = 'active' AND wait_event = 'ClientRead'
      AND state_change < clock_timestamp() - make_interval(secs => :seconds)
    """
)


async def end_stalled_transactions(session: AsyncSession, seconds: float) -> list[int]:
    """End (``pg_terminate_backend``) this application's transactions whose client has sent
    nothing for ``seconds`` in the middle of a request; their pids. Their locks are released and
    their work rolled back: the client had already given up on them (its command timeout)."""
    rows = await session.execute(_STALLED, {"seconds": seconds})
    ended = [int(pid) for pid, done in rows if done]
    for pid in ended:
        logger.warning("ended stalled database session %d (silent client for over %ss)",
                       pid, seconds)
    return ended


def is_timeout(exc: BaseException) -> bool:
    """A client-side timeout (asyncpg's command or connect timeout) somewhere in the chain."""
    seen: BaseException | None = exc
    for _ in range(10):  # a short chain; never follow a cycle for ever
        if seen is None:
            return False
        if isinstance(seen, TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_retryable(exc: BaseException) -> bool:
    """A deadlock or serialization failure: the transaction lost a race and may run again."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if getattr(seen, "sqlstate", None) in RETRYABLE_SQLSTATES:
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


def _tune_postgres(engine: AsyncEngine, timeouts: Timeouts) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        _keepalive(dbapi_connection, timeouts)

    @event.listens_for(sync_engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        # After a client-side timeout the connection is mid-command (and may sit on a dead TCP
        # path): never hand it out again. Invalidating it closes the socket at once.
        if is_timeout(context.original_exception):
            context.is_disconnect = True


def _keepalive(dbapi_connection: Any, timeouts: Timeouts) -> None:
    """TCP keepalive on the client socket, so a silently dropped connection dies in ~a minute."""
    transport = getattr(getattr(dbapi_connection, "driver_connection", None), "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError, AttributeError):  # options missing on some platforms
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, timeouts.keepalive_idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, timeouts.keepalive_interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, timeouts.keepalive_count)


class RollbackOnClose(sqlite3.Connection):
    """A SQLite connection that ends its transaction before it closes.

    A task cancelled inside a transaction (a stop, a timeout) has its connection closed by the
    pool without the usual rollback. sqlite3's ``close()`` with a statement still unfinished
    only marks the connection for closing once that statement is freed, and until then its
    transaction, and with it the database's one write lock, stays held: every other writer got
    "database is locked". Rolling back first releases the lock at once.
    """

    def close(self) -> None:
        if self.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.rollback()
        super().close()


class InLoopConnection(aiosqlite.Connection):
    """An aiosqlite connection whose statements run in the calling thread, the event loop's.

    aiosqlite hands every call to a thread of the connection's own and waits for the answer:
    two thread wake-ups per statement, 0.2-0.5 ms on a busy machine. A decide worker runs some
    40 statements per transaction while it holds SQLite's one write lock, and its event loop
    serves nobody else (no SMTP clients, no API), so there the statements run in place: the
    lock is held for less time, and accepting, which waits for it, answers sooner. Waiting for
    that lock (at most the busy timeout) then holds the loop too, which such a process can
    afford. (aiosqlite offers no switch for this; ``_execute`` is where every call of a
    connection and of its cursors goes through.)
    """

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


def _in_loop_connector(
    database_url: str, connect_args: dict[str, Any]
) -> Callable[[], Awaitable[aiosqlite.Connection]]:
    """``async_creator`` for SQLAlchemy: an ``InLoopConnection`` opened as the dialect would."""
    dialect = SQLiteDialect_aiosqlite()
    args, params = dialect.create_connect_args(make_url(database_url))
    params = {**params, **connect_args}

    async def connect() -> aiosqlite.Connection:
        connection = InLoopConnection(partial(sqlite3.connect, *args, **params), 64)
        # Its thread only opens and closes the connection; as SQLAlchemy does for aiosqlite's
        # own, it must not keep the process alive (before 0.22 the connection is the thread).
        thread = getattr(connection, "_thread", connection)
        if isinstance(thread, threading.Thread):
            thread.daemon = True
        return await connection

    return connect


def _tune_sqlite(engine: AsyncEngine, timeouts: Timeouts) -> None:
    sync_engine = engine.sync_engine
    busy_ms = round(timeouts.sqlite_busy * 1000)

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
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN, "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {mode}")


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """The driver's own connection (asyncpg's), lent from the engine's pool for work that needs
    no SQLAlchemy (``intake_writer``). After an error it is thrown away, not pooled again."""
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        try:
            yield raw.driver_connection
        except BaseException:
            await connection.invalidate()
            raise


async def refresh_statistics(session: AsyncSession) -> None:
    """SQLite keeps no table statistics unless asked; without them its planner may start a
    lookup from an index that reads most of a large table. ANALYZE on a bounded sample
    (``analysis_limit``) writes them to ``sqlite_stat1``. (PostgreSQL's autovacuum does this.)"""
    await session.execute(text("PRAGMA analysis_limit=1000"))
    await session.execute(text("ANALYZE"))


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def read_session(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session for reading only: on SQLite it does not take the write lock."""
    async with sessions() as session:
        await session.connection(execution_options=READ_ONLY)
        yield session
