"""A task cancelled inside a transaction (a stop, a timeout) leaves the store writable.

On SQLite a cancelled statement's connection is closed by the pool without the usual rollback;
before ``RollbackOnClose`` its transaction, and the database's one write lock, outlived it until
the garbage collector freed the statement, and every other writer got "database is locked".
"""

from __future__ import annotations

import asyncio

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
