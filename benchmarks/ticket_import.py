"""`mailsvc import` of a helpdesk's day, and `mailsvc ingest` of one piped mail.

The import set: N new tickets (first mails from unknown senders to the support address) followed by
N follow-ups that carry their ticket's ID in the subject (``[TCK-n]``) and thread headers, each
about 4 KB, as .eml files in name order. ``mailsvc import`` runs on it as an operator would (its own
process, a fresh database migrated before the timed run), once with one parsing process and once
with the default (one per core): the one-process run is the baseline measured in the same run.
Afterwards the store is checked: N tickets, 2N e-mails, every follow-up linked to its own ticket.

``mailsvc ingest`` is what a Postfix pipe runs for every mail: one process per mail. Its wall time
is measured R times (median and worst) beside a running decide worker (the mail is handed over:
accepted by the process, decided by the worker, the decision printed) and alone (the process
decides itself), beside a process that only imports SQLAlchemy and mail-parser, the floor of any
Python process that parses and stores mail.

    python benchmarks/ticket_import.py                 # 1,000 + 1,000 mails, SQLite and PostgreSQL
    python benchmarks/ticket_import.py --tickets 50000 --targets sqlite   # 100,000 mails: peak RSS
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import create_database, drop_database, render_table

SUPPORT = "support@crm.example"
ENV = {
    "MAILSVC_BCC_ADDRESS": "bcc@crm.example",
    "MAILSVC_SALES_ADDRESS": "sales@crm.example",
    "MAILSVC_SUPPORT_ADDRESS": SUPPORT,
    "MAILSVC_LOG_LEVEL": "WARNING",
}
FILLER = (
    "Our printer in the second floor office stops after a few pages and shows error E-204. "
    "We restarted it and replaced the toner, the problem stays. Please advise.\n"
)


def mail(n: int, follow_up: bool) -> bytes:
    """One ~4 KB mail: customer n's first mail, or their follow-up naming ticket n."""
    sender = f"Customer {n} <customer{n}@client{n % 997}.example>"
    first_id = f"<first-{n}@client{n % 997}.example>"
    lines = [
        f"From: {sender}",
        f"To: {SUPPORT}",
        f"Date: Mon, 30 Nov 2026 {8 + n % 10:02d}:{n % 60:02d}:00 +0100",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ]
    if follow_up:
        lines += [f"Subject: Re: [TCK-{n}] Printer error E-204",
                  f"Message-ID: <reply-{n}@client{n % 997}.example>",
                  f"In-Reply-To: {first_id}", f"References: {first_id}"]
    else:
        lines += ["Subject: Printer error E-204", f"Message-ID: {first_id}"]
    body = "Hello support,\n\n" + FILLER * 24 + "\nRegards\nCustomer\n"
    return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n")).encode()


def build_set(folder: Path, tickets: int) -> int:
    folder.mkdir()
    width = len(str(2 * tickets))
    for n in range(1, tickets + 1):
        (folder / f"{n:0{width}d}-new.eml").write_bytes(mail(n, follow_up=False))
        (folder / f"{tickets + n:0{width}d}-reply.eml").write_bytes(mail(n, follow_up=True))
    return 2 * tickets


def mailsvc(url: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "mailsvc", *args], input=stdin,
                          env={**os.environ, **ENV, "MAILSVC_DATABASE_URL": url},
                          capture_output=True, check=False)


def timed_import(url: str, folder: Path, jobs: int | None) -> tuple[float, int]:
    """Seconds and the importer's own peak RSS (KiB; its parse processes are not counted)."""
    command = [sys.executable, "-m", "mailsvc", "import", "--quiet", "--to", SUPPORT, str(folder)]
    if jobs is not None:
        command += ["--jobs", str(jobs)]
    started = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, **ENV, "MAILSVC_DATABASE_URL": url},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        error = process.stderr.read().decode() if process.stderr else ""
        raise SystemExit(f"mailsvc import failed:\n{error}")
    return seconds, usage.ru_maxrss


async def check_store(url: str, tickets: int) -> dict[str, int]:
    """Tickets, e-mails and follow-ups linked to their own ticket, read back from the store."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            count = {
                "tickets": await connection.scalar(text("SELECT count(*) FROM tickets")),
                "emails": await connection.scalar(text("SELECT count(*) FROM emails")),
                "follow_ups_on_their_ticket": await connection.scalar(text(
                    "SELECT count(*) FROM emails e JOIN email_links l ON l.email_id = e.id "
                    "JOIN emails f ON f.message_id = replace(e.message_id, 'reply-', 'first-') "
                    "JOIN email_links fl ON fl.email_id = f.id AND fl.target_type = 'ticket' "
                    "WHERE e.message_id LIKE 'reply-%' AND l.target_type = 'ticket' "
                    "AND l.target_id = fl.target_id"
                )),
            }
    finally:
        await engine.dispose()
    return {k: int(v or 0) for k, v in count.items()}


def import_rows(target: str, url: str, folder: Path, mails: int, tickets: int,
                workdir: Path) -> list[dict[str, Any]]:
    rows = []
    cores = os.cpu_count() or 1
    for jobs, label in ((1, "1 parsing process (baseline)"), (None, f"default ({cores} cores)")):
        fresh = url
        name = None
        if target == "postgres":
            name, fresh = asyncio.run(create_database())
        else:
            fresh = f"sqlite+aiosqlite:///{workdir / f'import-{jobs}.db'}"
        try:
            migrated = mailsvc(fresh, "db", "upgrade")
            if migrated.returncode:
                raise SystemExit(migrated.stderr.decode())
            seconds, peak = timed_import(fresh, folder, jobs)
            checked = asyncio.run(check_store(fresh, tickets))
        finally:
            if name:
                asyncio.run(drop_database(name))
        rows.append({"work": f"import, {target}, {label}", "mails": mails,
                     "msg_s": round(mails / seconds), "seconds": round(seconds, 2),
                     "peak_rss_mib": round(peak / 1024), **checked})
    return rows


def _timed_ingests(url: str, repeats: int, first: int) -> tuple[list[float], list[str]]:
    walls, outcomes = [], []
    for n in range(repeats):
        started = time.perf_counter()
        result = mailsvc(url, "ingest", "--to", SUPPORT, "-", stdin=mail(first + n, False))
        walls.append(time.perf_counter() - started)
        if result.returncode:
            raise SystemExit(result.stderr.decode())
        outcomes.append(json.loads(result.stdout)["outcome"])
    return walls, outcomes


def _decide_lock_held(url: str) -> bool:
    from mailsvc.crmstore.intake_writer import decide_lock_path, held_elsewhere, sqlite_path

    path = sqlite_path(url)
    return path is not None and held_elsewhere(decide_lock_path(path))


def ingest_rows(repeats: int, workdir: Path) -> list[dict[str, Any]]:
    """Wall time of `mailsvc ingest` of one mail: beside a running decide worker (the mail is
    handed over: accepted here, decided there, the decision printed) and alone (the process
    decides itself); the floor is a process importing only SQLAlchemy and mail-parser."""
    url = f"sqlite+aiosqlite:///{workdir / 'ingest.db'}"
    migrated = mailsvc(url, "db", "upgrade")
    if migrated.returncode:
        raise SystemExit(migrated.stderr.decode())
    alone, _ = _timed_ingests(url, repeats, 900_000)
    worker = subprocess.Popen([sys.executable, "-m", "mailsvc", "decide", "--workers", "1"],
                              env={**os.environ, **ENV, "MAILSVC_DATABASE_URL": url},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _decide_lock_held(url):
            if time.monotonic() > deadline:
                raise SystemExit("the decide worker did not start")
            time.sleep(0.2)
        handed, outcomes = _timed_ingests(url, repeats, 950_000)
    finally:
        worker.terminate()
        worker.wait(60)
    floor = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import sqlalchemy.ext.asyncio, mailparser"],
                       check=True)
        floor.append(time.perf_counter() - started)
    decided = sum(outcome != "accepted" for outcome in outcomes)
    return [
        {"work": "ingest beside a running decide worker (wall s)",
         "median": round(statistics.median(handed), 3), "worst": round(max(handed), 3),
         "decided": f"{decided}/{repeats} decisions printed"},
        {"work": "ingest alone, deciding itself (wall s)",
         "median": round(statistics.median(alone), 3), "worst": round(max(alone), 3),
         "decided": ""},
        {"work": "floor: python importing SQLAlchemy + mail-parser (wall s)",
         "median": round(statistics.median(floor), 3), "worst": round(max(floor), 3),
         "decided": ""},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=1000, help="new tickets (and as many "
                        "follow-ups) (1000)")
    parser.add_argument("--targets", default="sqlite,postgres", help="sqlite,postgres")
    parser.add_argument("--ingest-repeats", type=int, default=10, help="mailsvc ingest runs (10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args()
    # As an installed package has them (pip compiles on install): the timed processes then read
    # bytecode, not source, even where PYTHONDONTWRITEBYTECODE keeps them from writing it.
    import compileall

    import mailsvc

    compileall.compile_dir(Path(mailsvc.__file__).parent, quiet=1)
    imports: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mailsvc-ticket-bench-") as tmp:
        workdir = Path(tmp)
        folder = workdir / "mail"
        mails = build_set(folder, args.tickets)
        for target in [t for t in args.targets.split(",") if t]:
            imports += import_rows(target, "", folder, mails, args.tickets, workdir)
        ingest = ingest_rows(args.ingest_repeats, workdir) if args.ingest_repeats else []
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"import": imports, "ingest": ingest, "load_average": load}, indent=2))
        return
    print(render_table([("work", "work"), ("mails", "mails"), ("msg_s", "msg/s"),
                        ("seconds", "s"), ("peak_rss_mib", "peak RSS MiB"),
                        ("tickets", "tickets"), ("emails", "e-mails"),
                        ("follow_ups_on_their_ticket", "follow-ups on their ticket")], imports))
    if ingest:
        print()
        print(render_table([("work", "work"), ("median", "median"), ("worst", "worst"),
                            ("decided", "")], ingest))
    print(f"\nload average (1 min) at the end: {load:.2f}")


if __name__ == "__main__":
    main()
