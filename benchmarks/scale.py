"""Linking cost as the CRM grows: the same mail through the decide path, small store and large.

Two stores per target (PostgreSQL, SQLite): a small CRM (1,000 contacts, 200 accounts, 500
stored e-mails) and a large one (``--contacts``, ``--accounts``, ``--emails``; 1,000,000, 200,000
and 500,000 by default), each with users, opportunities, tickets and inbox leads in proportion.
Both are filled by the bulk loader in ``scale_seed.py`` (COPY on PostgreSQL, executemany on
SQLite, neither the API nor the pipeline) and cached: a PostgreSQL template database and a SQLite
file named by a hash of the schema head, the sizes and the loader's version, so a re-run copies
instead of seeding again (``--no-cache`` seeds afresh and keeps nothing, ``--drop-cache`` removes
what this script cached).

Then ``--mails`` mails go through the real import path (``mailsvc.ingest.files.Importer``, as
``mailsvc import`` runs it, one parsing process unless ``--jobs``) into each store: mails from
known contacts (drawn uniformly from the whole contact set, so lookups hit cold rows), from unknown
people at known account domains (to the sales address: new inbox leads), replies whose
In-Reply-To/References name a stored e-mail (drawn uniformly from all of them), and mails naming an
existing opportunity (``OPP-n``) or ticket (``TCK-n``, to the support address) in the subject.
Each timed run is preceded by ``--warmup`` untimed mails of the same mix; runs alternate small
and large ``--repeats`` times and the best run of each store counts (the machine may be shared).
Reported: mails/s, the time spent in SQL per mail (cursor execute, all statements) and the ratio
large / small (target: >= 0.90).

Every statement the decide path issued against the large store is then shown to the planner
(``EXPLAIN`` on PostgreSQL, ``EXPLAIN QUERY PLAN`` on SQLite, with the parameters it ran with);
a sequential scan of a table with 10,000 rows or more is reported.

    python benchmarks/scale.py                                            # the full size, both
    python benchmarks/scale.py --contacts 100000 --accounts 20000 --emails 50000 --targets postgres
    python benchmarks/scale.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import random
import re
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import scale_seed as seed
from common import PG_ADMIN_DSN, drop_database, render_table
from scale_seed import BCC, SALES, SUPPORT, Sizes
from sqlalchemy import event

from mailsvc.bootstrap import open_services
from mailsvc.config import load_settings
from mailsvc.crmstore.migrate import head_revision
from mailsvc.ingest.decider import Decider, parse_pool
from mailsvc.ingest.files import Importer, MessageRef
from mailsvc.mail import Envelope

TARGET_RATIO = 0.90
BIG_TABLE = 10_000  # rows: a sequential scan of a table this size is a finding
GROWTH = 3.0  # a statement this many times slower on the large store is a finding
KINDS = (("contact", 40), ("new_person", 20), ("reply", 20), ("opportunity_id", 10),
         ("ticket_id", 10))
ADDRESS = {"bcc": BCC, "sales": SALES, "support": SUPPORT}
FILLER = ("We would like to extend the contract to the second site and need an updated offer "
          "for the additional seats, including the support package we discussed.\n")
CACHE_DIR = Path(tempfile.gettempdir()) / "mailsvc-scale-cache"
SQLITE_CACHE_FILES = "*.db"


# --- the mail set -----------------------------------------------------------------------------

def _mail(sender: str, name: str, role: str, subject: str, message_id: str,
          extra: tuple[str, ...] = ()) -> bytes:
    """One ~2 KB plain-text mail."""
    lines = [f"From: {name} <{sender}>", f"To: {ADDRESS[role]}", f"Subject: {subject}",
             f"Message-ID: <{message_id}>", "Date: Mon, 30 Nov 2026 10:15:00 +0100",
             "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", *extra]
    body = f"Hello,\n\n{FILLER * 12}\nKind regards\n{name}\n"
    return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n")).encode()


def mail_kinds(count: int, tag: str) -> list[str]:
    """The kind of each mail of a set, the same for every store size."""
    rng = random.Random(f"kinds-{tag}")
    return rng.choices([k for k, _ in KINDS], [w for _, w in KINDS], k=count)


def mail_set(sizes: Sizes, count: int, tag: str) -> list[tuple[str, bytes]]:
    """``count`` (role, mail) pairs of the mix in KINDS for a store of ``sizes``; ``tag`` makes
    the Message-IDs and the new people's addresses unique to one run."""
    rng = random.Random(f"scale-{tag}")
    mails = []
    for n, kind in enumerate(mail_kinds(count, tag)):
        extra: tuple[str, ...] = ()
        role = "bcc"
        if kind == "new_person":
            account = rng.randint(1, sizes.accounts)
            sender = f"new.person.{tag}.{n}@{seed.account_domain(account)}"
            name, subject, role = "New Person", f"Enquiry about your product ({n})", "sales"
        else:
            if kind == "contact":
                contact = rng.randint(1, sizes.contacts)
                subject = f"Question about our contract ({n})"
            elif kind == "reply":
                # The same share of replies to opportunity and ticket mail in every store
                # (scale_seed.email_record goes by the number modulo 5).
                stored = 1 + 5 * rng.randrange(max(1, sizes.emails // 5)) + n % 5
                contact = seed.email_contact(sizes, stored)
                reference = f"<{seed.email_message_id(sizes, stored)}>"
                extra = (f"In-Reply-To: {reference}", f"References: {reference}")
                subject = f"Re: Our order {stored}"
            elif kind == "opportunity_id":
                number = rng.randint(1, sizes.opportunities)
                contact = seed.opportunity_contact(sizes, number)
                subject = f"Re: [OPP-{number}] Our offer"
            else:
                number = rng.randint(1, sizes.tickets)
                contact = seed.ticket_contact(sizes, number)
                subject, role = f"Re: [TCK-{number}] Login fails after update", "support"
            sender = seed.contact_email(sizes, contact)
            name = " ".join(seed.contact_name(contact))
        domain = sender.rpartition("@")[2]
        message_id = f"scale-{tag}-{n}.{rng.getrandbits(32):08x}@{domain}"
        mails.append((role, _mail(sender, name, role, subject, message_id, extra)))
    return mails


# --- the stores -------------------------------------------------------------------------------

@dataclass
class Store:
    label: str
    sizes: Sizes
    url: str
    seeded_s: float | None  # None: copied from the cache
    drop: str | None = None  # PostgreSQL database to drop afterwards


def cache_name(sizes: Sizes) -> str:
    key = json.dumps({"head": head_revision(), "sizes": sizes.key(),
                      "seeder": seed.SEEDER_VERSION}, sort_keys=True)
    return f"mailsvc_scale_{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _pg_url(name: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"


async def _admin(*statements: str) -> list[Any]:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        return [await conn.fetchval(s) if s.startswith("SELECT") else await conn.execute(s)
                for s in statements]
    finally:
        await conn.close()


async def prepare_postgres(label: str, sizes: Sizes, cache: bool) -> Store:
    run = f"mailsvc_scale_run_{os.getpid()}_{label}"
    await _admin(f'DROP DATABASE IF EXISTS "{run}" WITH (FORCE)')
    if not cache:
        await _admin(f'CREATE DATABASE "{run}"')
        started = time.perf_counter()
        await seed.seed(_pg_url(run), sizes)
        return Store(label, sizes, _pg_url(run), time.perf_counter() - started, run)
    template = cache_name(sizes)
    seeded_s = None
    [exists] = await _admin(f"SELECT 1 FROM pg_database WHERE datname = '{template}'")
    if not exists:
        partial = f"{template}_partial"
        await _admin(f'DROP DATABASE IF EXISTS "{partial}" WITH (FORCE)',
                     f'CREATE DATABASE "{partial}"')
        started = time.perf_counter()
        await seed.seed(_pg_url(partial), sizes)
        seeded_s = time.perf_counter() - started
        # Only a complete store gets the cache's name; nobody connects to it afterwards.
        await _admin(f'ALTER DATABASE "{partial}" RENAME TO "{template}"',
                     f'ALTER DATABASE "{template}" WITH ALLOW_CONNECTIONS false')
    await _admin(f'CREATE DATABASE "{run}" TEMPLATE "{template}" STRATEGY FILE_COPY')
    return Store(label, sizes, _pg_url(run), seeded_s, run)


async def prepare_sqlite(label: str, sizes: Sizes, cache: bool, workdir: Path,
                         analyze: bool = False) -> Store:
    path = workdir / f"{label}.db"
    if not cache:
        started = time.perf_counter()
        await seed.seed(f"sqlite+aiosqlite:///{path}", sizes)
        if analyze:
            with sqlite3.connect(path) as conn:
                conn.execute("ANALYZE")
        return Store(label, sizes, f"sqlite+aiosqlite:///{path}", time.perf_counter() - started)
    cached = CACHE_DIR / f"{cache_name(sizes)}.db"
    seeded_s = None
    if not cached.exists():
        CACHE_DIR.mkdir(exist_ok=True)
        partial = cached.with_suffix(".partial")
        for stale in (partial, *(partial.with_name(partial.name + s) for s in ("-wal", "-shm"))):
            stale.unlink(missing_ok=True)
        started = time.perf_counter()
        await seed.seed(f"sqlite+aiosqlite:///{partial}", sizes)
        seeded_s = time.perf_counter() - started
        partial.rename(cached)
    shutil.copyfile(cached, path)
    if analyze:
        with sqlite3.connect(path) as conn:
            conn.execute("ANALYZE")
    return Store(label, sizes, f"sqlite+aiosqlite:///{path}", seeded_s)


async def drop_cache() -> list[str]:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        names = [r["datname"] for r in await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'mailsvc\\_scale\\_%'")]
    finally:
        await conn.close()
    for name in names:
        await drop_database(name)
    files = sorted(CACHE_DIR.glob(SQLITE_CACHE_FILES)) if CACHE_DIR.exists() else []
    for path in files:
        path.unlink()
    return names + [str(p) for p in files]


# --- running mail through the decide path -----------------------------------------------------

@dataclass
class Capture:
    """Statements seen on an engine: time spent executing them, and one example of each."""

    seconds: float = 0.0
    examples: dict[str, tuple[str, Any]] = field(default_factory=dict)
    by_shape: dict[str, list[float]] = field(default_factory=dict)  # shape -> [count, seconds]

    def attach(self, engine: Any) -> None:
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                executemany: bool) -> None:
        shape = _shape(statement)
        # Per connection, as SQLAlchemy's own timing recipe: connections may interleave.
        conn.info.setdefault(id(self), []).append((shape, time.perf_counter()))
        if not executemany:
            self.examples.setdefault(shape, (statement, parameters))

    def _after(self, conn: Any, *args: Any) -> None:
        shape, started = conn.info[id(self)].pop()
        seconds = time.perf_counter() - started
        self.seconds += seconds
        totals = self.by_shape.setdefault(shape, [0, 0.0])
        totals[0] += 1
        totals[1] += seconds

    def slowest(self, mails: int, n: int = 3) -> list[dict[str, Any]]:
        """The statements that took the most time, per mail."""
        ranked = sorted(self.by_shape.items(), key=lambda item: -item[1][1])[:n]
        return [{"ms_per_mail": round(1000 * seconds / mails, 2), "runs": int(count),
                 "statement": _short(shape)} for shape, (count, seconds) in ranked]


def _shape(statement: str) -> str:
    """The statement with its IN lists folded, so each query is explained once."""
    return re.sub(r"(?:\$\d+|\?)(?:::\w+)?(?:, (?:\$\d+|\?)(?:::\w+)?)+", "…", statement)


@dataclass
class Run:
    mails: int
    seconds: float
    sql_seconds: float
    outcomes: Counter[str]
    slowest: list[dict[str, Any]]

    @property
    def per_second(self) -> float:
        return self.mails / self.seconds


async def _import(services: Any, mails: list[tuple[str, bytes]], jobs: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    with parse_pool(jobs) as pool:
        decider = Decider(services.pipeline, parse_pool=pool)
        await decider.refresh_statistics()  # as `mailsvc import` and every decide loop do
        try:
            for role in ("bcc", "sales", "support"):
                refs = [MessageRef(f"{role}-{n}", lambda raw=raw: raw)
                        for n, (r, raw) in enumerate(mails) if r == role]
                if refs:
                    importer = Importer(services.pipeline,
                                        Envelope(None, (ADDRESS[role],), role, "file"),
                                        decider=decider)
                    counts.update(await importer.run(refs))
        finally:
            await decider.close()
    return counts


@asynccontextmanager
async def _services(url: str) -> Any:
    settings = load_settings(database_url=url, bcc_address=BCC, sales_address=SALES,
                             support_address=SUPPORT, amqp_url=None, log_level="WARNING",
                             _env_file=None)
    async with open_services(settings, migrate=False) as services:
        yield services


async def timed_run(store: Store, count: int, warmup: int, tag: str, jobs: int,
                    capture: Capture | None) -> Run:
    async with _services(store.url) as services:
        if warmup:
            await _import(services, mail_set(store.sizes, warmup, f"w{tag}"), jobs)
        timing = Capture()
        timing.attach(services.engine.sync_engine)
        if capture is not None:
            capture.attach(services.engine.sync_engine)
        mails = mail_set(store.sizes, count, tag)
        started = time.perf_counter()
        outcomes = await _import(services, mails, jobs)
        seconds = time.perf_counter() - started
    return Run(count, seconds, timing.seconds, outcomes, timing.slowest(count))


# --- asking the planner -----------------------------------------------------------------------

EXPLAINED = re.compile(r"^\s*(SELECT|UPDATE|DELETE|WITH)\b", re.IGNORECASE)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


async def explain_postgres(url: str, capture: Capture, growing: list[dict[str, Any]]
                           ) -> tuple[int, list[dict[str, str]]]:
    """Seq Scans of big tables in the plans of the captured statements (each noted with whether
    the planner has an index for it: the plan with ``enable_seqscan`` off); the plans of the
    ``growing`` statements are added to them."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        big = {r["relname"] for r in await conn.fetch(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND reltuples >= $1", BIG_TABLE)}

        async def plan(statement: str, parameters: Any) -> dict[str, Any]:
            raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {statement}", *(parameters or ()))
            loaded: dict[str, Any] = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
            return loaded

        findings = []
        explained = 0
        for shape, (statement, parameters) in capture.examples.items():
            if not EXPLAINED.match(statement):
                continue
            explained += 1
            scans = {node["Relation Name"] for node in _nodes(await plan(statement, parameters))
                     if node["Node Type"] == "Seq Scan" and node["Relation Name"] in big}
            still: set[str] = set()
            if scans:
                await conn.execute("SET enable_seqscan = off")
                forced = await plan(statement, parameters)
                await conn.execute("RESET enable_seqscan")
                still = {node["Relation Name"] for node in _nodes(forced)
                         if node["Node Type"] == "Seq Scan"}
            for table in sorted(scans):
                findings.append({"table": table, "statement": _short(statement), "index": (
                    "none usable" if table in still else "available, not chosen on cost")})
            for row in growing:
                if row["shape"] == shape:
                    row["plan"] = [f"{n['Node Type']} {n.get('Relation Name', '')} "
                                   f"{n.get('Index Name', '')}".strip()
                                   for n in _nodes(await plan(statement, parameters))]
        return explained, findings
    finally:
        await conn.close()


def explain_sqlite(url: str, capture: Capture, growing: list[dict[str, Any]]
                   ) -> tuple[int, list[dict[str, str]]]:
    """Full scans of big tables in the query plans of the captured statements; the plans of
    the ``growing`` statements are added to them."""
    conn = sqlite3.connect(url.split("///", 1)[1])
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        big = {n for n in names if conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]
               >= BIG_TABLE}
        findings = []
        explained = 0
        for shape, (statement, parameters) in capture.examples.items():
            if not EXPLAINED.match(statement):
                continue
            explained += 1
            details = [str(row[-1]) for row in
                       conn.execute(f"EXPLAIN QUERY PLAN {statement}", parameters or ())]
            for detail in details:
                match = re.match(r"SCAN (\w+)", detail)
                if match and match.group(1) in big:
                    findings.append({"table": match.group(1), "statement": _short(statement),
                                     "index": detail})
            for row in growing:
                if row["shape"] == shape:
                    row["plan"] = details
        return explained, findings
    finally:
        conn.close()


def growing_statements(small: Capture, large: Capture, mails: int) -> list[dict[str, Any]]:
    """Statements whose mean time per run on the large store is over GROWTH times the small
    store's (and over two milliseconds): what a plan check alone can miss (an index search that
    reads most of a table)."""
    rows = []
    for shape, (count, seconds) in large.by_shape.items():
        if shape not in small.by_shape:
            continue
        small_count, small_seconds = small.by_shape[shape]
        mean, small_mean = seconds / count, small_seconds / small_count
        if mean > max(GROWTH * small_mean, 0.002):
            rows.append({"shape": shape, "statement": _short(shape),
                         "small_ms": round(1000 * small_mean, 2), "large_ms": round(1000 * mean, 2),
                         "runs": int(count), "ms_per_mail": round(1000 * seconds / mails, 2)})
    return sorted(rows, key=lambda r: -r["large_ms"])


def _short(statement: str) -> str:
    return " ".join(_shape(statement).split())[:160]


# --- the benchmark ----------------------------------------------------------------------------

async def run_target(target: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    small_sizes = Sizes(args.small_contacts, args.small_accounts, args.small_emails)
    large_sizes = Sizes(args.contacts, args.accounts, args.emails)
    stores: list[Store] = []
    try:
        for label, sizes in (("small", small_sizes), ("large", large_sizes)):
            print(f"{target}: preparing the {label} store", flush=True, file=_err())
            stores.append(await prepare_postgres(label, sizes, not args.no_cache)
                          if target == "postgres" else
                          await prepare_sqlite(label, sizes, not args.no_cache, workdir,
                                               args.sqlite_analyze))
        captures = {"small": Capture(), "large": Capture()}
        runs: dict[str, list[Run]] = {"small": [], "large": []}
        for repeat in range(args.repeats):
            for store in stores:
                print(f"{target}: {store.label} store, run {repeat + 1}", flush=True, file=_err())
                runs[store.label].append(await timed_run(
                    store, args.mails, args.warmup, f"r{repeat}", args.jobs,
                    captures[store.label]))
        growing = growing_statements(captures["small"], captures["large"],
                                     args.repeats * args.mails)
        large = stores[1]
        explained, findings = (
            await explain_postgres(large.url, captures["large"], growing)
            if target == "postgres" else explain_sqlite(large.url, captures["large"], growing))
    finally:
        for store in stores:
            if store.drop:
                await drop_database(store.drop)
    rows = []
    for store in stores:
        best = max(runs[store.label], key=lambda r: r.per_second)
        rows.append({
            "target": target, "store": store.label, **store.sizes.key(),
            "seeded_s": None if store.seeded_s is None else round(store.seeded_s, 1),
            "mails": args.mails, "best_msg_s": round(best.per_second, 1),
            "median_msg_s": round(statistics.median(r.per_second for r in runs[store.label]), 1),
            "sql_ms_per_mail": round(1000 * best.sql_seconds / best.mails, 2),
            "outcomes": dict(sorted(best.outcomes.items())), "slowest": best.slowest,
        })
    rows[1]["ratio"] = round(rows[1]["best_msg_s"] / rows[0]["best_msg_s"], 3)
    for row in growing:
        del row["shape"]
    return {"target": target, "rows": rows, "statements_explained": explained,
            "seq_scans": findings, "growing": growing}


def _err() -> Any:
    import sys

    return sys.stderr


def _report(results: list[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        for row in result["rows"]:
            rows.append({**row, "size": f"{row['contacts']:,} / {row['accounts']:,} / "
                                        f"{row['emails']:,}",
                         "seeded": "cached" if row["seeded_s"] is None else row["seeded_s"],
                         "ratio": row.get("ratio", ""),
                         "target_ratio": f">= {TARGET_RATIO:.2f}" if "ratio" in row else ""})
    lines = [render_table([
        ("target", "store"), ("store", "size"), ("size", "contacts / accounts / e-mails"),
        ("seeded", "seed s"), ("mails", "mails"), ("best_msg_s", "mails/s (best)"),
        ("median_msg_s", "median"), ("sql_ms_per_mail", "SQL ms/mail"),
        ("ratio", "large/small"), ("target_ratio", "target")], rows), ""]
    for result in results:
        scans = result["seq_scans"]
        lines.append(f"{result['target']}: {result['statements_explained']} statements of the "
                     f"decide path explained on the large store; "
                     f"{len(scans)} sequential scan(s) of a table with >= {BIG_TABLE:,} rows"
                     + (":" if scans else ""))
        lines += [f"  {s['table']} (index: {s['index']}): {s['statement']}" for s in scans]
        growing = result["growing"]
        lines.append(f"{result['target']}: {len(growing)} statement(s) over {GROWTH:g} times "
                     "slower on the large store" + (":" if growing else ""))
        for row in growing:
            lines.append(f"  {row['small_ms']} -> {row['large_ms']} ms a run ({row['runs']} "
                         f"runs, {row['ms_per_mail']} ms per mail): {row['statement']}")
            lines += [f"      plan: {step}" for step in row.get("plan", ())]
    for result in results:
        for row in result["rows"]:
            lines.append(f"{row['target']} {row['store']}: outcomes {row['outcomes']}; "
                         "the slowest statements (ms per mail, runs):")
            lines += [f"  {s['ms_per_mail']:6.2f} {s['runs']:5d}  {s['statement']}"
                      for s in row["slowest"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000, help="large store (1000000)")
    parser.add_argument("--accounts", type=int, default=200_000, help="large store (200000)")
    parser.add_argument("--emails", type=int, default=500_000, help="large store (500000)")
    parser.add_argument("--small-contacts", type=int, default=1000)
    parser.add_argument("--small-accounts", type=int, default=200)
    parser.add_argument("--small-emails", type=int, default=500)
    parser.add_argument("--mails", type=int, default=2000, help="timed mails per run (2000)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed mails before each run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per store, alternating (3)")
    parser.add_argument("--jobs", type=int, default=1, help="parsing processes (1)")
    parser.add_argument("--targets", default="postgres,sqlite", help="postgres,sqlite")
    parser.add_argument("--no-cache", action="store_true", help="seed afresh, keep nothing")
    parser.add_argument("--drop-cache", action="store_true",
                        help="remove the cached stores and exit")
    parser.add_argument("--sqlite-analyze", action="store_true",
                        help="a full ANALYZE of the SQLite stores before the runs (mailsvc "
                             "itself samples: analysis_limit)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser.parse_args(argv)


async def main() -> None:
    args = parse_args()
    if args.drop_cache:
        for name in await drop_cache():
            print(f"dropped {name}")
        return
    # One log line per mail is what `mailsvc import` turns off too.
    logging.getLogger("mailsvc.ingest.pipeline").setLevel(logging.WARNING)
    results = []
    with tempfile.TemporaryDirectory(prefix="mailsvc-scale-") as tmp:
        for target in [t for t in args.targets.split(",") if t]:
            results.append(await run_target(target, args, Path(tmp)))
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"results": results, "load_average": load}, indent=2))
        return
    print(_report(results))
    print(f"\nload average (1 min) at the end: {load:.2f}; {os.cpu_count()} cores")


if __name__ == "__main__":
    asyncio.run(main())
