"""Accepted mail written to the ``intake`` table with the database driver itself.

Accepting is the hot path of the SMTP intake, and all that `mailsvc ingest` does when a decide
worker is running: per group of mails, look up which dedup keys are known (accepted, stored or
quarantined) and insert the others. Through SQLAlchemy's async layer that costs a dozen driver
round trips (on SQLite each one a hop to aiosqlite's thread) and statement compilation per group;
here it is two statements in one transaction, on SQLite in one hop to the writer's own thread.
Nothing here imports SQLAlchemy, so a piped mail is accepted by a process that loads neither the
ORM nor the mail parser. The tables and columns are the models' (``IntakeMail``, ``Email``,
``QuarantinedMail``); the tests accept through here and read the stores back through the
models, the intake through here (``pending``, ``backlog``: on SQLite it is not the ORM's table).

On SQLite the intake is a database file of its own beside the store (``intake_path``): a file
has one write lock, and accepting must never wait for a decide step that holds the store's for
its whole batch. Accepting takes the intake file's lock and reads the store (WAL readers wait for
no one); the decide step reads the intake, commits its decisions to the store and then deletes
the decided rows here (``forget``). A crash between the two leaves rows whose mails are stored:
the next step finds their keys stored and forgets them, so each mail still has one effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

_T = TypeVar("_T")
_V = TypeVar("_V")
Where = Literal["intake", "email", "quarantine"]
# The application name decide worker processes connect to PostgreSQL with: while one is connected,
# `mailsvc ingest` only accepts and lets it decide.
DECIDE_APPLICATION = "mailsvc-decide"
_REVISION = "SELECT version_num FROM alembic_version"
_DECIDERS = ("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
             "AND application_name = $1)")
_TABLES: tuple[tuple[Where, str], ...] = (
    ("intake", "intake"), ("email", "emails"), ("quarantine", "quarantine"),
)
_COLUMNS = ("dedup_key", "raw", "mail_from", "rcpt_tos", "role", "source", "envelope_extra",
            "accepted_at", "attempts")


class IntakeUnavailable(Exception):
    """The database did not take the group (unreachable, locked beyond the busy timeout, ...)."""


@dataclass(frozen=True, slots=True)
class IntakeRow:
    """One accepted mail as the ``intake`` table keeps it (values already cleaned)."""

    dedup_key: str
    raw: bytes
    mail_from: str | None
    rcpt_tos: list[str]
    role: str
    source: str
    envelope_extra: dict[str, Any]
    accepted_at: datetime


@dataclass(frozen=True, slots=True)
class IntakeRecord(IntakeRow):
    """One row of the intake as read back: an accepted mail waiting for its decision, with its
    id and the failed decisions it has had."""

    id: int
    attempts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Written:
    """What became of one row: ``new`` (inserted now, ``where`` is intake) or a duplicate of a
    mail already in ``where`` (None: accepted meanwhile by another process, id unknown)."""

    new: bool
    where: Where | None
    id: int | None


@dataclass(frozen=True, slots=True)
class Decision:
    """A decided mail as the store keeps it: an e-mail (with its first link of each kind, in
    link order) or a quarantine entry."""

    outcome: str
    email_id: int | None = None
    message_id: str | None = None
    rule: str | None = None
    notes: tuple[str, ...] = ()
    automatic: bool = False
    links: dict[str, int] | None = None
    quarantine_id: int | None = None
    reason: str | None = None


def _decisions(emails: Sequence[Sequence[Any]], links: Sequence[Sequence[Any]],
               quarantined: Sequence[Sequence[Any]]) -> dict[str, Decision]:
    """Decisions by dedup key from the rows of ``_DECIDED_SQL``' three queries."""
    by_email: dict[int, dict[str, int]] = {}
    for email_id, target, target_id in links:
        by_email.setdefault(email_id, {}).setdefault(str(target), target_id)
    found = {
        key: Decision(str(outcome), email_id=email_id, message_id=message_id, rule=rule,
                      notes=tuple(_json(notes) or ()), automatic=bool(automatic),
                      links=by_email.get(email_id, {}))
        for email_id, key, message_id, outcome, rule, notes, automatic in emails
    }
    for key, quarantine_id, reason in quarantined:
        found.setdefault(key, Decision("quarantined", quarantine_id=quarantine_id,
                                       reason=str(reason)))
    return found


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


_EMAILS = ("SELECT id, dedup_key, message_id, outcome, rule, notes, automatic FROM emails "
           "WHERE dedup_key IN ({keys})")
_LINKS = ("SELECT email_id, target_type, target_id FROM email_links WHERE email_id IN "
          "(SELECT id FROM emails WHERE dedup_key IN ({keys})) ORDER BY id")
_QUARANTINED = "SELECT dedup_key, id, reason FROM quarantine WHERE dedup_key IN ({keys})"


def settle(rows: Sequence[IntakeRow], known: dict[str, tuple[Where, int]],
           inserted: dict[str, int]) -> list[Written]:
    """Each row's result, in order: known before, inserted now, or a repeat of either."""
    results: list[Written] = []
    seen: set[str] = set()
    for row in rows:
        key = row.dedup_key
        if key in known:
            where, row_id = known[key]
            results.append(Written(False, where, row_id))
        elif key in inserted and key not in seen:
            results.append(Written(True, "intake", inserted[key]))
        else:  # earlier in this group, or accepted meanwhile by another process
            results.append(Written(False, "intake" if key in inserted else None,
                                   inserted.get(key)))
        seen.add(key)
    return results


def _fresh(rows: Sequence[IntakeRow], known: dict[str, tuple[Where, int]]) -> list[IntakeRow]:
    """The rows to insert: unknown keys, each once."""
    chosen: dict[str, IntakeRow] = {}
    for row in rows:
        if row.dedup_key not in known:
            chosen.setdefault(row.dedup_key, row)
    return list(chosen.values())


# ---------------------------------------------------------------- SQLite

# The intake file's one table: the columns of ``IntakeMail`` (tests/integration/test_intake_writer
# compares them), in a file of its own.
INTAKE_DDL = (
    "CREATE TABLE IF NOT EXISTS intake ("
    "id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, "
    "dedup_key VARCHAR(1000) NOT NULL UNIQUE, "
    "raw BLOB NOT NULL, "
    "mail_from TEXT, "
    "rcpt_tos JSON NOT NULL, "
    "role VARCHAR(16) NOT NULL, "
    "source VARCHAR(16) NOT NULL, "
    "envelope_extra JSON NOT NULL, "
    "accepted_at DATETIME NOT NULL, "
    "attempts INTEGER NOT NULL, "
    "last_error TEXT)"
)
_RECORD_COLUMNS = ("id", "dedup_key", "raw", "mail_from", "rcpt_tos", "role", "source",
                   "envelope_extra", "accepted_at", "attempts", "last_error")
_RECORD = f"SELECT {', '.join(_RECORD_COLUMNS)} FROM intake"
# Rows moved per statement from the store's own ``intake`` table (kept there by earlier versions).
_MOVE_CHUNK = 200


def intake_path(database: str) -> str:
    """The SQLite file that holds the intake of the store ``database`` (beside it)."""
    return f"{database}-intake"


class SqliteIntake:
    """The intake file, on connections of its own in one thread of its own (sqlite3 connections
    stay in their thread): each accepted group is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` on the
    intake file; the store is read on a second connection (dedup keys stored or quarantined,
    decisions, the schema revision)."""

    def __init__(self, path: str | None, busy_timeout: float) -> None:
        self._path = path
        self._busy_ms = round(busy_timeout * 1000)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intake-writer")
        self._connection: sqlite3.Connection | None = None  # the intake file
        self._store: sqlite3.Connection | None = None  # the store, read only

    async def open(self) -> None:
        """Open the intake file now (created and set up on first use, which takes its write
        lock): after this, a caller with nothing to decide takes no write lock."""
        await self._call(lambda _: None)

    async def write(self, rows: Sequence[IntakeRow]) -> list[Written]:
        return await self._call(self._write, list(rows))

    async def decisions(self, keys: Sequence[str]) -> dict[str, Decision]:
        """How the mails with these dedup keys were decided (keys not decided yet are left out)."""
        return await self._call(self._decisions, list(keys))

    async def still_accepted(self, ids: Sequence[int]) -> set[int]:
        """Which of these intake rows are still there (not decided yet)."""
        return await self._call(self._still_accepted, list(ids))

    async def pending(self, after: int = 0, limit: int = 200) -> list[IntakeRecord]:
        """Up to ``limit`` rows with ids above ``after``, in arrival (id) order."""
        return await self._call(self._pending, after, limit)

    async def pending_ids(self, limit: int = 200) -> list[tuple[int, int]]:
        """The first ``limit`` rows' ids and attempts, in arrival (id) order: what a decide
        step needs of rows it parsed ahead already (the mails themselves are not read)."""
        return await self._call(self._pending_ids, limit)

    async def records(self, ids: Sequence[int]) -> list[IntakeRecord]:
        """These rows (those still there), in id order."""
        return await self._call(self._records, list(ids))

    async def present(self, top: int) -> set[int]:
        """The ids up to ``top`` still in the intake (accepted, not decided)."""
        return await self._call(self._present, top)

    async def forget(self, ids: Sequence[int]) -> None:
        """Delete these rows: their decisions are committed to the store."""
        if ids:
            await self._call(self._forget, list(ids))

    async def failed(self, errors: dict[int, str]) -> None:
        """Count a failed decision on each of these rows, with its error."""
        if errors:
            await self._call(self._failed, dict(errors))

    async def backlog(self) -> tuple[int, datetime | None]:
        """How many mails wait for their decision, and when the oldest was accepted."""
        return await self._call(self._backlog)

    async def revision(self) -> str | None:
        """The schema revision in ``alembic_version`` (None: not there)."""
        return await self._call(self._revision)

    async def deciders_running(self) -> bool:
        """Whether a decide loop holds the database's decide lock (``decide_lock``)."""
        return self._path is not None and held_elsewhere(decide_lock_path(self._path))

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)

    async def _call(self, work: Callable[..., _T], *args: Any) -> _T:
        """``work(connection, *args)`` in the writer's thread; a database error closes the
        connections (their state is unknown) and is raised as ``IntakeUnavailable``."""
        def guarded() -> _T:
            try:
                return work(self._connect(), *args)
            except sqlite3.Error as exc:
                self._close()
                raise IntakeUnavailable(f"{type(exc).__name__}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._thread, guarded)

    def _decisions(self, _: sqlite3.Connection, keys: list[str]) -> dict[str, Decision]:
        store = self._read_store()
        found: dict[str, Decision] = {}
        for chunk, marks in _chunks(keys):
            found.update(_decisions(*(store.execute(sql.format(keys=marks), chunk).fetchall()
                                      for sql in (_EMAILS, _LINKS, _QUARANTINED))))
        return found

    @staticmethod
    def _still_accepted(connection: sqlite3.Connection, ids: list[int]) -> set[int]:
        return {row[0] for chunk, marks in _chunks(ids) for row in connection.execute(
            f"SELECT id FROM intake WHERE id IN ({marks})", chunk)}

    @staticmethod
    def _pending(connection: sqlite3.Connection, after: int, limit: int) -> list[IntakeRecord]:
        return [_record(row) for row in connection.execute(
            f"{_RECORD} WHERE id > ? ORDER BY id LIMIT ?", (after, limit))]

    @staticmethod
    def _pending_ids(connection: sqlite3.Connection, limit: int) -> list[tuple[int, int]]:
        return connection.execute(
            "SELECT id, attempts FROM intake ORDER BY id LIMIT ?", (limit,)).fetchall()

    @staticmethod
    def _records(connection: sqlite3.Connection, ids: list[int]) -> list[IntakeRecord]:
        found = [_record(row) for chunk, marks in _chunks(ids) for row in connection.execute(
            f"{_RECORD} WHERE id IN ({marks})", chunk)]
        return sorted(found, key=lambda record: record.id)

    @staticmethod
    def _present(connection: sqlite3.Connection, top: int) -> set[int]:
        return {row[0] for row in connection.execute("SELECT id FROM intake WHERE id <= ?",
                                                     (top,))}

    def _forget(self, connection: sqlite3.Connection, ids: list[int]) -> None:
        # Not synced at its commit (the next accept commit syncs the log, this too): a deletion
        # lost to a power cut only leaves rows whose mails are stored, forgotten again.
        connection.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._transaction(connection):
                for chunk, marks in _chunks(ids):
                    connection.execute(f"DELETE FROM intake WHERE id IN ({marks})", chunk)
        finally:
            connection.execute("PRAGMA synchronous=FULL")

    def _failed(self, connection: sqlite3.Connection, errors: dict[int, str]) -> None:
        with self._transaction(connection):
            connection.executemany(
                "UPDATE intake SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                [(error, intake_id) for intake_id, error in errors.items()])

    @staticmethod
    def _backlog(connection: sqlite3.Connection) -> tuple[int, datetime | None]:
        count, oldest = connection.execute(
            "SELECT count(*), min(accepted_at) FROM intake").fetchone()
        return int(count or 0), _from_sqlite_time(oldest) if oldest else None

    def _revision(self, _: sqlite3.Connection) -> str | None:
        try:
            row = self._read_store().execute(_REVISION).fetchone()
        except sqlite3.OperationalError:
            return None  # no such table: an empty database
        return str(row[0]) if row else None

    def _close(self) -> None:
        for connection in (self._connection, self._store):
            if connection is not None:
                connection.close()
        self._connection = self._store = None

    def _connect(self) -> sqlite3.Connection:
        if self._path is None:
            raise sqlite3.OperationalError(
                "an in-memory SQLite database cannot take mail: name a file in the URL")
        if self._connection is None:
            # No busy timeout: SQLite's busy handler sleeps ever longer between tries (up to
            # 100 ms), so a group that found another writer would wait long after the lock is
            # free. ``_begin`` tries again every millisecond instead.
            connection = sqlite3.connect(intake_path(self._path), isolation_level=None,
                                         timeout=0)
            try:
                # Setting up may meet another writer: wait for it as long as a group would.
                connection.execute(f"PRAGMA busy_timeout={self._busy_ms}")
                connection.execute("PRAGMA journal_mode=WAL")
                # The 250 follows this commit: FULL syncs the log at every commit, so accepted
                # mail outlives a power cut or an OS crash too, not only a crash of mailsvc.
                connection.execute("PRAGMA synchronous=FULL")
                with self._transaction(connection):
                    connection.execute(INTAKE_DDL)
                self._move_from_store(connection)
                connection.execute("PRAGMA busy_timeout=0")
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _read_store(self) -> sqlite3.Connection:
        """The store, for reads (each statement sees what is committed when it starts)."""
        if self._store is None:
            assert self._path is not None
            self._store = sqlite3.connect(self._path, isolation_level=None,
                                          timeout=self._busy_ms / 1000)
        return self._store

    def _move_from_store(self, connection: sqlite3.Connection) -> None:
        """Rows an earlier version accepted into the store's own ``intake`` table move here,
        ids kept (so their order is too). Copied, then deleted there: a crash in between
        copies them again, which the UNIQUE key and ``OR IGNORE`` make harmless."""
        store = self._read_store()
        while True:
            try:
                rows = store.execute(f"{_RECORD} ORDER BY id LIMIT ?", (_MOVE_CHUNK,)).fetchall()
            except sqlite3.OperationalError:
                return  # no such table (a store not migrated yet): nothing to move
            if not rows:
                return
            with self._transaction(connection):
                connection.executemany(
                    f"INSERT OR IGNORE INTO intake ({', '.join(_RECORD_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(_RECORD_COLUMNS))})", rows)
            ids = [row[0] for row in rows]
            with self._transaction(store):
                for chunk, marks in _chunks(ids):
                    store.execute(f"DELETE FROM intake WHERE id IN ({marks})", chunk)

    def _write(self, connection: sqlite3.Connection, rows: list[IntakeRow]) -> list[Written]:
        with self._transaction(connection):
            keys = sorted({row.dedup_key for row in rows})
            # Under the intake's write lock: a key not here now is either new or already
            # decided (a decide step deletes rows only after storing their mails), and the
            # store, read now, has every decided one.
            known = self._known(connection, keys, "intake")
            known.update(self._known(
                self._read_store(), [k for k in keys if k not in known], "email", "quarantine"))
            fresh = _fresh(rows, known)
            inserted = self._insert(connection, fresh) if fresh else {}
        return settle(rows, known, inserted)

    @contextlib.contextmanager
    def _transaction(self, connection: sqlite3.Connection) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any error)."""
        self._begin(connection)
        try:
            yield
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _begin(self, connection: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE (the write lock), tried every millisecond up to the busy timeout."""
        deadline = time.monotonic() + self._busy_ms / 1000
        while True:
            try:
                connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.001)

    @staticmethod
    def _known(connection: sqlite3.Connection, keys: list[str], *where: Where
               ) -> dict[str, tuple[Where, int]]:
        known: dict[str, tuple[Where, int]] = {}
        tables = [(w, table) for w, table in _TABLES if w in where]
        for chunk, marks in _chunks(keys):
            sql = " UNION ALL ".join(
                f"SELECT dedup_key, '{w}', id FROM {table} WHERE dedup_key IN ({marks})"
                for w, table in tables)
            for key, found, row_id in connection.execute(sql, chunk):
                known.setdefault(key, (found, row_id))
        return known

    @staticmethod
    def _insert(connection: sqlite3.Connection, rows: list[IntakeRow]) -> dict[str, int]:
        inserted: dict[str, int] = {}
        columns = ", ".join(_COLUMNS)
        for start in range(0, len(rows), 200):
            chunk = rows[start:start + 200]
            values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, 0)"] * len(chunk))
            parameters: list[Any] = []
            for row in chunk:
                parameters += [
                    row.dedup_key, row.raw, row.mail_from, json.dumps(row.rcpt_tos), row.role,
                    row.source, json.dumps(row.envelope_extra), _sqlite_time(row.accepted_at),
                ]
            cursor = connection.execute(
                f"INSERT INTO intake ({columns}) VALUES {values} "
                "ON CONFLICT (dedup_key) DO NOTHING RETURNING id, dedup_key", parameters)
            inserted.update((key, row_id) for row_id, key in cursor.fetchall())
        return inserted


def _record(row: Sequence[Any]) -> IntakeRecord:
    """An intake row as ``_RECORD`` selects it (SQLite keeps JSON and times as text)."""
    (intake_id, key, raw, mail_from, rcpt_tos, role, source, extra, accepted_at, attempts,
     last_error) = row
    return IntakeRecord(
        dedup_key=str(key), raw=bytes(raw), mail_from=mail_from, rcpt_tos=_json(rcpt_tos) or [],
        role=str(role), source=str(source), envelope_extra=_json(extra) or {},
        accepted_at=_from_sqlite_time(accepted_at), id=int(intake_id),
        attempts=int(attempts or 0), last_error=last_error,
    )


def _chunks(values: Sequence[_V]) -> Iterator[tuple[Sequence[_V], str]]:
    """``values`` in pieces of at most 500 (the parameters of one statement are bounded), each
    with its numbered placeholders (``?1, ?2, ...``)."""
    for start in range(0, len(values), 500):
        chunk = values[start:start + 500]
        yield chunk, ", ".join(f"?{i + 1}" for i in range(len(chunk)))


def _sqlite_time(value: datetime) -> str:
    """As SQLAlchemy's DateTime stores it on SQLite: naive UTC, microseconds."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _from_sqlite_time(value: str | datetime) -> datetime:
    """A time as ``_sqlite_time`` stores it, read back (aware, UTC)."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def decide_lock_path(database: str) -> str:
    """The file a decide loop holds a shared lock on while it runs (beside the database)."""
    return f"{database}-decide.lock"


@contextlib.contextmanager
def decide_lock(database: str | None) -> Iterator[None]:
    """Hold the decide lock of a SQLite database while deciding (shared: several may). The
    kernel drops it with the process, so a killed worker is never taken for a running one."""
    if database is None:
        yield
        return
    try:  # readable by all: `mailsvc ingest` may run as another user (an MTA's pipe user)
        descriptor = os.open(decide_lock_path(database), os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:  # no lock, no hand-over: `mailsvc ingest` then decides itself
        yield
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH)
        yield
    finally:
        os.close(descriptor)


def held_elsewhere(path: str) -> bool:
    """Whether another process holds a lock on ``path`` (an exclusive one cannot be had)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # not there, or not ours to read: nobody we can hand over to
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False


def sqlite_path(database_url: str) -> str | None:
    """The file of a ``sqlite+aiosqlite:///path`` URL (None for an in-memory database)."""
    path = database_url.partition(":///")[2].partition("?")[0]
    return None if path in ("", ":memory:") else path


# ---------------------------------------------------------------- PostgreSQL

# Lends an asyncpg connection (asyncpg ships no type information).
Connect = Callable[[], AbstractAsyncContextManager[Any]]

_PG_KNOWN = " UNION ALL ".join(
    f"SELECT dedup_key, '{where}', id FROM {table} WHERE dedup_key = ANY($1::text[])"
    for where, table in _TABLES)
_PG_INSERT = (
    f"INSERT INTO intake ({', '.join(_COLUMNS)}) "
    "SELECT k, r, f, t::jsonb, o, s, e::jsonb, a, 0 FROM unnest("
    "$1::text[], $2::bytea[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], "
    "$8::timestamptz[]) AS u(k, r, f, t, o, s, e, a) "
    "ON CONFLICT (dedup_key) DO NOTHING RETURNING id, dedup_key"
)


class PostgresIntake:
    """Writes on a connection ``connect`` lends (the service's pool, or one of its own)."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A lent connection; a database error is raised as ``IntakeUnavailable``."""
        import asyncpg  # type: ignore[import-untyped]  # only PostgreSQL users load it

        try:
            async with self._connect() as connection:
                yield connection
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise IntakeUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def write(self, rows: Sequence[IntakeRow]) -> list[Written]:
        async with self._connection() as connection, connection.transaction():
            keys = sorted({row.dedup_key for row in rows})
            known: dict[str, tuple[Where, int]] = {}
            for key, where, row_id in await connection.fetch(_PG_KNOWN, keys):
                known.setdefault(key, (where, row_id))
            fresh = _fresh(rows, known)
            inserted: dict[str, int] = {}
            if fresh:
                columns = list(zip(*(
                    (r.dedup_key, r.raw, r.mail_from, json.dumps(r.rcpt_tos), r.role,
                     r.source, json.dumps(r.envelope_extra), r.accepted_at)
                    for r in fresh), strict=True))
                inserted = {key: row_id for row_id, key in
                            await connection.fetch(_PG_INSERT, *map(list, columns))}
        return settle(rows, known, inserted)

    async def decisions(self, keys: Sequence[str]) -> dict[str, Decision]:
        """How the mails with these dedup keys were decided (keys not decided yet are left out)."""
        async with self._connection() as connection:
            results = [await connection.fetch(sql.format(keys="SELECT unnest($1::text[])"),
                                              list(keys))
                       for sql in (_EMAILS, _LINKS, _QUARANTINED)]
        return _decisions(*results)

    async def still_accepted(self, ids: Sequence[int]) -> set[int]:
        """Which of these intake rows are still there (not decided yet)."""
        async with self._connection() as connection:
            rows = await connection.fetch(
                "SELECT id FROM intake WHERE id = ANY($1::bigint[])", list(ids))
        return {row[0] for row in rows}

    async def pending(self, after: int = 0, limit: int = 200) -> list[IntakeRecord]:
        """Up to ``limit`` rows with ids above ``after``, in arrival (id) order (a look: decide
        workers claim rows in their own transactions)."""
        async with self._connection() as connection:
            rows = await connection.fetch(f"{_RECORD} WHERE id > $1 ORDER BY id LIMIT $2",
                                          after, limit)
        return [_record(tuple(row)) for row in rows]

    async def records(self, ids: Sequence[int]) -> list[IntakeRecord]:
        """These rows (those still there), in id order."""
        async with self._connection() as connection:
            rows = await connection.fetch(
                f"{_RECORD} WHERE id = ANY($1::bigint[]) ORDER BY id", list(ids))
        return [_record(tuple(row)) for row in rows]

    async def backlog(self) -> tuple[int, datetime | None]:
        """How many mails wait for their decision, and when the oldest was accepted."""
        async with self._connection() as connection:
            row = await connection.fetchrow("SELECT count(*), min(accepted_at) FROM intake")
        return int(row[0] or 0), row[1]

    async def revision(self) -> str | None:
        """The schema revision in ``alembic_version`` (None: not there)."""
        import asyncpg

        async with self._connection() as connection:
            try:
                found = await connection.fetchval(_REVISION)
            except asyncpg.UndefinedTableError:
                return None
        return str(found) if found else None

    async def deciders_running(self) -> bool:
        """Whether a decide worker process is connected (``DECIDE_APPLICATION``)."""
        async with self._connection() as connection:
            return bool(await connection.fetchval(_DECIDERS, DECIDE_APPLICATION))

    async def close(self) -> None:
        return None


IntakeWriter = SqliteIntake | PostgresIntake
