"""The decide stage: claim accepted mail in arrival order, decide it, store it, delete the claim.

One step claims up to ``MAILSVC_DECIDE_BATCH_SIZE`` intake rows (lowest ids first), parses them
(outside any lock), and then applies them with the pipeline's fast path (one transaction, facts
per round, one statement per table) or, if that fails, its safe path (a SAVEPOINT per mail). The
intake rows of the decided mails are deleted in the same transaction that stores their e-mails or
quarantine entries, so a crash anywhere leaves each mail either undecided (still in the intake,
decided after restart) or decided once.

Order: applying is serialised and goes by id. On PostgreSQL, workers claim with
``FOR UPDATE SKIP LOCKED`` and parse in parallel; to apply, a worker takes a transaction-level
advisory lock, claims the unlocked lower-id rows it lacks, and applies only the prefix of its
batch below the lowest row another worker still holds (the rest is released at commit and claimed
again). So every applied batch is exactly the set of pending mails up to its highest id, applied
after everything below it: the decisions come out as they would one by one in arrival order.
On SQLite the intake is a file of its own (``crmstore/intake_writer.py``), so accepting never
waits for a step's transaction: the store's write lock (``BEGIN IMMEDIATE``) serialises applying;
under it the rows below the batch's highest id that it lacks are added, and rows whose mails
another step stored already are left out. The decided rows are deleted from the intake file
after the commit; a crash in between leaves rows whose keys are stored, forgotten by the next
step.

A mail whose decision fails is left in the intake with ``attempts`` counted and ``last_error``;
its next try quarantines it once ``MAILSVC_DECIDE_MAX_ATTEMPTS`` is reached. The other mails of
its batch commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc import metrics
from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.db import end_stalled_transactions, refresh_statistics
from mailsvc.crmstore.intake_writer import (
    IntakeRecord,
    IntakeUnavailable,
    IntakeWriter,
    SqliteIntake,
    decide_lock,
    sqlite_path,
)
from mailsvc.crmstore.models import IntakeMail
from mailsvc.errors import StoreUnavailable
from mailsvc.ingest import prepare
from mailsvc.ingest.accept import AcceptedRow, decided_outcomes, raw_of
from mailsvc.ingest.outcome import Outcome, ProcessingFailed, QuarantineReason
from mailsvc.ingest.pipeline import store_unavailable
from mailsvc.ingest.prepare import Prepared, parser_crashed, prepare_items
from mailsvc.ingest.store import find_existing, quarantine
from mailsvc.mail import RawMail

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.context import BaseContext

    from mailsvc.ingest.pipeline import Pipeline

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# pg_advisory_xact_lock key of the apply step ("mailsvc" in ASCII, as a bigint).
APPLY_LOCK = 0x6D61696C737663
# Fewer mails than this are parsed here: handing them to the parsing processes costs more.
POOL_MIN_MAILS = 16
# SQLite: planner statistics are refreshed when a decide loop starts and then every six hours.
STATISTICS_EVERY = 6 * 3600.0
# After a whole step failed, claim one mail at a time until past the failed batch.
_SOLO = 1


@dataclass(frozen=True, slots=True)
class Claimed:
    """An intake row, parsed, with the failed decisions it has had so far."""

    intake_id: int
    item: Prepared
    attempts: int
    accepted_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Backlog:
    """Accepted mail not decided yet."""

    count: int
    oldest: datetime | None

    def age_seconds(self, now: datetime | None = None) -> float:
        if self.oldest is None:
            return 0.0
        return max(0.0, ((now or utcnow()) - self.oldest).total_seconds())

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "oldest_age_seconds": round(self.age_seconds(), 3)}


async def backlog(writer: IntakeWriter) -> Backlog:
    """Accepted mail not decided yet, as the intake has it."""
    count, oldest = await writer.backlog()
    return Backlog(count, oldest)


@contextmanager
def parse_pool(jobs: int) -> Iterator[ParsePool | None]:
    """Processes that parse for a decide loop (None for ``jobs`` 1: parse in this process).
    Not forked from this process, which runs an event loop and database connections: forked
    from a fork server, a fresh process that has imported the parsing code once for all."""
    if jobs <= 1:
        yield None
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(prepare.PRELOAD)
    pool = ParsePool(jobs, context)
    try:
        yield pool
    finally:
        pool.shutdown()


class ParsePool:
    """The parsing processes of a decide loop. A set of them that lost one (killed, out of
    memory, or ended by a mail that crashes the parser) is broken for good
    (``BrokenProcessPool``); ``renew`` puts a new set in its place."""

    def __init__(self, jobs: int, context: BaseContext) -> None:
        self._jobs = jobs
        self._context = context
        self._processes = _Processes(jobs, context)
        self.submitted = 0  # pieces of work handed to parsing processes so far

    @property
    def jobs(self) -> int:
        return self._jobs

    def ready(self) -> bool:
        """Whether every process of the current set is up."""
        return self._processes.ready()

    def submit(self, work: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """``work(*args)`` in a parsing process; raises ``BrokenProcessPool`` if the set is
        broken already."""
        future = asyncio.get_running_loop().run_in_executor(self._processes, work, *args)
        self.submitted += 1
        return future

    def pids(self) -> set[int]:
        """The process ids of the current set (those started so far)."""
        return set(self._processes.pids())

    def renew(self) -> None:
        """A new set of processes in place of the current, broken one."""
        broken, self._processes = self._processes, _Processes(self._jobs, self._context)
        broken.shutdown(wait=False, cancel_futures=True)
        metrics.record_parsers_lost()

    def shutdown(self) -> None:
        self._processes.shutdown(wait=True, cancel_futures=True)


class _Processes(ProcessPoolExecutor):
    """A set of parsing processes started at once, in a thread of its own: the fork server it
    is forked from imports the parsing code first (half a second and more while the machine is
    busy), which the deciding process need not wait for. Until every process is up (``ready``)
    the decider parses in its own process."""

    def __init__(self, jobs: int, context: BaseContext) -> None:
        super().__init__(jobs, mp_context=context, initializer=prepare.end_with,
                         initargs=(os.getpid(),))
        self._jobs = jobs
        self._up = threading.Event()  # set once starting is over, whether it worked or not
        self._ok = False
        threading.Thread(target=self._start, name="parse-pool-start", daemon=True).start()

    def _start(self) -> None:
        try:
            concurrent.futures.wait([self.submit(prepare.ready) for _ in range(self._jobs)])
            self._ok = True
        except Exception as exc:  # shut down before it was up, or no process could start
            logger.debug("parsing processes not started: %r", exc)
        finally:
            self._up.set()

    def ready(self) -> bool:
        return self._ok

    def pids(self) -> list[int]:
        return list(self._processes or {})  # ProcessPoolExecutor's own: pid -> process

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._up.wait()  # a pool shut down while its processes start may hang
        super().shutdown(wait, cancel_futures=cancel_futures)


class Decider:
    """Claims accepted mail and decides it; one per decide worker (or in-process)."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        on_decided: Callable[[dict[int, Outcome]], None] | None = None,
        parse_pool: ParsePool | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._sessions = pipeline.sessions
        intake, store = pipeline.intake, pipeline.store
        self._batch = intake.decide_batch_size
        self._poll = intake.decide_poll_ms / 1000
        self._max_attempts = intake.decide_max_attempts
        self._stalled_after = store.idle_in_transaction_timeout_seconds
        self._held: tuple[int, float] | None = None  # (lowest row another holds, seen since)
        self._postgres = not store.is_sqlite
        self._on_decided = on_decided
        self._pool = parse_pool
        self._jobs = parse_pool.jobs if parse_pool is not None else 1
        self._cache: dict[int, Claimed] = {}  # parsed rows a step claimed and did not apply
        # SQLite with a parse pool: the next rows, parsed in the pool while this step applies.
        self._ahead: asyncio.Task[dict[int, Claimed]] | None = None
        self._solo_until = 0  # after a failed step: one mail at a time up to this id
        self._current: list[int] = []  # intake ids the running step holds
        self._wake = asyncio.Event()  # set when this process accepted mail: no need to poll
        self.decided = 0

    # ---------------------------------------------------------------- loops

    def wake(self) -> None:
        """Mail was accepted in this process: look at once instead of at the next poll."""
        self._wake.set()

    async def _idle(self, stop: asyncio.Event, seconds: float) -> None:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        self._wake.clear()

    async def run(self, stop: asyncio.Event) -> None:
        """Decide until ``stop`` is set (the current step finishes first). On SQLite the decide
        lock is held meanwhile: `mailsvc ingest` then leaves deciding to this loop."""
        store = self._pipeline.store
        # Before the lock: a worker that holds it is ready, and takes a write lock only to
        # decide (`mailsvc ingest` counts on accepting beside it).
        await self.refresh_statistics()
        if store.is_sqlite:
            try:
                await self._intake.open()
            except IntakeUnavailable as exc:  # the steps try again, with backoff
                logger.error("the intake cannot be opened: %s", exc)
        with decide_lock(sqlite_path(store.url) if store.is_sqlite else None):
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        backoff = self._poll
        statistics_due = time.monotonic() + STATISTICS_EVERY  # SQLite: again every so often
        while not stop.is_set():
            if time.monotonic() >= statistics_due:
                await self.refresh_statistics()
                statistics_due = time.monotonic() + STATISTICS_EVERY
            try:
                done = await self.step()
            except Exception as exc:
                if not isinstance(exc, StoreUnavailable | SQLAlchemyError | OSError):
                    logger.exception("decide step failed")
                else:
                    logger.error("decide step failed: %r", exc)
                backoff = min(max(backoff * 2, 0.1), 5.0)
                await _sleep_or_stop(stop, backoff)
                continue
            backoff = self._poll
            if not done:
                await self._idle(stop, self._poll)

    async def refresh_statistics(self) -> None:
        """SQLite's planner statistics, so lookups stay index lookups as the store grows (on
        PostgreSQL autovacuum keeps them)."""
        if not self._pipeline.store.is_sqlite:
            return
        started = time.perf_counter()
        try:
            async with self._sessions() as session, session.begin():
                await refresh_statistics(session)
        except SQLAlchemyError as exc:
            logger.warning("refreshing SQLite's statistics failed: %r", exc)
            return
        logger.info("SQLite statistics refreshed in %.0f ms",
                    1000 * (time.perf_counter() - started))

    async def drain(self, keys: Mapping[int, str]) -> dict[int, Outcome]:
        """Decide until the given intake rows are decided (by this process or another); their
        outcomes. Mail accepted before them is decided first, as the order demands."""
        pending = dict(keys)
        results: dict[int, Outcome] = {}
        failures = 0
        while pending:
            try:
                done = await self.step()
            except StoreUnavailable:
                raise
            except Exception:
                failures += 1  # counted on the mails; they are quarantined when out of tries
                if failures > 3 * self._max_attempts:
                    raise
                continue
            for intake_id in list(pending):
                if intake_id in done:
                    results[intake_id] = done[intake_id]
                    del pending[intake_id]
            if pending and not done:  # decided by another process?
                elsewhere = await decided_outcomes(self._pipeline.writer, pending)
                results.update(elsewhere)
                for intake_id in elsewhere:
                    del pending[intake_id]
                if pending:
                    await asyncio.sleep(self._poll)
        return results

    # ---------------------------------------------------------------- one step

    async def step(self) -> dict[int, Outcome]:
        """Claim, decide and commit one batch; the outcomes by intake id ({} when idle)."""
        self._current = []
        try:
            outcomes = await (self._step_postgres() if self._postgres else self._step_sqlite())
        except StoreUnavailable:
            raise
        except Exception as exc:
            if store_unavailable(exc) or isinstance(exc, IntakeUnavailable):
                raise StoreUnavailable(f"decide failed: {type(exc).__name__}") from exc
            await self._step_failed(exc)
            raise
        if outcomes:
            self.decided += len(outcomes)
            if self._on_decided is not None:
                self._on_decided(outcomes)
        return outcomes

    def _limit(self) -> int:
        return _SOLO if self._solo_until else self._batch

    async def _step_sqlite(self) -> dict[int, Outcome]:
        ahead = await self._take_ahead()
        heads = await self._intake.pending_ids(self._limit())
        if not heads:
            return {}
        # Rows parsed ahead are not read again, only their ids and attempts (which a failed step
        # may have counted up since).
        claimed = {i: Claimed(i, ahead[i].item, attempts, ahead[i].accepted_at)
                   for i, attempts in heads if i in ahead}
        self._current.extend(claimed)
        rest = [i for i, _ in heads if i not in ahead]
        if rest:
            claimed.update(await self._parse(await self._intake.records(rest)))
        if not claimed:  # decided by another process meanwhile
            return {}
        await self._parse_ahead(max(claimed))
        return await self._apply_claimed(claimed)

    @property
    def _intake(self) -> SqliteIntake:
        writer = self._pipeline.writer
        assert isinstance(writer, SqliteIntake)
        return writer

    async def _apply_claimed(self, claimed: dict[int, Claimed]) -> dict[int, Outcome]:
        """Apply the claimed rows (and any row below them not claimed yet) in one transaction,
        in arrival order; then delete them from the intake file."""
        started = time.perf_counter()
        intake = self._intake
        async with self._sessions() as session, session.begin():  # BEGIN IMMEDIATE
            top = max(claimed)
            present = await intake.present(top)
            batch = {i: c for i, c in claimed.items() if i in present}  # others decided them
            missing = [i for i in present if i not in claimed]
            if missing:  # accepted below our batch and not in it: decide them first, here
                batch.update(await self._parse(await intake.records(missing)))
            # Stored by a step that has not deleted them from the intake yet (or crashed first).
            stored = await find_existing(session, sorted({c.item.key for c in batch.values()}))
            done = [i for i, c in batch.items() if c.item.key in stored]
            for intake_id in done:
                del batch[intake_id]
            outcomes, errors = await self._apply(session, [batch[i] for i in sorted(batch)])
        self._done(batch, outcomes, started)
        try:
            await intake.forget([*outcomes, *done])
            await intake.failed(errors)
        except IntakeUnavailable as exc:  # they are decided again: found stored, forgotten
            logger.warning("decided intake rows not deleted yet: %s", exc)
        return outcomes

    async def _step_postgres(self) -> dict[int, Outcome]:
        """Claim, parse, then apply under the apply lock in arrival order (module docstring)."""
        async with self._sessions() as session, session.begin():
            rows = list(await session.scalars(
                select(IntakeMail).order_by(IntakeMail.id).limit(self._limit())
                .with_for_update(skip_locked=True)
            ))
            if not rows:
                self._cache.clear()
                return {}
            claimed = await self._parse(rows)
            await _apply_lock(session, self._stalled_after)
            started = time.perf_counter()
            top = max(claimed)
            lower = list(await session.scalars(
                select(IntakeMail).where(IntakeMail.id < top, IntakeMail.id.not_in(list(claimed)))
                .order_by(IntakeMail.id).with_for_update(skip_locked=True)
            ))
            claimed.update(await self._parse(lower))
            blocked = await session.scalar(
                select(func.min(IntakeMail.id))
                .where(IntakeMail.id < top, IntakeMail.id.not_in(list(claimed)))
            )
            batch = [claimed[i] for i in sorted(claimed) if blocked is None or i < blocked]
            await self._watch_held(session, blocked)
            # Rows above a mail another worker holds wait for it: released at commit.
            self._cache = {i: c for i, c in claimed.items() if blocked is not None and i >= blocked}
            if not batch:
                return {}
            outcomes, errors = await self._apply(session, batch)
            await _settle_rows(session, outcomes, errors)
        self._done({c.intake_id: c for c in batch}, outcomes, started)
        return outcomes

    async def _watch_held(self, session: AsyncSession, blocked: int | None) -> None:
        """A row another transaction has held for longer than ``stalled_after``: end that
        transaction if its client fell silent (it would hold the row, and the order, for ever)."""
        now = time.monotonic()
        if blocked is None or self._held is None or self._held[0] != blocked:
            self._held = None if blocked is None else (blocked, now)
        elif self._stalled_after and now - self._held[1] >= self._stalled_after:
            await end_stalled_transactions(session, self._stalled_after)
            self._held = (blocked, now)

    async def _parse(self, rows: Sequence[AcceptedRow]) -> dict[int, Claimed]:
        started = time.perf_counter()
        claimed = await self._parse_rows(rows)
        metrics.record_decide(time.perf_counter() - started)
        return claimed

    async def _parse_rows(self, rows: Sequence[AcceptedRow]) -> dict[int, Claimed]:
        claimed: dict[int, Claimed] = {}
        todo: list[AcceptedRow] = []
        self._current.extend(row.id for row in rows)
        for row in rows:
            cached = self._cache.get(row.id)
            if cached is not None:
                claimed[row.id] = Claimed(row.id, cached.item, row.attempts, row.accepted_at)
            else:
                todo.append(row)
        items: list[Prepared] = []
        pool = self._pool
        for row in todo:  # here, until the parsing processes are up (if there are any)
            if pool is not None and pool.ready() and len(todo) - len(items) >= POOL_MIN_MAILS:
                items += await self._parse_in_pool([raw_of(row) for row in todo[len(items):]])
                break
            items.append(await self._pipeline.prepare(raw_of(row)))
        for row, item in zip(todo, items, strict=True):
            claimed[row.id] = Claimed(row.id, item, row.attempts, row.accepted_at)
        return claimed

    async def _parse_ahead(self, top: int) -> None:
        """With a parse pool on SQLite: read the rows after ``top`` and hand them to the pool,
        which parses them while this step applies (parsing is pure: what it gives does not
        depend on the store). They are handed over before the step goes on: its statements may
        run in the event loop's own thread and hold it until it commits. The next step takes
        what is still pending; the rest is parsed again."""
        if self._postgres or self._ahead is not None or not (self._pool and self._pool.ready()):
            return
        try:
            rows = await self._intake.pending(top, self._batch)
        except IntakeUnavailable as exc:  # met again, in the step that reads these rows
            logger.debug("reading ahead failed: %r", exc)
            return
        if len(rows) < POOL_MIN_MAILS:
            return
        parsing = self._submit([raw_of(row) for row in rows])
        self._ahead = asyncio.ensure_future(self._parsed_ahead(rows, parsing))

    @staticmethod
    async def _parsed_ahead(rows: Sequence[IntakeRecord],
                            parsing: list[asyncio.Future[list[Prepared]]]) -> dict[int, Claimed]:
        items = [item for chunk in await asyncio.gather(*parsing) for item in chunk]
        return {row.id: Claimed(row.id, item, row.attempts, row.accepted_at)
                for row, item in zip(rows, items, strict=True)}

    async def _take_ahead(self) -> dict[int, Claimed]:
        """What the last step parsed ahead ({} when nothing, or when that failed)."""
        task, self._ahead = self._ahead, None
        if task is None:
            return {}
        try:
            return await task
        except Exception as exc:  # a parse or read error here is met again, in its own step
            logger.debug("parsing ahead failed: %r", exc)
            return {}

    async def _parse_in_pool(self, raws: Sequence[RawMail]) -> list[Prepared]:
        try:
            chunks = await asyncio.gather(*self._submit(raws))
        except BrokenProcessPool:
            return await self._parse_one_by_one(raws)
        return [item for chunk in chunks for item in chunk]

    def _submit(self, raws: Sequence[RawMail]) -> list[asyncio.Future[list[Prepared]]]:
        """The mails handed to the parsing processes now, one chunk per process (to a new set
        of processes if the current one is broken already)."""
        pool = self._pool
        assert pool is not None
        options = self._pipeline.options
        size = -(-len(raws) // self._jobs)
        chunks = [raws[i:i + size] for i in range(0, len(raws), size)]
        submitted: list[asyncio.Future[list[Prepared]]] = []
        try:
            for chunk in chunks:
                submitted.append(pool.submit(prepare_items, chunk, options))
        except BrokenProcessPool:  # a process died since the last parse: not these mails
            for future in submitted:
                future.cancel()
            logger.error("a parsing process ended; starting new ones")
            pool.renew()
            submitted = [pool.submit(prepare_items, chunk, options) for chunk in chunks]
        return submitted

    async def _parse_one_by_one(self, raws: Sequence[RawMail]) -> list[Prepared]:
        """A parsing process died while it parsed these mails: new processes parse them one at
        a time, so a mail that ends its process again is the one that does it. That mail is
        prepared for quarantine; the others are parsed as usual."""
        pool = self._pool
        assert pool is not None
        logger.error("a parsing process ended while it parsed %d mail(s); parsing them again "
                     "one at a time in new processes", len(raws))
        pool.renew()
        items: list[Prepared] = []
        for raw in raws:
            try:
                items += await pool.submit(prepare_items, [raw], self._pipeline.options)
            except BrokenProcessPool:
                item = parser_crashed(raw)
                logger.error("the parsing process ended while it parsed mail %s: quarantined",
                             item.key)
                items.append(item)
                pool.renew()
        return items

    async def close(self) -> None:
        """Drop a parse-ahead still running (its rows stay in the intake)."""
        task, self._ahead = self._ahead, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _apply(
        self, session: AsyncSession, batch: Sequence[Claimed]
    ) -> tuple[dict[int, Outcome], dict[int, str]]:
        """Decide and store the batch in the caller's transaction: the outcomes by intake id,
        and the errors of mails whose decision failed (to be tried again)."""
        items = [c.item for c in batch]
        pipeline = self._pipeline
        results: list[Outcome | str]
        try:
            async with session.begin_nested():
                results = list(await pipeline._apply_batch(session, items))
        except Exception as exc:
            if store_unavailable(exc):
                raise
            logger.warning("batch of %d redone mail by mail: %r", len(items), exc)
            metrics.record_fallback()
            last = [c.attempts + 1 >= self._max_attempts for c in batch]
            results = await pipeline.apply_safe(session, items, last)
        outcomes: dict[int, Outcome] = {}
        errors: dict[int, str] = {}
        for claimed, result in zip(batch, results, strict=True):
            if isinstance(result, Outcome):
                outcomes[claimed.intake_id] = result
            else:
                errors[claimed.intake_id] = result[:4000]
        return outcomes, errors

    def _done(
        self, claimed: Mapping[int, Claimed], outcomes: Mapping[int, Outcome], started: float
    ) -> None:
        ids = [i for i in sorted(claimed) if i in outcomes]
        if ids:
            now = utcnow()
            self._pipeline.committed(
                [claimed[i].item for i in ids], [outcomes[i] for i in ids],
                time.perf_counter() - started,
                [_seconds_between(claimed[i].accepted_at, now) for i in ids],
            )
        if self._solo_until and ids and max(ids) >= self._solo_until:
            self._solo_until = 0

    async def _step_failed(self, exc: Exception) -> None:
        """A whole step failed (not the database being away): count a failed attempt on the
        mails it held, quarantine one that is out of attempts (when it was tried alone), and go
        on one mail at a time until past them, so the others are not held up."""
        logger.error("decide step of %d mail(s) failed: %r", len(self._current), exc,
                     exc_info=exc)
        ids, self._current = sorted(self._current), []
        self._cache.clear()
        if not ids:
            return
        reason = f"processing error: {exc!r}"[:4000]
        alone = len(ids) == 1
        self._solo_until = max(ids)
        if not self._postgres:
            await self._step_failed_sqlite(ids, reason, alone)
            return
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(IntakeMail).where(IntakeMail.id.in_(ids))
                .values(attempts=IntakeMail.attempts + 1, last_error=reason)
            )
        if not alone:
            return
        async with self._sessions() as session, session.begin():
            row = await session.get(IntakeMail, ids[0])
            if row is None or row.attempts < self._max_attempts:
                return
            await self._quarantine(session, raw_of(row), reason)
            await session.delete(row)
            logger.error("intake %d quarantined after %d failed decisions", row.id, row.attempts)

    async def _step_failed_sqlite(self, ids: list[int], reason: str, alone: bool) -> None:
        intake = self._intake
        await intake.failed(dict.fromkeys(ids, reason))
        if not alone:
            return
        rows = await intake.records(ids)
        if not rows or rows[0].attempts < self._max_attempts:
            return
        row = rows[0]
        async with self._sessions() as session, session.begin():
            await self._quarantine(session, raw_of(row), reason)
        await intake.forget([row.id])
        logger.error("intake %d quarantined after %d failed decisions", row.id, row.attempts)

    async def _quarantine(self, session: AsyncSession, raw: RawMail, reason: str) -> None:
        item = await self._pipeline.prepare(raw)
        typed = reason if isinstance(reason, QuarantineReason) else ProcessingFailed.of(reason)
        await quarantine(session, item, typed)


async def _settle_rows(
    session: AsyncSession, outcomes: Mapping[int, Outcome], errors: Mapping[int, str]
) -> None:
    """PostgreSQL: in the transaction that stores the decisions, delete the decided intake rows
    and count a failure on the others."""
    for intake_id, error in errors.items():
        await session.execute(
            update(IntakeMail).where(IntakeMail.id == intake_id)
            .values(attempts=IntakeMail.attempts + 1, last_error=error)
        )
    if outcomes:
        await session.execute(delete(IntakeMail).where(IntakeMail.id.in_(list(outcomes))))


def _seconds_between(accepted_at: datetime | None, now: datetime) -> float:
    """Seconds from acceptance to ``now`` (0 when unknown)."""
    return 0.0 if accepted_at is None else max(0.0, (now - accepted_at).total_seconds())


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _apply_lock(session: AsyncSession, stalled_after: float) -> None:
    """Take the apply lock for this transaction. Tried without blocking and again after a short
    pause: another worker may hold it for a while under load, and a blocking wait would run into
    the connection's lock and statement timeouts, which are meant for hung databases, not for a
    queue of our own. A holder whose client fell silent is ended after ``stalled_after`` seconds
    (0: never)."""
    pause = 0.005
    swept = time.monotonic()
    while not await session.scalar(select(func.pg_try_advisory_xact_lock(APPLY_LOCK))):
        if stalled_after and time.monotonic() - swept >= stalled_after:
            await end_stalled_transactions(session, stalled_after)
            swept = time.monotonic()
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.1)
