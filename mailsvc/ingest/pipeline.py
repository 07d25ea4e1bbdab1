"""The intake pipeline, staged: accept (raw bytes committed), then decide (parse, link, store).

``Pipeline.accept`` commits a mail's raw bytes, envelope and dedup key to the ``intake`` table,
many mails per transaction (group commit), and returns ``accepted`` (or ``duplicate``): that is
what the SMTP 250 waits for. Decide workers (``ingest/decider.py``, in their own processes under
``mailsvc serve``) claim accepted rows in arrival order and run them through ``process``-style
batches: mails deciding together share one transaction and one facts lookup and are written with
one statement per table (the fast path); if anything fails there, the batch is redone mail by
mail, each in its own SAVEPOINT (the safe path), so one bad mail never takes the others down.
``Pipeline.submit`` accepts and then waits for (or, when nothing runs in the background, makes)
the decision, for adapters that report the final outcome (IMAP, ``mailsvc ingest``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

from sqlalchemy import delete
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mailsvc import metrics
from mailsvc.config import IntakeSettings, LinkingSettings, StoreSettings, TrustSettings
from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.db import driver_connection, is_retryable
from mailsvc.crmstore.intake_writer import (
    IntakeUnavailable,
    IntakeWriter,
    PostgresIntake,
    SqliteIntake,
    sqlite_path,
)
from mailsvc.crmstore.models import Email, QuarantinedMail
from mailsvc.errors import StoreUnavailable
from mailsvc.ingest.accept import Accepted, accept_mails, decided_outcomes
from mailsvc.ingest.classify import classify
from mailsvc.ingest.directory import load_batch_facts, load_facts
from mailsvc.ingest.outcome import (
    Outcome,
    ProcessingFailed,
    Unparseable,
)
from mailsvc.ingest.parse import ParseLimits
from mailsvc.ingest.prepare import Prepared, PrepareOptions, prepare_item
from mailsvc.ingest.sanitize import column_lengths
from mailsvc.ingest.store import (
    find_existing,
    quarantine,
    store_email,
    store_emails,
)
from mailsvc.ingest.trust import needs_lookup, trust_policy
from mailsvc.linking.batch import (
    dependencies,
    effects,
    facts_for,
    may_change,
    merge_wanted,
    thread_index,
)
from mailsvc.linking.decide import Policy, decide, reply_of, wanted
from mailsvc.linking.model import LinkDecision, MailKind, Rule, Wanted
from mailsvc.linking.references import IdPatterns
from mailsvc.linking.text import Reply
from mailsvc.mail import RawMail, Role

if TYPE_CHECKING:
    from mailsvc.ingest.decider import Decider

logger = logging.getLogger(__name__)

PARSE_IN_THREAD_BYTES = 256 * 1024
UNPARSEABLE = Unparseable("unparseable")
# The safe path runs again after a deadlock with another process, at most this often in all.
SAFE_PATH_TRIES = 5


def policy_from(linking: LinkingSettings) -> Policy:
    return Policy(
        patterns=IdPatterns(linking.opportunity_prefix, linking.ticket_prefix),
        intake_addresses=frozenset(linking.intake_roles),
        internal_domains=frozenset(linking.internal_domains),
        recipient_delimiter=linking.recipient_delimiter,
        intake_roles=tuple(sorted((a, str(r)) for a, r in linking.intake_roles.items())),
        loop_guard_max=linking.loop_guard_max,
        loop_guard_allow=frozenset(linking.loop_guard_allow),
    )


@dataclass(slots=True)
class _Pending:
    raw: RawMail
    future: asyncio.Future[Accepted]


def intake_writer(sessions: async_sessionmaker[AsyncSession], store: StoreSettings
                  ) -> IntakeWriter:
    """SQLite: a connection and thread of its own; PostgreSQL: connections of the pool."""
    if store.is_sqlite:
        return SqliteIntake(sqlite_path(store.url), store.sqlite_busy_timeout_seconds)
    engine = sessions.kw["bind"]
    return PostgresIntake(partial(driver_connection, engine))


class Pipeline:
    """Accepts mail from every adapter in groups, and decides it (here or in decide workers)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        intake: IntakeSettings,
        linking: LinkingSettings,
        trust: TrustSettings,
        store: StoreSettings,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self.intake = intake
        self.linking = linking
        self.store = store  # read by the decide loop
        self._policy = policy_from(linking)
        self._trust = trust_policy(trust)
        self._limits = ParseLimits(
            trust.mime_max_depth, trust.mime_max_parts, trust.mime_max_attachments,
            trust.mime_max_decoded_bytes,
        )
        self.options = PrepareOptions(
            intake.max_message_bytes, intake.max_received_headers, self._policy,
            self._limits, self._trust, column_lengths(Email.__table__),
        )
        # Every intake role's default owner, looked up with each group's facts.
        self._owners = tuple(
            sorted({o for r in Role if (o := linking.owner_for(r))})
        )
        self._on_commit = on_commit
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._decider: Decider | None = None
        self._decide_task: asyncio.Task[None] | None = None
        self._decide_stop = asyncio.Event()
        # Adapters waiting for a decision: intake id -> (dedup key, futures).
        self._waiters: dict[int, tuple[str, list[asyncio.Future[Outcome]]]] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._writer: IntakeWriter | None = None

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        return self._sessions

    @property
    def writer(self) -> IntakeWriter:
        """What writes accepted mail and reads decisions back (made on first use; ``close``
        releases it)."""
        if self._writer is None:
            self._writer = intake_writer(self._sessions, self.store)
        return self._writer

    async def close(self) -> None:
        """Release the intake writer's connection and thread."""
        if self._writer is not None:
            await self._writer.close()
            self._writer = None

    @property
    def decider(self) -> Decider:
        """The decide loop of this process (made on first use)."""
        if self._decider is None:
            from mailsvc.ingest.decider import Decider

            self._decider = Decider(self, on_decided=self._resolve)
        return self._decider

    async def start(self, *, decide: bool = True) -> None:
        """Start the accept writer and, with ``decide``, a decide loop in this process (else
        decide workers elsewhere do it; ``submit`` then watches the store for the decision)."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="pipeline-writer")
        if decide and self._decide_task is None:
            self._decide_stop.clear()
            self._decide_task = asyncio.create_task(
                self.decider.run(self._decide_stop), name="pipeline-decider"
            )

    async def stop(self) -> None:
        """Finish what is queued for accepting, then stop the writer and the decide loop (after
        its current batch; what is accepted and not decided stays in the intake)."""
        if self._worker is not None:
            await self._queue.join()
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._decide_task is not None:
            self._decide_stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._decide_task
            self._decide_task = None
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    # ------------------------------------------------------------------ accept

    async def accept(self, raw: RawMail) -> Outcome:
        """Commit the raw mail to the intake; ``accepted`` (with its intake id) or ``duplicate``.
        Raises StoreUnavailable (also when the commit takes longer than the accept timeout)."""
        return (await self._accept(raw)).outcome

    async def _accept(self, raw: RawMail) -> Accepted:
        if self._worker is None:
            return (await self.accept_many([raw]))[0]
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(raw, future))
        try:
            return await asyncio.wait_for(
                asyncio.shield(future), self.intake.accept_timeout_seconds
            )
        except TimeoutError:
            # The commit goes on without us: its failure, if it fails, is nobody's to raise.
            future.add_done_callback(_forget_outcome)
            raise StoreUnavailable(
                f"accept not committed within {self.intake.accept_timeout_seconds:g}s"
            ) from None

    async def accept_many(self, raws: Sequence[RawMail]) -> list[Accepted]:
        """Accept mails in one transaction of the caller's (no queue, no group commit)."""
        try:
            return await accept_mails(self.writer, raws)
        except IntakeUnavailable as exc:
            logger.error("accept failed for %d message(s): %s", len(raws), exc)
            raise StoreUnavailable(f"accept failed: {exc}") from exc
        except SQLAlchemyError as exc:  # no pooled connection to lend
            logger.error("accept failed for %d message(s): %s", len(raws), exc)
            raise StoreUnavailable(f"accept failed: {type(exc).__name__}") from exc
        except OSError as exc:
            logger.error("database unreachable: %s", exc)
            raise StoreUnavailable(f"database unreachable: {exc}") from exc

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            deadline = asyncio.get_running_loop().time() + self.intake.batch_max_wait_ms / 1000
            while len(batch) < self.intake.batch_max_size:
                timeout = deadline - asyncio.get_running_loop().time()
                try:
                    batch.append(
                        self._queue.get_nowait() if timeout <= 0 and not self._queue.empty()
                        else await asyncio.wait_for(self._queue.get(), max(timeout, 0))
                    )
                except (TimeoutError, asyncio.QueueEmpty):
                    break
            await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            accepted = await self.accept_many([p.raw for p in batch])
        except Exception as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(
                        exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(str(exc))
                    )
        else:
            metrics.record_accept(len(batch), time.perf_counter() - started)
            ids = [i for a in accepted
                   if (i := a.outcome.intake_id) is not None and a.outcome.kind == "accepted"]
            logger.info("accepted %d mail(s)%s, %d duplicate(s)", len(ids),
                        f" as intake {min(ids)}-{max(ids)}" if ids else "", len(batch) - len(ids))
            if self._decide_task is not None and ids:
                self.decider.wake()
            for pending, result in zip(batch, accepted, strict=True):
                metrics.record_outcome(result.outcome.kind)
                if not pending.future.done():
                    pending.future.set_result(result)
        finally:
            for _ in batch:
                self._queue.task_done()

    # ------------------------------------------------------------------ accept, then decide

    async def submit(self, raw: RawMail) -> Outcome:
        """Accept one mail and return its decided outcome (after the commit that stored it).

        With a decide loop here or decide workers elsewhere (``start``), this waits for the
        decision; otherwise the mail (and any accepted before it) is decided right here.
        Raises StoreUnavailable.
        """
        key, outcome = await self._accept(raw)
        if outcome.kind != "accepted" or outcome.intake_id is None:
            return outcome
        return await self.decided(outcome.intake_id, key)

    async def accept_and_decide(
        self, raws: Sequence[RawMail], decider: Decider | None = None
    ) -> list[Outcome]:
        """Accept the mails in one transaction, then decide them here (with what was accepted
        before them): the staged path for ``mailsvc ingest`` and ``mailsvc import``."""
        return await self.decide_accepted(await self.accept_many(raws), decider)

    async def decide_accepted(
        self, accepted: Sequence[Accepted], decider: Decider | None = None
    ) -> list[Outcome]:
        """The outcomes of mails accepted before: decided here (with what was accepted before
        them) unless another process did; duplicates as they were answered."""
        keys = {
            a.outcome.intake_id: a.key for a in accepted
            if a.outcome.kind == "accepted" and a.outcome.intake_id is not None
        }
        decided = await (decider or self.decider).drain(keys) if keys else {}
        return [
            decided[a.outcome.intake_id]
            if a.outcome.kind == "accepted" and a.outcome.intake_id is not None else a.outcome
            for a in accepted
        ]

    async def decided(self, intake_id: int, key: str) -> Outcome:
        """The outcome of an accepted mail, once decided."""
        if self._worker is None and self._decide_task is None:
            return (await self.decider.drain({intake_id: key}))[intake_id]
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(intake_id, (key, []))[1].append(future)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="pipeline-watch")
        return await future

    def _resolve(self, outcomes: dict[int, Outcome]) -> None:
        for intake_id, outcome in outcomes.items():
            waiting = self._waiters.pop(intake_id, None)
            for future in waiting[1] if waiting else ():
                if not future.done():
                    future.set_result(outcome)

    async def _watch(self) -> None:
        """Resolve waiters whose mail another process decided: its intake row is gone."""
        while self._waiters:
            await asyncio.sleep(self.intake.decide_poll_ms / 1000)
            waiting = {i: key for i, (key, _) in self._waiters.items()}
            try:
                found = await decided_outcomes(self.writer, waiting)
            except IntakeUnavailable as exc:
                logger.warning("watching for decisions failed: %s", exc)
                continue
            self._resolve(found)

    # ------------------------------------------------------------------ decide

    async def prepare(self, raw: RawMail) -> Prepared:
        """Parse and do the pure per-mail work (in a thread for a large mail, or when verifying
        a DKIM signature needs a DNS lookup)."""
        dkim = self._trust.verify_dkim and needs_lookup(raw.data)
        if len(raw.data) > PARSE_IN_THREAD_BYTES or dkim:
            return await asyncio.to_thread(prepare_item, raw, self.options)
        return prepare_item(raw, self.options)

    async def process(
        self, items: Sequence[Prepared], *, release: Sequence[int] = ()
    ) -> list[Outcome]:
        """Store prepared mails in one transaction and return their outcomes after commit.

        ``release`` names quarantine entries that these items replace (a retry): they are removed
        in the same transaction, so a retried mail is either stored or quarantined anew.
        """
        started = time.perf_counter()
        try:
            try:
                outcomes = await self._transaction(items, release, self._apply_batch)
            except Exception as exc:
                if store_unavailable(exc):
                    raise
                # A concurrent writer or one odd mail: redo the group mail by mail, where each
                # mail has its own SAVEPOINT and a failing one is retried or quarantined alone.
                logger.warning("group of %d redone mail by mail: %r", len(items), exc)
                metrics.record_fallback()
                outcomes = await self._safe_path(items, release)
        except SQLAlchemyError as exc:
            logger.error("storage failed for %d message(s): %s", len(items), exc)
            raise StoreUnavailable(f"storage failed: {type(exc).__name__}") from exc
        except OSError as exc:
            logger.error("database unreachable: %s", exc)
            raise StoreUnavailable(f"database unreachable: {exc}") from exc
        self.committed(items, outcomes, time.perf_counter() - started)
        return outcomes

    def committed(
        self, items: Sequence[Prepared], outcomes: Sequence[Outcome], seconds: float,
        waited: Sequence[float] | None = None,
    ) -> None:
        """Count, log and announce (to the relay) decisions that just committed. The log line of
        each mail gives its milliseconds: from acceptance to decision when ``waited`` has them
        (seconds each mail spent accepted), else the batch's own time."""
        metrics.record_batch(len(items), seconds)
        for n, (item, outcome) in enumerate(zip(items, outcomes, strict=True)):
            metrics.record_outcome(outcome.kind, outcome.rule)
            if outcome.rule == Rule.RATE_LIMITED:
                metrics.record_loop_guard_trip()
            elif outcome.kind == "dropped":
                metrics.record_never_log_drop()
            message_id = item.parsed.message_id if item.parsed else item.key
            ms = round(1000 * (waited[n] if waited is not None else seconds))
            logger.info(
                "message %s: %s email=%s rule=%s ms=%d", message_id, outcome.kind,
                outcome.email_id or outcome.quarantine_id, outcome.rule, ms,
                extra={"message_id": message_id, "outcome": outcome.kind,
                       "rule": outcome.rule, "ms": ms},
            )
        if self._on_commit is not None:
            self._on_commit()

    async def _safe_path(
        self, items: Sequence[Prepared], release: Sequence[int]
    ) -> list[Outcome]:
        """The group mail by mail; a deadlock or serialization failure against another process
        (the same mails racing in) runs it again, where the winner's rows make them duplicates."""
        for attempt in range(1, SAFE_PATH_TRIES + 1):
            try:
                return await self._transaction(items, release, self._apply_all)
            except DBAPIError as exc:
                if attempt == SAFE_PATH_TRIES or not is_retryable(exc):
                    raise
                logger.warning("group of %d lost a race (%s), trying again", len(items), exc.orig)
                await asyncio.sleep(random.uniform(0.01, 0.2) * attempt)
        raise AssertionError("unreachable")

    async def _transaction(
        self,
        items: Sequence[Prepared],
        release: Sequence[int],
        apply: Callable[[AsyncSession, Sequence[Prepared]], Awaitable[list[Outcome]]],
    ) -> list[Outcome]:
        async with self._sessions() as session, session.begin():
            if release:
                await session.execute(
                    delete(QuarantinedMail).where(QuarantinedMail.id.in_(release))
                )
            return await apply(session, items)

    async def _apply_batch(
        self, session: AsyncSession, items: Sequence[Prepared]
    ) -> list[Outcome]:
        """The fast path: the whole group without savepoints, decided in rounds on shared facts.

        Anything raising here fails the transaction; ``process`` then redoes the group on the
        safe path (``_apply_all``).
        """
        known = await find_existing(session, sorted({item.key for item in items}))
        outcomes: list[Outcome | None] = [None] * len(items)
        first: dict[str, int] = {}
        todo: list[int] = []
        for n, item in enumerate(items):
            if item.key in known:
                outcomes[n] = _as_duplicate(known[item.key])
            elif item.key not in first:
                first[item.key] = n
                if item.parsed is None:
                    outcomes[n] = await quarantine(session, item, item.problem or UNPARSEABLE)
                else:
                    todo.append(n)
        while todo:
            todo = await self._round(session, items, todo, outcomes)
        done: list[Outcome] = []
        for n, item in enumerate(items):
            outcome = outcomes[n]
            if outcome is None:  # the same mail twice in the group
                outcome = outcomes[first[item.key]]
                assert outcome is not None
                outcome = _as_duplicate(outcome)
            done.append(outcome)
        return done

    async def _round(
        self,
        session: AsyncSession,
        items: Sequence[Prepared],
        todo: list[int],
        outcomes: list[Outcome | None],
    ) -> list[int]:
        """Decide the mails in ``todo`` and store them; the deferred ones are returned."""
        decided, deferred = await self.decide_round(session, items, todo)
        stored = await store_emails(session, [(items[n], d) for n, d in decided])
        for (n, _), outcome in zip(decided, stored, strict=True):
            outcomes[n] = outcome
        return deferred

    async def decide_round(
        self, session: AsyncSession, items: Sequence[Prepared], todo: Sequence[int]
    ) -> tuple[list[tuple[int, LinkDecision]], list[int]]:
        """Decide the parsed mails ``items[n]`` for ``n`` in ``todo``, in order, on one facts load;
        a mail whose facts an earlier mail of the round may change waits for the next round
        (returned second). Writes nothing: the caller applies the decisions."""
        inputs = {n: self._inputs(items[n]) for n in todo}
        facts, owners = await load_batch_facts(
            session, merge_wanted(want for _, want, _ in inputs.values()), self._owners,
            since=self.loop_guard_since(),
        )
        threads = thread_index(facts)
        changed: set[str] = set()
        deferred: list[int] = []
        decided: list[tuple[int, LinkDecision]] = []
        for n in todo:
            item = items[n]
            assert item.parsed is not None
            kind, want, reply = inputs[n]
            envelope = item.raw.envelope
            owner = self.linking.owner_for(envelope.role)
            mine = facts_for(facts, want, owners.get(owner) if owner else None, threads)
            deps = dependencies(want, mine)
            if not changed.isdisjoint(deps):
                deferred.append(n)
                changed |= may_change(item.parsed.message_id, deps, mine)
                continue
            decision = decide(item.parsed, envelope, mine, self._policy, kind, reply,
                              sender_verified=item.sender_verified)
            changed |= effects(item.parsed.message_id, decision, mine, want.senders)
            decided.append((n, decision))
        return decided, deferred

    def loop_guard_since(self) -> datetime:
        """Where the loop guard's window starts: mails stored since then are counted."""
        return utcnow() - timedelta(minutes=self.linking.loop_guard_minutes)

    def _inputs(self, item: Prepared) -> tuple[MailKind, Wanted, Reply]:
        mail = item.parsed
        assert mail is not None
        kind = item.kind or classify(mail, item.raw.envelope, self.intake.max_received_headers)
        want = item.want or wanted(mail, self._policy, item.raw.envelope)
        return kind, want, item.reply or reply_of(mail)

    async def _apply_all(self, session: AsyncSession, items: Sequence[Prepared]) -> list[Outcome]:
        """The safe path: each mail in its own SAVEPOINT; one that fails is quarantined."""
        done = await self.apply_safe(session, items, [True] * len(items))
        return [o if isinstance(o, Outcome) else _unreachable() for o in done]

    async def apply_safe(
        self, session: AsyncSession, items: Sequence[Prepared], last_try: Sequence[bool]
    ) -> list[Outcome | str]:
        """The safe path, mail by mail in SAVEPOINTs. A mail that fails is quarantined with the
        error when ``last_try`` says so, else its error (a str) is returned to retry it later."""
        known = await find_existing(session, sorted({item.key for item in items}))
        outcomes: list[Outcome | str] = []
        for item, last in zip(items, last_try, strict=True):
            if item.key in known:
                outcomes.append(_as_duplicate(known[item.key]))
                continue
            outcome = await self._apply_one(session, item, last)
            if isinstance(outcome, Outcome):
                known[item.key] = outcome
            outcomes.append(outcome)
        return outcomes

    async def _apply_one(self, session: AsyncSession, item: Prepared, last: bool) -> Outcome | str:
        error: Exception | None = None
        for _attempt in range(2):
            try:
                async with session.begin_nested():
                    return await self._apply(session, item)
            except IntegrityError as exc:
                # Another process stored the same mail (or opened the same lead) meanwhile.
                known = await find_existing(session, [item.key])
                if item.key in known:
                    return _as_duplicate(known[item.key])
                error = exc
            except Exception as exc:
                if store_unavailable(exc):
                    raise
                error = exc
                break
        reason = ProcessingFailed.of(repr(error))
        logger.error("processing %s failed%s: %s", item.key,
                     ", quarantining it" if last else ", will retry", reason, exc_info=error)
        if not last:
            return reason
        async with session.begin_nested():
            return await quarantine(session, item, reason)

    async def _apply(self, session: AsyncSession, item: Prepared) -> Outcome:
        if item.parsed is None:
            return await quarantine(session, item, item.problem or UNPARSEABLE)
        envelope = item.raw.envelope
        kind, want, reply = self._inputs(item)
        facts = await load_facts(session, want, self.linking.owner_for(envelope.role),
                                 since=self.loop_guard_since())
        decision = decide(item.parsed, envelope, facts, self._policy, kind, reply,
                          sender_verified=item.sender_verified)
        return await store_email(session, item, decision)


def _forget_outcome(future: asyncio.Future[Accepted]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as never retrieved


def store_unavailable(exc: Exception) -> bool:
    """The database is gone (not a problem of the mails): trying again mail by mail won't help."""
    if isinstance(exc, OSError | OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _unreachable() -> Outcome:
    raise AssertionError("a last try always ends in an outcome")


def _as_duplicate(outcome: Outcome) -> Outcome:
    if outcome.kind == "duplicate":
        return outcome
    return Outcome(
        "duplicate",
        email_id=outcome.email_id,
        message_id=outcome.message_id,
        quarantine_id=outcome.quarantine_id,
    )
