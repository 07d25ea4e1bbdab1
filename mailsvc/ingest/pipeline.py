"""The intake pipeline: parse -> decide -> store, many mails per transaction (group commit).

Every adapter hands a RawMail to ``Pipeline.submit`` and gets an Outcome back only after the
transaction holding that mail has committed. Mails arriving together share one transaction and one
facts lookup, and are written with one statement per table (the fast path). If anything fails
there, the group is redone mail by mail, each in its own SAVEPOINT (the safe path), so one bad
mail never takes the others down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

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
from mailsvc.config import Settings
from mailsvc.crmstore.db import is_retryable
from mailsvc.crmstore.models import QuarantinedMail
from mailsvc.errors import ParseError, StoreUnavailable
from mailsvc.ingest.classify import classify
from mailsvc.ingest.directory import load_batch_facts, load_facts
from mailsvc.ingest.outcome import Outcome
from mailsvc.ingest.parse import dedup_key, parse_mail
from mailsvc.ingest.store import Prepared, find_existing, quarantine, store_email, store_emails
from mailsvc.linking.batch import dependencies, effects, facts_for, may_change, merge_wanted
from mailsvc.linking.decide import Policy, decide, reply_of, wanted
from mailsvc.linking.model import LinkDecision, MailKind, Wanted
from mailsvc.linking.references import IdPatterns
from mailsvc.linking.text import Reply
from mailsvc.mail import RawMail

logger = logging.getLogger(__name__)

PARSE_IN_THREAD_BYTES = 256 * 1024
# The safe path runs again after a deadlock with another process, at most this often in all.
SAFE_PATH_TRIES = 5


def prepare(raw: RawMail, max_bytes: int) -> Prepared:
    """Parse and key one message; what cannot be parsed is prepared for quarantine."""
    if len(raw.data) > max_bytes:
        reason = f"message larger than {max_bytes} bytes"
        return Prepared(raw, dedup_key(None, raw.data), None, reason)
    try:
        parsed = parse_mail(raw.data)
    except ParseError as exc:
        return Prepared(raw, dedup_key(None, raw.data), None, f"unparseable: {exc}")
    except Exception as exc:  # a parser bug must not lose the mail: quarantine it
        logger.exception("parser failed")
        return Prepared(raw, dedup_key(None, raw.data), None, f"parser error: {exc!r}")
    return Prepared(raw, dedup_key(parsed, raw.data), parsed)


def policy_from(settings: Settings) -> Policy:
    return Policy(
        patterns=IdPatterns(settings.opportunity_prefix, settings.ticket_prefix),
        intake_addresses=frozenset(settings.intake_roles),
        internal_domains=frozenset(settings.internal_domains),
    )


@dataclass(slots=True)
class _Pending:
    item: Prepared
    future: asyncio.Future[Outcome]


class Pipeline:
    """Takes mail from every adapter and commits it in groups."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._policy = policy_from(settings)
        # Every intake role's default owner, looked up with each group's facts.
        self._owners = tuple(
            sorted({o for r in ("bcc", "sales", "support") if (o := settings.owner_for(r))})
        )
        self._on_commit = on_commit
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="pipeline-writer")

    async def stop(self) -> None:
        """Finish what is queued, then stop the writer."""
        if self._worker is None:
            return
        await self._queue.join()
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        self._worker = None

    async def submit(self, raw: RawMail) -> Outcome:
        """Process one mail; returns after its transaction committed. Raises StoreUnavailable."""
        item = await self.prepare(raw)
        if self._worker is None:
            return (await self.process([item]))[0]
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(item, future))
        return await future

    async def prepare(self, raw: RawMail) -> Prepared:
        if len(raw.data) > PARSE_IN_THREAD_BYTES:
            return await asyncio.to_thread(self._prepare, raw)
        return self._prepare(raw)

    def _prepare(self, raw: RawMail) -> Prepared:
        """Parse, then do the pure per-mail work too, so the writer only decides and stores."""
        item = prepare(raw, self._settings.max_message_bytes)
        if item.parsed is None:
            return item
        try:
            return replace(
                item,
                kind=classify(item.parsed, raw.envelope, self._settings.max_received_headers),
                want=wanted(item.parsed, self._policy),
                reply=reply_of(item.parsed),
            )
        except Exception:  # the writer tries again and quarantines the mail if it fails there
            logger.exception("preparing %s failed", item.key)
            return item

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            deadline = asyncio.get_running_loop().time() + self._settings.batch_max_wait_ms / 1000
            while len(batch) < self._settings.batch_max_size:
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
        try:
            outcomes = await self.process([p.item for p in batch])
        except Exception as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(
                        exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(str(exc))
                    )
        else:
            for pending, outcome in zip(batch, outcomes, strict=True):
                if not pending.future.done():
                    pending.future.set_result(outcome)
        finally:
            for _ in batch:
                self._queue.task_done()

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
        metrics.record_batch(len(items), time.perf_counter() - started)
        for item, outcome in zip(items, outcomes, strict=True):
            metrics.record_outcome(outcome.kind)
            logger.info(
                "message %s: %s email=%s rule=%s", item.parsed.message_id if item.parsed else
                item.key, outcome.kind, outcome.email_id or outcome.quarantine_id, outcome.rule,
            )
        if self._on_commit is not None:
            self._on_commit()
        return outcomes

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
                    outcomes[n] = await quarantine(session, item, item.problem or "unparseable")
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
            session, merge_wanted(want for _, want, _ in inputs.values()), self._owners
        )
        changed: set[str] = set()
        deferred: list[int] = []
        decided: list[tuple[int, LinkDecision]] = []
        for n in todo:
            item = items[n]
            assert item.parsed is not None
            kind, want, reply = inputs[n]
            envelope = item.raw.envelope
            owner = self._settings.owner_for(envelope.role)
            mine = facts_for(facts, want, owners.get(owner) if owner else None)
            deps = dependencies(want, mine)
            if not changed.isdisjoint(deps):
                deferred.append(n)
                changed |= may_change(item.parsed.message_id, deps, mine)
                continue
            decision = decide(item.parsed, envelope, mine, self._policy, kind, reply)
            changed |= effects(item.parsed.message_id, decision, mine)
            decided.append((n, decision))
        return decided, deferred

    def _inputs(self, item: Prepared) -> tuple[MailKind, Wanted, Reply]:
        mail = item.parsed
        assert mail is not None
        kind = item.kind or classify(mail, item.raw.envelope, self._settings.max_received_headers)
        return kind, item.want or wanted(mail, self._policy), item.reply or reply_of(mail)

    async def _apply_all(self, session: AsyncSession, items: Sequence[Prepared]) -> list[Outcome]:
        """The safe path: each mail in its own SAVEPOINT."""
        known = await find_existing(session, sorted({item.key for item in items}))
        outcomes: list[Outcome] = []
        for item in items:
            if item.key in known:
                outcomes.append(_as_duplicate(known[item.key]))
                continue
            outcome = await self._apply_one(session, item)
            known[item.key] = outcome
            outcomes.append(outcome)
        return outcomes

    async def _apply_one(self, session: AsyncSession, item: Prepared) -> Outcome:
        for attempt in range(2):
            try:
                async with session.begin_nested():
                    return await self._apply(session, item)
            except IntegrityError:
                # Another process stored the same mail (or opened the same lead) meanwhile.
                known = await find_existing(session, [item.key])
                if item.key in known:
                    return _as_duplicate(known[item.key])
                if attempt:
                    raise
            except (SQLAlchemyError, OSError):
                raise
            except Exception as exc:
                logger.exception("processing failed, quarantining %s", item.key)
                async with session.begin_nested():
                    return await quarantine(session, item, f"processing error: {exc!r}")
        raise AssertionError("unreachable")

    async def _apply(self, session: AsyncSession, item: Prepared) -> Outcome:
        if item.parsed is None:
            return await quarantine(session, item, item.problem or "unparseable")
        envelope = item.raw.envelope
        kind, want, reply = self._inputs(item)
        facts = await load_facts(session, want, self._settings.owner_for(envelope.role))
        decision = decide(item.parsed, envelope, facts, self._policy, kind, reply)
        return await store_email(session, item, decision)


def store_unavailable(exc: Exception) -> bool:
    """The database is gone (not a problem of the mails): trying again mail by mail won't help."""
    if isinstance(exc, OSError | OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _as_duplicate(outcome: Outcome) -> Outcome:
    if outcome.kind == "duplicate":
        return outcome
    return Outcome(
        "duplicate",
        email_id=outcome.email_id,
        message_id=outcome.message_id,
        quarantine_id=outcome.quarantine_id,
    )
