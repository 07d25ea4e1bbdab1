"""Triage page response times with many stored e-mails: a real `mailsvc serve`, a signed-in client.

For each target (a temporary SQLite file; with ``--targets sqlite,postgres`` also a temporary
PostgreSQL database) two stores are prepared side by side: the baseline with ``--baseline`` mails
(1,000) and the large one with ``--emails`` (100,000). Each is migrated and given the demo rows
(`mailsvc seed-demo`), then filled by a bulk loader (SQLAlchemy Core ``insert()`` with lists of
dicts, a few thousand rows a statement, one transaction per table): more users, opportunities,
inbox leads, tickets, a few quarantined mails, the e-mails with a realistic mix of roles,
directions, outcomes, rules and notes, their links (contact, account, owner, opportunity, ticket,
inbox lead) and their (relayed) outbox events. Neither the API nor the pipeline is used to fill.

Then `python -m mailsvc serve` runs as a subprocess on free ports with an API key; the client
signs in as a browser does (GET /ui/login, POST the key form, keep the session cookie) and, for
each page, makes ``--warmup`` untimed then ``--requests`` timed sequential GETs. Printed: p50,
p95, p99 and max milliseconds per page and store, and the peak RSS of the process serving the API.

    python benchmarks/triage_pages.py                                   # SQLite, 100,000 mails
    python benchmarks/triage_pages.py --emails 5000 --requests 10       # quick
    python benchmarks/triage_pages.py --targets sqlite,postgres --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from common import create_database, drop_database, render_table
from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from mailsvc.crmstore.base import Base
from mailsvc.crmstore.models import (
    Email,
    EmailLink,
    InboxLead,
    Opportunity,
    OutboxEvent,
    QuarantinedMail,
    Ticket,
    User,
)

BCC = "bcc@crm.example"
SALES = "sales@crm.example"
SUPPORT = "support@crm.example"
KEY = "triage-bench-key"
TARGETS = ("sqlite", "postgres")
CHUNK = 2000
TARGET_MS = 100.0
# The latest mail is this old; the rest go back one year, in arrival (id) order.
NOW = datetime.now(UTC).replace(microsecond=0)
SPAN = timedelta(days=365)
WEEK_START = (NOW - SPAN / 2).date()  # the "by date" filter: one week in the middle
SEARCH_SUBJECT = "quarterly review"  # in one subject out of 500
SEARCH_SENDER = "globex.example"  # a customer domain with many senders
EXTRA_USERS = (("lena.lead@mailsvc.example", "Lena Lead", "sales"),
               ("mark.closer@mailsvc.example", "Mark Closer", "sales"),
               ("ola.admin@mailsvc.example", "Ola Admin", "admin"),
               ("tom.helpdesk@mailsvc.example", "Tom Helpdesk", "support"))
DOMAINS = ("acme.example", "globex.example", "initech.example", "umbrella.example",
           "hooli.example", "stark.example", "wayne.example", "gmail.com", "web.de", "gmx.de")
FIRST = ("anna", "ben", "carla", "dora", "emil", "fritz", "greta", "hans", "ida", "jonas",
         "karl", "lisa", "max", "nina", "otto", "paula")
SUBJECTS = ("Re: Your quote [OPP-{opp}]", "Order confirmation {n}", "Meeting notes {n}",
            "Question about delivery", "Invoice {n}", "Re: Login fails after update [TCK-{tck}]",
            "Fwd: pricing for 20 seats", "Demo request", "Out of office: {n}",
            "Delivery Status Notification (Failure)", "Re: Contract draft v{n}")


# --- the bulk loader ----------------------------------------------------------------------------

@dataclass
class Ids:
    """The rows the pages refer to: filled in while loading."""

    users: list[int] = field(default_factory=list)
    opportunities: list[int] = field(default_factory=list)
    tickets: list[int] = field(default_factory=list)
    leads: list[int] = field(default_factory=list)
    linked_mail: int = 0
    searched_message_id: str = ""


def _chunks(rows: Iterator[dict[str, Any]], size: int = CHUNK) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


async def _next_id(conn: AsyncConnection, table: Table) -> int:
    column = table.c.seq if table.name == "outbox" else table.c.id
    return int(await conn.scalar(select(func.coalesce(func.max(column), 0))) or 0) + 1


async def _load(conn: AsyncConnection, table: Table, rows: Iterator[dict[str, Any]]) -> None:
    for batch in _chunks(rows):
        await conn.execute(insert(table), batch)


def _mail(rng: random.Random, i: int, sender: str, name: str, subject: str, to: str,
          received: datetime, message_id: str) -> tuple[bytes, str]:
    body = ("Hello,\r\n\r\nthank you for your message. "
            + "Here are the details we talked about on the phone. " * rng.randint(4, 40)
            + f"\r\n\r\nKind regards\r\n{name}\r\n")
    head = (f"From: {name} <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{message_id}>\r\nDate: {received:%a, %d %b %Y %H:%M:%S +0000}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    return (head + body).encode(), body


async def fill(url: str, emails: int, seed: int = 7) -> Ids:
    """Bulk-load ``emails`` mails and the records they link to into a migrated, demo-seeded
    store; one transaction per table."""
    rng = random.Random(seed)
    ids = Ids()
    engine = create_async_engine(url)
    tables = {m.__tablename__: Base.metadata.tables[m.__tablename__]
              for m in (User, Opportunity, Ticket, InboxLead, QuarantinedMail, Email, EmailLink,
                        OutboxEvent)}
    try:
        async with engine.begin() as conn:
            await _load(conn, tables["users"], iter([
                {"email": e, "name": n, "role": r, "active": True} for e, n, r in EXTRA_USERS
                if await conn.scalar(select(User.id).where(User.email == e)) is None]))
            ids.users = list(await conn.scalars(select(User.id).order_by(User.id)))
        count_opps, count_tickets, count_leads = (max(10, emails // n) for n in (200, 50, 40))
        async with engine.begin() as conn:
            first = await _next_id(conn, tables["opportunities"])
            await _load(conn, tables["opportunities"], ({
                "id": first + n, "title": f"Opportunity {first + n}: {rng.randint(5, 200)} seats",
                "kind": rng.choice(("lead", "deal")), "status": "open", "probability": 20,
                "owner_id": rng.choice(ids.users), "account_id": rng.choice((1, 2)),
            } for n in range(count_opps)))
            ids.opportunities = list(await conn.scalars(select(Opportunity.id)))
        async with engine.begin() as conn:
            first = await _next_id(conn, tables["tickets"])
            await _load(conn, tables["tickets"], ({
                "id": first + n, "subject": f"Ticket {first + n}: login fails after update",
                "description": "Reported by mail.",
                "status": rng.choice(("open", "in_progress", "resolved", "closed")),
                "owner_id": rng.choice(ids.users), "requester_email": f"user{n}@globex.example",
                "created_at": NOW - SPAN * (1 - n / count_tickets),
            } for n in range(count_tickets)))
            ids.tickets = list(await conn.scalars(select(Ticket.id)))
        async with engine.begin() as conn:
            first = await _next_id(conn, tables["inbox_leads"])
            await _load(conn, tables["inbox_leads"], ({
                "id": first + n, "title": f"Enquiry {first + n}: 20 seats",
                "status": rng.choice(("new", "contacted", "qualifying", "done")),
                "owner_id": rng.choice(ids.users), "company": f"Prospect {n} GmbH",
                "first_name": rng.choice(FIRST).title(), "last_name": "Prospect",
                "email": f"lead{n}@{rng.choice(DOMAINS)}",
                "created_at": NOW - SPAN * (1 - n / count_leads),
            } for n in range(count_leads)))
            ids.leads = list(await conn.scalars(select(InboxLead.id)))
        async with engine.begin() as conn:
            await _load(conn, tables["quarantine"], ({
                "dedup_key": f"bench-quarantine-{n}-{seed}", "reason": "unparseable MIME",
                "raw": b"From: broken\r\n\r\n" + b"x" * 2000, "size": 2016,
                "envelope_from": "broken@spam.example", "envelope_to": [BCC],
                "intake_role": "bcc", "source": "smtp", "received_at": NOW - timedelta(days=n),
            } for n in range(25)))
        async with engine.begin() as conn:
            ids.linked_mail, ids.searched_message_id = await _fill_emails(
                conn, tables["emails"], tables["email_links"], tables["outbox"], emails, ids, rng)
        if engine.dialect.name == "postgresql":
            async with engine.begin() as conn:  # explicit ids: move the sequences past them
                for name, column in (("users", "id"), ("opportunities", "id"),
                                     ("tickets", "id"), ("inbox_leads", "id"),
                                     ("emails", "id"), ("email_links", "id"),
                                     ("outbox", "seq")):
                    await conn.execute(text(
                        f"SELECT setval(pg_get_serial_sequence('{name}', '{column}'), "
                        f"(SELECT max({column}) FROM {name}))"))
            async with engine.connect() as conn:  # what autovacuum would do soon after
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text("ANALYZE"))
    finally:
        await engine.dispose()
    return ids


async def _fill_emails(conn: AsyncConnection, emails_table: Table, links_table: Table,
                       outbox_table: Table, count: int, ids: Ids, rng: random.Random
                       ) -> tuple[int, str]:
    first = await _next_id(conn, emails_table)
    link_id = await _next_id(conn, links_table)
    seq = await _next_id(conn, outbox_table)
    senders = [(f"{rng.choice(FIRST)}.{n}@{rng.choice(DOMAINS)}", f"{rng.choice(FIRST).title()}")
               for n in range(max(50, count // 50))]
    searched = first + count // 2 + 17
    linked_mail = 0
    message_id = ""
    for start in range(0, count, CHUNK):
        mails: list[dict[str, Any]] = []
        links: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for n in range(start, min(start + CHUNK, count)):
            email_id = first + n
            received = NOW - SPAN * (1 - n / count) + timedelta(seconds=rng.randint(0, 59))
            row, targets = _email_row(rng, email_id, received, senders, ids)
            if email_id == searched:
                message_id = row["message_id"]
            mails.append(row)
            for target_type, target_id, rule in targets:
                links.append({"id": link_id, "email_id": email_id, "target_type": target_type,
                              "target_id": target_id, "rule": rule, "created_at": received})
                link_id += 1
            if not linked_mail and n >= count // 2 and len(targets) >= 3:
                linked_mail = email_id
            events.append({"seq": seq, "id": f"00000000-0000-4000-8000-{seq:012d}",
                           "type": "email.received", "subject": f"email/{email_id}",
                           "data": {"email_id": email_id, "outcome": row["outcome"]},
                           "created_at": received, "sent_at": received, "attempts": 1})
            seq += 1
        await conn.execute(insert(emails_table), mails)
        for batch in _chunks(iter(links)):
            await conn.execute(insert(links_table), batch)
        await conn.execute(insert(outbox_table), events)
    # A few events the relay has not sent yet (the health page counts them).
    await conn.execute(insert(outbox_table), [
        {"seq": seq + n, "id": f"00000000-0000-4000-9000-{seq + n:012d}", "type": "email.linked",
         "subject": None, "data": {}, "created_at": NOW, "sent_at": None, "attempts": 0}
        for n in range(12)])
    return linked_mail or first, message_id


def _email_row(rng: random.Random, email_id: int, received: datetime,
               senders: list[tuple[str, str]], ids: Ids
               ) -> tuple[dict[str, Any], list[tuple[str, int, str]]]:
    """One e-mail and its links, drawn from a mix like a small sales and support team's."""
    role = rng.choices(("bcc", "sales", "support"), (60, 25, 15))[0]
    sender, name = rng.choice(senders)
    owner = rng.choice(ids.users)
    direction = "incoming"
    automatic = False
    notes: list[str] = []
    links: list[tuple[str, int, str]] = []
    draw = rng.random()
    if role == "bcc" and rng.random() < 0.5:  # a colleague's mail to a customer, BCC'd
        direction = "outgoing"
    if draw < 0.08:  # auto-replies, bounces, lists: machine mail, no person needed
        rule = rng.choice(("auto_reply", "bounce", "list", "loop"))
        outcome, automatic = "ignored", True
    elif draw < 0.11:
        rule, outcome, notes = "no_match", "ignored", ["no_match"]
    elif draw < 0.13:
        rule, outcome, notes = "sender_unverified", "ignored", ["sender_unverified"]
    elif draw < 0.16:
        rule, outcome = "internal", "ignored"
        notes = ["no_counterparty"]
        links.append(("owner", owner, "internal"))
    elif draw < 0.18:  # a number that names nothing
        rule, outcome, notes = "subject_id", "linked", [f"unknown_id:OPP-{900000 + email_id}"]
        links += [("contact", rng.choice((1, 2)), "address"), ("owner", owner, "address")]
    elif draw < 0.30:
        rule, outcome = "subject_id", "linked"
        links += [("opportunity", rng.choice(ids.opportunities), "subject_id"),
                  ("contact", rng.choice((1, 2)), "subject_id"), ("owner", owner, "subject_id")]
    elif draw < 0.38:
        rule, outcome = "thread", "linked"
        links += [("opportunity", rng.choice(ids.opportunities), "thread"),
                  ("owner", owner, "thread")]
    elif role == "support" or draw < 0.45:
        rule = rng.choice(("new_ticket", "subject_id", "thread"))
        outcome = "ticket_created" if rule == "new_ticket" else "ticket_updated"
        links += [("ticket", rng.choice(ids.tickets), rule), ("owner", owner, rule)]
    elif role == "sales" and draw < 0.60:
        rule = rng.choice(("new_lead", "open_lead"))
        outcome = "lead_created" if rule == "new_lead" else "linked"
        links.append(("inbox_lead", rng.choice(ids.leads), rule))
    elif draw < 0.85:  # a known contact: linked to the single open record, or only to them
        rule, outcome = ("single_open_record", "linked") if draw < 0.75 else ("address", "linked")
        if rule == "single_open_record":
            links.append(("opportunity", rng.choice(ids.opportunities), rule))
        elif rng.random() < 0.3:
            notes = [rng.choice(("several_open_records", "ambiguous:contact", "new_person"))]
        links += [("contact", rng.choice((1, 2)), "address"), ("account", rng.choice((1, 2)),
                  "address"), ("owner", owner, "address")]
    else:
        rule, outcome, notes = "no_match", "ignored", ["no_match"]
    number = rng.randint(1000, 99999)
    if email_id % 500 == 0:
        subject = f"Quarterly review {number}"
    else:
        subject = rng.choice(SUBJECTS).format(
            n=number, opp=rng.choice(ids.opportunities), tck=rng.choice(ids.tickets))
    message_id = f"{email_id:08d}.{rng.getrandbits(48):012x}@{sender.split('@')[1]}"
    to = {"bcc": BCC, "sales": SALES, "support": SUPPORT}[role]
    raw, body = _mail(rng, email_id, sender, name, subject, to, received, message_id)
    return {
        "id": email_id, "dedup_key": f"mid:{message_id}", "message_id": message_id,
        "subject": subject, "from_email": sender, "from_name": name,
        "to": [{"name": "", "email": to}], "cc": [], "reply_to": [], "sent_at": received,
        "in_reply_to": [], "references": [],
        "headers": [["From", f"{name} <{sender}>"], ["To", to], ["Subject", subject],
                    ["Message-ID", f"<{message_id}>"]],
        "text_body": body, "html_body": "", "reply_text": body[:200], "raw": raw,
        "size": len(raw), "envelope_from": sender, "envelope_to": [to], "intake_role": role,
        "source": "smtp", "kind": "machine" if automatic else "human", "direction": direction,
        "automatic": automatic, "outcome": outcome, "rule": rule, "notes": notes,
        "received_at": received, "content_removed_at": None,
    }, links


# --- the server and the client ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mailsvc_env(database_url: str, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "MAILSVC_DATABASE_URL": database_url,
            "MAILSVC_BCC_ADDRESS": BCC, "MAILSVC_SALES_ADDRESS": SALES,
            "MAILSVC_SUPPORT_ADDRESS": SUPPORT, "MAILSVC_LOG_LEVEL": "WARNING", **extra}


def seed_demo(database_url: str) -> None:
    """Migrate the store and add the demo users, accounts, contacts, opportunity and ticket."""
    done = subprocess.run([sys.executable, "-m", "mailsvc", "seed-demo"],
                          env=mailsvc_env(database_url), capture_output=True, check=False)
    if done.returncode:
        raise SystemExit(f"mailsvc seed-demo failed: {done.stderr.decode()}")


def wait_until_listening(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"mailsvc serve exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout}s")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _status_kb(pid: int, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def api_process(pid: int) -> int:
    """The process serving the API: the supervisor's ``serve --worker-index 0`` child, or the
    serve process itself when it runs everything alone."""
    for child in _children(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--worker-index" in argv and argv[argv.index(b"--worker-index") + 1] == b"0":
            return child
    return pid


def sign_in(client: httpx.Client) -> None:
    """As a browser does: open /ui/, get sent to the sign-in form, post the key, follow the
    redirect back. The session cookie is ``Secure``; browsers send it to http://127.0.0.1 (a
    trustworthy origin), httpx sends Secure cookies over https only, so it is kept without the
    flag here."""
    page = client.get("/ui/", follow_redirects=True)
    assert page.status_code == 200 and page.url.path == "/ui/login", page.url
    assert 'name="key"' in page.text
    response = client.post("/ui/login", data={"key": KEY, "next": "/ui/inbox"})
    assert response.status_code == 303, response.status_code
    cookie = response.cookies.get("mailsvc_ui")
    assert cookie, response.headers
    client.cookies.set("mailsvc_ui", cookie, domain="127.0.0.1", path="/ui")
    inbox = client.get(response.headers["location"])
    assert inbox.status_code == 200 and 'name="csrf"' in inbox.text, inbox.status_code


def pages(ids: Ids) -> list[tuple[str, str]]:
    until = WEEK_START + timedelta(days=7)
    return [
        ("inbox (needs attention, default)", "/ui/inbox"),
        ("inbox all", "/ui/inbox?view=all"),
        ("inbox all, page 3", "/ui/inbox?view=all&offset=100"),
        ("inbox role=support", "/ui/inbox?view=all&role=support"),
        ("inbox attention+role=sales", "/ui/inbox?view=attention&role=sales"),
        ("inbox owner", f"/ui/inbox?view=all&owner={ids.users[-1]}"),
        ("inbox attention+owner", f"/ui/inbox?view=attention&owner={ids.users[0]}"),
        ("inbox one week", f"/ui/inbox?view=all&since={WEEK_START}&until={until}"),
        ("search sender domain", "/ui/inbox?" + urlencode({"view": "all", "q": SEARCH_SENDER})),
        ("search subject", "/ui/inbox?" + urlencode({"view": "all", "q": SEARCH_SUBJECT})),
        ("search Message-ID", "/ui/inbox?" + urlencode({"view": "all",
                                                         "q": ids.searched_message_id})),
        ("mail", f"/ui/mail/{ids.linked_mail}"),
        ("inbox leads", "/ui/leads"),
        ("tickets", "/ui/tickets"),
        ("quarantine", "/ui/quarantine"),
        ("health", "/ui/health"),
    ]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def measure(database_url: str, ids: Ids, requests: int, warmup: int) -> dict[str, Any]:
    api_port, smtp_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mailsvc", "serve"], stdout=subprocess.DEVNULL,
        env=mailsvc_env(database_url, MAILSVC_API_PORT=str(api_port),
                        MAILSVC_SMTP_PORT=str(smtp_port), MAILSVC_API_KEYS=KEY))
    results: dict[str, Any] = {"pages": {}}
    try:
        wait_until_listening(api_port, process, timeout=120)
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=60) as client:
            sign_in(client)
            for name, path in pages(ids):
                for _ in range(warmup):
                    client.get(path).raise_for_status()
                times = []
                size = 0
                for _ in range(requests):
                    started = time.perf_counter()
                    response = client.get(path)
                    times.append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
                    if response.url.path == "/ui/login":
                        raise SystemExit(f"{path}: signed out")
                    size = len(response.content)
                results["pages"][name] = {
                    "path": path, "p50": statistics.median(times),
                    "p95": percentile(times, 95), "p99": percentile(times, 99),
                    "max": max(times), "bytes": size,
                    "rows": response.text.count("<tr data-email-id="),
                }
        results["api_peak_rss_mb"] = _status_kb(api_process(process.pid), "VmHWM") / 1024
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return results


# --- the run ------------------------------------------------------------------------------------

async def prepare(target: str, emails: int, workdir: Path) -> tuple[str, str | None, Ids, float]:
    """A new store with ``emails`` mails: its URL, the PostgreSQL database name, the ids, and
    the seconds the bulk load took."""
    name = None
    if target == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / f'triage-{emails}.db'}"
    else:
        name, url = await create_database()
    await asyncio.to_thread(seed_demo, url)
    started = time.perf_counter()
    ids = await fill(url, emails)
    return url, name, ids, time.perf_counter() - started


async def run_target(target: str, sizes: list[int], args: argparse.Namespace,
                     workdir: Path) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        print(f"{target}: loading {size:,} e-mails ...", file=sys.stderr, flush=True)
        url, name, ids, seconds = await prepare(target, size, workdir)
        try:
            print(f"{target}: {size:,} loaded in {seconds:.0f}s; measuring ...", file=sys.stderr,
                  flush=True)
            measured = await asyncio.to_thread(measure, url, ids, args.requests, args.warmup)
        finally:
            if name:
                await drop_database(name)
        rows.append({"target": target, "emails": size, "load_s": round(seconds, 1),
                     **measured})
    return rows


def table(results: list[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        for page, figures in result["pages"].items():
            rows.append({
                "target": result["target"], "emails": f"{result['emails']:,}", "page": page,
                **{k: f"{figures[k]:.1f}" for k in ("p50", "p95", "p99", "max")},
                "rows": figures["rows"] or "",
                "slow": "SLOW" if figures["p50"] > TARGET_MS else "",
            })
        rows.append({"target": result["target"], "emails": f"{result['emails']:,}",
                     "page": "(API process peak RSS MB)", "p50": f"{result['api_peak_rss_mb']:.0f}",
                     "p95": None, "p99": None, "max": None, "rows": None, "slow": None})
    return render_table((("target", "target"), ("emails", "e-mails"), ("page", "page"),
                         ("p50", "p50 ms"), ("p95", "p95 ms"), ("p99", "p99 ms"),
                         ("max", "max ms"), ("rows", "mails shown"), ("slow", "")), rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=100_000, help="mails in the store (100000)")
    parser.add_argument("--baseline", type=int, default=1000,
                        help="mails in the baseline store (1000; 0: empty)")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per page (50)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests first (3)")
    parser.add_argument("--targets", default="sqlite",
                        help=f"comma-separated, of {','.join(TARGETS)} (sqlite)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


async def main() -> None:
    args = parse_args()
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise SystemExit(f"unknown targets: {', '.join(sorted(unknown))}")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="triage-bench-") as workdir:
        for target in targets:
            results += await run_target(target, [args.baseline, args.emails], args, Path(workdir))
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"requests": args.requests, "warmup": args.warmup, "cores": os.cpu_count(),
                          "loadavg": load, "results": results}, indent=2))
    else:
        print(table(results))
        print(f"\n{args.requests} timed requests per page after {args.warmup} warm-up; "
              f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    asyncio.run(main())
