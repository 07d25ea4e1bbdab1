"""A task cancelled inside a transaction (a stop, a timeout) leaves the store writable.

On SQLite a cancelled statement's connection is closed by the pool without the usual rollback;
before ``RollbackOnClose`` its transaction, and the database's one write lock, outlived it until
the garbage collector freed the statement, and every other writer got "database is locked".
"""

from __future__ import annotations

import asyncio
import threading

from sqlalchemy import func, select, text

from mailsvc.crmstore.db import create_engine, create_session_factory
from mailsvc.crmstore.models import Account
from mailsvc.crmstore.timeouts import Timeouts

ATTEMPTS = 300


async def test_a_task_cancelled_mid_transaction_leaves_the_store_writable(
    database_url: str,
) -> None:
    # The busy timeout is the bound on waiting for a lock nobody should hold any more.
    engine = create_engine(database_url, Timeouts(sqlite_busy=5.0, lock=5.0))
    sessions = create_session_factory(engine)

    async def write_and_read_forever(name: str) -> None:
        while True:
            async with sessions() as session, session.begin():
                session.add(Account(name=name))
                await session.flush()
                await session.execute(select(Account.id, Account.name).order_by(Account.id))

    try:
        for attempt in range(ATTEMPTS):
            task = asyncio.create_task(write_and_read_forever(f"Cancelled {attempt}"))
            # Cancelled at a different moment each time (0 to 10 ms in), so the cancellation
            # lands on every await of a transaction: the begin, the insert, the select whose
            # rows are not yet fetched, the commit.
            await asyncio.sleep(attempt % 11 / 1000)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            async with sessions() as session, session.begin():
                session.add(Account(name=f"After {attempt}"))
        async with sessions() as session:
            after = await session.scalar(
                select(func.count()).where(Account.name.like("After %")))
            await session.execute(text("SELECT 1"))
        assert after == ATTEMPTS
    finally:
        await engine.dispose()


async def test_an_in_loop_engine_runs_statements_in_the_event_loops_thread(
    sqlite_url: str,
) -> None:
    """A decide worker's engine (``sqlite_in_loop``): no hop to a thread per statement, and the
    same store behind it (writes, savepoints, rollbacks) as through aiosqlite's thread."""
    engine = create_engine(sqlite_url, sqlite_in_loop=True)
    sessions = create_session_factory(engine)
    seen: set[int] = set()

    def where(_: int) -> int:
        seen.add(threading.get_ident())
        return 1

    try:
        async with sessions() as session, session.begin():
            raw = await (await session.connection()).get_raw_connection()
            await raw.driver_connection.create_function("where_am_i", 1, where)
            assert await session.scalar(text("SELECT where_am_i(1)")) == 1
            session.add(Account(name="In the loop"))
            async with session.begin_nested() as nested:
                session.add(Account(name="Rolled back"))
                await session.flush()
                await nested.rollback()
        async with sessions() as session:
            names = set(await session.scalars(
                select(Account.name).where(Account.name.in_(["In the loop", "Rolled back"]))))
        assert seen == {threading.get_ident()}
        assert names == {"In the loop"}
    finally:
        await engine.dispose()
