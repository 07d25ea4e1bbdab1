"""A bulk loader for a CRM of any size: users, accounts with domains, contacts with addresses,
opportunities, tickets, inbox leads and stored e-mails with their links.

The store is migrated first (``mailsvc.crmstore.migrate.upgrade``, as ``mailsvc db upgrade``
does); then every table is filled in one transaction of its own, by COPY on PostgreSQL (asyncpg
``copy_records_to_table``) and by ``executemany`` on SQLite (foreign keys on, as mailsvc runs it),
never through the API or the pipeline. Every row is a function of its number, so the benchmark
can name a contact's address, an e-mail's Message-ID or a ticket's contact without reading the
store back: contact ``c`` belongs to account ``1 + (c - 1) % accounts`` and so on.

PostgreSQL is ``VACUUM ANALYZE``d afterwards (what autovacuum does soon after a bulk load); SQLite
is left as mailsvc leaves it (no ``ANALYZE``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy import JSON, Column, Date, Table
from sqlalchemy.ext.asyncio import create_async_engine

from mailsvc.crmstore.base import Base, UTCDateTime
from mailsvc.crmstore.migrate import upgrade

SEEDER_VERSION = 1  # part of the cache key: bump when the rows change
CHUNK = 20_000
DOMAIN = "crm.example"  # our own: users and the intake addresses
BCC, SALES, SUPPORT = (f"{name}@{DOMAIN}" for name in ("bcc", "sales", "support"))
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
YEAR = timedelta(days=365)
FIRST = ("anna", "ben", "carla", "dora", "emil", "fritz", "greta", "hans", "ida", "jonas",
         "karl", "lisa", "max", "nina", "otto", "paula", "quirin", "rosa", "sven", "tina")
LAST = ("meyer", "schmidt", "schulz", "fischer", "weber", "wagner", "becker", "hoffmann",
        "koch", "richter", "klein", "wolf", "neumann", "braun", "zimmermann", "krueger")
CITIES = ("Berlin", "Hamburg", "München", "Köln", "Frankfurt", "Stuttgart", "Leipzig", "Wien")
INDUSTRIES = ("software", "manufacturing", "retail", "logistics", "health", "finance")
OPP_STATUS = ("open",) * 7 + ("won", "won", "lost")
TICKET_STATUS = ("open", "in_progress", "resolved", "closed", "closed", "closed")
LEAD_STATUS = ("new", "contacted", "qualifying", "done")


@dataclass(frozen=True)
class Sizes:
    """How big the CRM is; the derived counts follow a B2B company's proportions."""

    contacts: int
    accounts: int
    emails: int
    users: int = 40

    def __post_init__(self) -> None:
        if self.accounts < 1 or self.contacts < self.accounts:
            raise ValueError("need at least one account and a contact per account")

    @property
    def opportunities(self) -> int:  # one for every second account
        return max(1, self.accounts // 2)

    @property
    def tickets(self) -> int:
        return max(1, self.accounts // 2)

    @property
    def leads(self) -> int:
        return max(1, self.accounts // 20)

    @property
    def per_account(self) -> int:
        return self.contacts // self.accounts

    def key(self) -> dict[str, int]:
        return {**asdict(self), "opportunities": self.opportunities, "tickets": self.tickets,
                "leads": self.leads}


# --- who is who: every row is a function of its number --------------------------------------

def _mix(n: int, factor: int, modulo: int) -> int:
    """1..modulo, spread over the range (multiplicative hashing), stable across runs."""
    return 1 + (n * factor) % modulo


def user_email(u: int) -> str:
    return f"user{u}@{DOMAIN}"


def account_domain(a: int) -> str:
    return f"company{a}.example"


def account_owner(sizes: Sizes, a: int) -> int:
    return 1 + (a - 1) % sizes.users


def contact_account(sizes: Sizes, c: int) -> int:
    return 1 + (c - 1) % sizes.accounts


def contact_name(c: int) -> tuple[str, str]:
    return FIRST[c % len(FIRST)].title(), LAST[(c // len(FIRST)) % len(LAST)].title()


def contact_email(sizes: Sizes, c: int) -> str:
    first, last = contact_name(c)
    return f"{first.lower()}.{last.lower()}.{c}@{account_domain(contact_account(sizes, c))}"


def account_contact(sizes: Sizes, a: int, k: int) -> int:
    """The k-th contact of account a (contacts of a are a, a + accounts, a + 2 accounts, ...)."""
    return a + (k % sizes.per_account) * sizes.accounts


def opportunity_account(sizes: Sizes, o: int) -> int:
    return _mix(o, 7919, sizes.accounts)


def opportunity_contact(sizes: Sizes, o: int) -> int:
    return account_contact(sizes, opportunity_account(sizes, o), o)


def ticket_account(sizes: Sizes, t: int) -> int:
    return _mix(t, 104_729, sizes.accounts)


def ticket_contact(sizes: Sizes, t: int) -> int:
    return account_contact(sizes, ticket_account(sizes, t), t // 3)


def email_contact(sizes: Sizes, e: int) -> int:
    return _mix(e, 2_654_435_761, sizes.contacts)


def email_message_id(sizes: Sizes, e: int) -> str:
    account = contact_account(sizes, email_contact(sizes, e))
    return f"m{e}.{(e * 2_654_435_761) & 0xFFFFFFFF:08x}@{account_domain(account)}"


def email_record(sizes: Sizes, e: int) -> tuple[str, int] | None:
    """The record a stored e-mail is linked to: an opportunity (2 in 5), a ticket (1 in 5)."""
    if e % 5 < 2:
        return "opportunity", _mix(e, 40_503, sizes.opportunities)
    if e % 5 == 2:
        return "ticket", _mix(e, 40_503, sizes.tickets)
    return None


def _when(n: int, total: int) -> datetime:
    return NOW - YEAR * (1 - n / max(total, 1))


# --- the rows ---------------------------------------------------------------------------------

def _users(sizes: Sizes) -> Iterator[dict[str, Any]]:
    for u in range(1, sizes.users + 1):
        yield {"id": u, "email": user_email(u), "name": f"User {u}",
               "role": "support" if u % 4 == 0 else ("admin" if u == 1 else "sales"),
               "active": True, "created_at": NOW - YEAR}


def _user_emails(sizes: Sizes) -> Iterator[dict[str, Any]]:
    for u in range(1, sizes.users + 1):
        yield {"email": user_email(u), "user_id": u}


def _accounts(sizes: Sizes) -> Iterator[dict[str, Any]]:
    for a in range(1, sizes.accounts + 1):
        created = _when(a, sizes.accounts)
        yield {"id": a, "name": f"Company {a} GmbH", "name_key": f"company {a}",
               "status": "customer" if a % 3 else "prospect",
               "owner_id": account_owner(sizes, a), "city": CITIES[a % len(CITIES)],
               "country": "DE", "industry": INDUSTRIES[a % len(INDUSTRIES)],
               "website": f"https://www.{account_domain(a)}", "archived": False,
               "created_at": created, "updated_at": created}


def _account_domains(sizes: Sizes) -> Iterator[dict[str, Any]]:
    for a in range(1, sizes.accounts + 1):
        yield {"id": a, "account_id": a, "domain": account_domain(a)}


def _contacts(sizes: Sizes) -> Iterator[dict[str, Any]]:
    for c in range(1, sizes.contacts + 1):
        first, last = contact_name(c)
        a = contact_account(sizes, c)
        created = _when(c, sizes.contacts)
        yield {"id": c, "first_name": first, "last_name": last, "email": contact_email(sizes, c),
               "phone": f"+49 30 {c:07d}", "role": "purchasing" if c % 7 == 0 else None,
               "account_id": a, "owner_id": account_owner(sizes, a), "active": True,
               "created_at": created, "updated_at": created}


def _contact_emails(sizes: Sizes) -> Iterator[dict[str, Any]]:
    for c in range(1, sizes.contacts + 1):
        yield {"id": c, "contact_id": c, "email": contact_email(sizes, c), "bouncing": False}


def _opportunities(sizes: Sizes) -> Iterator[dict[str, Any]]:
    for o in range(1, sizes.opportunities + 1):
        a = opportunity_account(sizes, o)
        status = OPP_STATUS[o % len(OPP_STATUS)]
        created = _when(o, sizes.opportunities)
        closed = created + timedelta(days=30) if status != "open" else None
        yield {"id": o, "title": f"Company {a}: {10 + o % 90} seats", "kind": "deal" if o % 3
               else "lead", "status": status, "probability": 100 if status == "won" else (
                   0 if status == "lost" else 10 * (o % 9)),
               "amount": Decimal(1000 + (o * 37) % 90_000), "source": "e-mail",
               "account_id": a, "contact_id": opportunity_contact(sizes, o),
               "owner_id": account_owner(sizes, a), "won_at": closed if status == "won" else None,
               "lost_at": closed if status == "lost" else None,
               "created_at": created, "updated_at": created}


def _tickets(sizes: Sizes) -> Iterator[dict[str, Any]]:
    for t in range(1, sizes.tickets + 1):
        a = ticket_account(sizes, t)
        c = ticket_contact(sizes, t)
        status = TICKET_STATUS[t % len(TICKET_STATUS)]
        created = _when(t, sizes.tickets)
        first, last = contact_name(c)
        yield {"id": t, "subject": f"Login fails after update ({t})",
               "description": "Reported by mail.", "type": "question", "status": status,
               "priority": "normal", "account_id": a, "contact_id": c,
               "owner_id": account_owner(sizes, a), "requester_email": contact_email(sizes, c),
               "requester_name": f"{first} {last}",
               "resolved_at": created + timedelta(days=2) if status in ("resolved", "closed")
               else None,
               "closed_at": created + timedelta(days=9) if status == "closed" else None,
               "created_at": created, "updated_at": created}


def _inbox_leads(sizes: Sizes) -> Iterator[dict[str, Any]]:
    for n in range(1, sizes.leads + 1):
        status = LEAD_STATUS[n % len(LEAD_STATUS)]
        email = f"lead{n}@prospect{n}.example"
        yield {"id": n, "title": f"Enquiry {n}: 20 seats", "source": "e-mail",
               "priority": "normal", "status": status, "owner_id": 1 + n % sizes.users,
               "company": f"Prospect {n} AG", "first_name": "Lea", "last_name": f"Lead{n}",
               "email": email, "open_key": None if status == "done" else email,
               "archived": False, "created_at": _when(n, sizes.leads)}


def _mail_bytes(sender: str, name: str, subject: str, message_id: str, sent: datetime,
                body: str) -> bytes:
    head = (f"From: {name} <{sender}>\r\nTo: {BCC}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{message_id}>\r\nDate: {sent:%a, %d %b %Y %H:%M:%S +0000}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    return (head + body.replace("\n", "\r\n")).encode()


def _emails(sizes: Sizes) -> Iterator[dict[str, Any]]:
    for e in range(1, sizes.emails + 1):
        c = email_contact(sizes, e)
        sender = contact_email(sizes, c)
        first, last = contact_name(c)
        name = f"{first} {last}"
        record = email_record(sizes, e)
        rule = ("subject_id" if e % 2 else "thread") if record else "address"
        subject = (f"Re: [{'OPP' if record[0] == 'opportunity' else 'TCK'}-{record[1]}] "
                   "Our order" if record and rule == "subject_id" else f"Our order {e}")
        message_id = email_message_id(sizes, e)
        received = _when(e, sizes.emails)
        body = f"Hello,\n\nplease find the details of order {e} below.\n\nRegards\n{name}\n"
        raw = _mail_bytes(sender, name, subject, message_id, received, body)
        yield {"id": e, "dedup_key": f"mid:{message_id}", "message_id": message_id,
               "subject": subject, "from_email": sender, "from_name": name,
               "to": [{"name": "", "email": BCC}], "cc": [], "reply_to": [],
               "sent_at": received, "in_reply_to": [], "references": [],
               "headers": [["From", f"{name} <{sender}>"], ["Subject", subject]],
               "text_body": body, "html_body": "", "reply_text": body, "raw": raw,
               "size": len(raw), "envelope_from": sender, "envelope_to": [BCC],
               "intake_role": "bcc", "source": "smtp", "kind": "human",
               "direction": "incoming", "automatic": False, "outcome": "linked", "rule": rule,
               "notes": [], "received_at": received}


def _email_links(sizes: Sizes) -> Iterator[dict[str, Any]]:
    n = 0
    for e in range(1, sizes.emails + 1):
        c = email_contact(sizes, e)
        a = contact_account(sizes, c)
        record = email_record(sizes, e)
        rule = ("subject_id" if e % 2 else "thread") if record else "address"
        targets = [("contact", c), ("account", a), ("owner", account_owner(sizes, a))]
        if record:
            targets.append(record)
        created = _when(e, sizes.emails)
        for target_type, target_id in targets:
            n += 1
            yield {"id": n, "email_id": e, "target_type": target_type, "target_id": target_id,
                   "rule": rule, "created_at": created}


TABLES: tuple[tuple[str, Callable[[Sizes], Iterator[dict[str, Any]]]], ...] = (
    ("users", _users), ("user_emails", _user_emails), ("accounts", _accounts),
    ("account_domains", _account_domains), ("contacts", _contacts),
    ("contact_emails", _contact_emails), ("opportunities", _opportunities),
    ("tickets", _tickets), ("inbox_leads", _inbox_leads), ("emails", _emails),
    ("email_links", _email_links),
)


def expected_counts(sizes: Sizes) -> dict[str, int]:
    records = sum(1 for e in range(1, sizes.emails + 1) if email_record(sizes, e))
    return {"users": sizes.users, "user_emails": sizes.users, "accounts": sizes.accounts,
            "account_domains": sizes.accounts, "contacts": sizes.contacts,
            "contact_emails": sizes.contacts, "opportunities": sizes.opportunities,
            "tickets": sizes.tickets, "inbox_leads": sizes.leads, "emails": sizes.emails,
            "email_links": 3 * sizes.emails + records}


# --- loading ----------------------------------------------------------------------------------

def _defaults(table: Table) -> dict[str, Any]:
    """The Python-side defaults of the columns (the models have no server defaults)."""
    values: dict[str, Any] = {}
    for column in table.columns:
        default: Any = column.default
        if default is not None and default.is_scalar:
            values[column.name] = default.arg
        elif default is not None and default.is_callable:
            values[column.name] = default.arg(None)
    return values


def _tuples(table: Table, rows: Iterable[dict[str, Any]],
            convert: Callable[[Column[Any], Any], Any]) -> Iterator[tuple[Any, ...]]:
    defaults = _defaults(table)
    columns = list(table.columns)
    for row in rows:
        yield tuple(convert(c, row[c.name] if c.name in row else defaults.get(c.name))
                    for c in columns)


def _chunks(items: Iterator[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for item in items:
        batch.append(item)
        if len(batch) == CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def _for_postgres(column: Column[Any], value: Any) -> Any:
    if value is not None and isinstance(column.type, JSON):
        return json.dumps(value)
    return value


def _for_sqlite(column: Column[Any], value: Any) -> Any:
    """What SQLAlchemy's SQLite dialect would bind (the store reads these back)."""
    if value is None:
        return None
    if isinstance(column.type, JSON):
        return json.dumps(value)
    if isinstance(column.type, UTCDateTime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(column.type, Date) and isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bool):
        return int(value)
    return value


async def _load_postgres(dsn: str, sizes: Sizes) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for name, rows in TABLES:
            table = Base.metadata.tables[name]
            async with conn.transaction():
                for chunk in _chunks(_tuples(table, rows(sizes), _for_postgres)):
                    await conn.copy_records_to_table(name, records=chunk,
                                                     columns=[c.name for c in table.columns])
            if "id" in table.columns:  # explicit ids: move the sequence past them
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                    f"coalesce((SELECT max(id) FROM {name}), 1))")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def _load_sqlite(path: str, sizes: Sizes) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        for name, rows in TABLES:
            table = Base.metadata.tables[name]
            columns = ", ".join(f'"{c.name}"' for c in table.columns)
            marks = ", ".join("?" for _ in table.columns)
            statement = f'INSERT INTO "{name}" ({columns}) VALUES ({marks})'
            conn.execute("BEGIN")
            for chunk in _chunks(_tuples(table, rows(sizes), _for_sqlite)):
                conn.executemany(statement, chunk)
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


async def seed(url: str, sizes: Sizes) -> None:
    """Migrate the empty database at ``url`` (a mailsvc URL) and fill it."""
    engine = create_async_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    if url.startswith("sqlite"):
        _load_sqlite(url.split("///", 1)[1], sizes)
    else:
        await _load_postgres(url.replace("postgresql+asyncpg://", "postgresql://"), sizes)


# --- checking ---------------------------------------------------------------------------------

CHECKS = {
    # each query counts rows that break what the linking rules rely on; all must be 0
    "contacts without their account": "SELECT count(*) FROM contacts c LEFT JOIN accounts a "
        "ON a.id = c.account_id WHERE a.id IS NULL",
    "contacts without an address row": "SELECT count(*) FROM contacts c WHERE NOT EXISTS "
        "(SELECT 1 FROM contact_emails e WHERE e.contact_id = c.id AND e.email = c.email)",
    "addresses used twice": "SELECT count(*) FROM (SELECT email FROM contact_emails "
        "GROUP BY email HAVING count(*) > 1) d",
    "addresses not lower-case": "SELECT count(*) FROM contact_emails WHERE email <> lower(email)",
    "accounts without a domain": "SELECT count(*) FROM accounts a WHERE NOT EXISTS "
        "(SELECT 1 FROM account_domains d WHERE d.account_id = a.id)",
    "address outside its account's domains": "SELECT count(*) FROM contacts c WHERE NOT EXISTS "
        "(SELECT 1 FROM account_domains d WHERE d.account_id = c.account_id "
        "AND c.email LIKE '%@' || d.domain)",
    "records whose contact is at another account": "SELECT (SELECT count(*) FROM opportunities o "
        "JOIN contacts c ON c.id = o.contact_id WHERE c.account_id <> o.account_id) + "
        "(SELECT count(*) FROM tickets t JOIN contacts c ON c.id = t.contact_id "
        "WHERE c.account_id <> t.account_id)",
    "e-mails without a Message-ID": "SELECT count(*) FROM emails WHERE message_id IS NULL "
        "OR dedup_key <> 'mid:' || message_id",
    "links to nothing": "SELECT count(*) FROM email_links l WHERE "
        "(l.target_type = 'contact' AND l.target_id NOT IN (SELECT id FROM contacts)) OR "
        "(l.target_type = 'account' AND l.target_id NOT IN (SELECT id FROM accounts)) OR "
        "(l.target_type = 'owner' AND l.target_id NOT IN (SELECT id FROM users)) OR "
        "(l.target_type = 'opportunity' AND l.target_id NOT IN (SELECT id FROM opportunities)) OR "
        "(l.target_type = 'ticket' AND l.target_id NOT IN (SELECT id FROM tickets))",
    "open leads without their key": "SELECT count(*) FROM inbox_leads WHERE "
        "(status = 'done') <> (open_key IS NULL)",
}


async def check(url: str) -> tuple[dict[str, int], dict[str, int]]:
    """Row counts of the seeded tables, and the count of each broken rule (all 0 when sound)."""
    from sqlalchemy import text

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            counts = {name: int(await conn.scalar(text(f"SELECT count(*) FROM {name}")) or 0)
                      for name, _ in TABLES}
            problems = {name: int(await conn.scalar(text(query)) or 0)
                        for name, query in CHECKS.items()}
    finally:
        await engine.dispose()
    return counts, problems
