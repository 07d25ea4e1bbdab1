"""Where the time goes: CPU profiles of the accept path and of the decide path, by area.

The accept path is `mailsvc serve`'s SMTP intake with no decide worker: 20 connections of a real
SMTP client (another process) send 4 KB mails; the serving process runs under cProfile with CPU
time (the client is not counted). The decide path is the decide loop of one process deciding the
same number of accepted mails (new tickets and follow-ups by ID, as in ticket_import.py), parsing
in the process itself so that every step is in the profile. Each profile's own time (tottime) is
summed by the package the function belongs to, and the table prints CPU milliseconds per mail:

    python benchmarks/profile_paths.py                 # 3,000 mails each, SQLite
    python benchmarks/profile_paths.py --mails 1000 --json

cProfile adds its own overhead (roughly doubling CPU time), so compare areas with each other and
runs with runs, not with the benchmarks' wall-clock figures. It profiles the event loop's thread
only: on SQLite the intake writer's own thread (the accept commit) is not in the accept column.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import multiprocessing
import pstats
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import render_table
from smtp_throughput import AUTHSERV, BCC, build_mail, generate_load
from ticket_import import SUPPORT, mail

# First match wins: (area, fragment of the function's file path).
AREAS = (
    ("DATA reading (ingest/smtpdata.py)", "mailsvc/ingest/smtpdata"),
    ("SMTP protocol (aiosmtpd)", "aiosmtpd/"),
    ("intake writer (crmstore/intake_writer.py)", "mailsvc/crmstore/intake_writer"),
    ("mail reading: dedup key, parse (ingest/parse.py)", "mailsvc/ingest/parse.py"),
    ("parsing (mail-parser, email package)", "mailparser/"),
    ("reply splitting (mail-parser-reply)", "mailparser_reply"),
    ("reply splitting (mail-parser-reply)", "mailsvc/linking/newest_reply"),
    ("linking rules (mailsvc/linking)", "mailsvc/linking/"),
    ("SQLAlchemy (ORM, Core, pool)", "sqlalchemy/"),
    ("database drivers (sqlite3, aiosqlite, asyncpg)", "aiosqlite"),
    ("database drivers (sqlite3, aiosqlite, asyncpg)", "sqlite3"),
    ("database drivers (sqlite3, aiosqlite, asyncpg)", "asyncpg"),
    ("mailsvc, other", "mailsvc/"),
    ("stdlib email (headers, MIME)", "/email/"),
    ("asyncio and sockets", "asyncio/"),
    ("asyncio and sockets", "selectors"),
    ("asyncio and sockets", "socket"),
    ("regular expressions", "re/"),
    ("regular expressions", "re.Pattern"),
    ("database drivers (sqlite3, aiosqlite, asyncpg)", "_sqlite3"),
    ("SQLAlchemy (ORM, Core, pool)", "greenlet"),
    ("asyncio and sockets", "select.epoll"),
    ("asyncio and sockets", "_socket"),
    ("asyncio and sockets", "_asyncio"),
    ("asyncio and sockets", "_queue"),
    ("asyncio and sockets", "_thread"),
    ("parsing (mail-parser, email package)", "_codecs"),
)


def _area(where: str) -> str:
    return next((name for name, fragment in AREAS if fragment in where), "other")


def by_area(stats: pstats.Stats) -> dict[str, float]:
    """Own CPU seconds summed by area. A built-in (list.append, re.Pattern.search, a socket's
    send...) counts for the area of the caller that spent most time in it."""
    totals: dict[str, float] = defaultdict(float)
    entries = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, function), (_cc, _nc, tottime, _ct, callers) in entries.items():
        where = f"{filename}:{function}"
        if filename == "~" and callers:
            caller = max(callers.items(), key=lambda item: item[1][2])[0]
            area = _area(f"{caller[0]}:{caller[2]}")
            if area == "other":
                area = _area(where)
        else:
            area = _area(where)
        totals[area] += tottime
    return dict(totals)


def _client(port: int, mails: int, queue: Any) -> None:
    run = uuid.uuid4().hex[:8]
    load = asyncio.run(generate_load(port, [build_mail(n, run, None) for n in range(mails)], 20))
    queue.put((load.sent, load.seconds))


async def accept_profile(workdir: Path, mails: int) -> dict[str, Any]:
    from mailsvc.bootstrap import open_services
    from mailsvc.config import load_settings
    from mailsvc.ingest.smtp import start_smtp

    settings = load_settings(
        database_url=f"sqlite+aiosqlite:///{workdir / 'accept.db'}", smtp_port=0,
        api_enabled=False, bcc_address=BCC, _env_file=None, trusted_authserv_ids=AUTHSERV,
    )
    context = multiprocessing.get_context("spawn")
    async with open_services(settings) as services:
        await services.pipeline.start(decide=False)
        # getattr: the same script profiles revisions from before the settings groups too.
        server = await start_smtp(services.pipeline, getattr(settings, "smtp", settings))
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        for count, profiled in ((200, False), (mails, True)):  # a warm-up, then the run
            queue = context.Queue()
            client = context.Process(target=_client, args=(port, count, queue))
            profile = cProfile.Profile(time.process_time)
            client.start()
            if profiled:
                profile.enable()
            sent, _seconds = await loop.run_in_executor(None, queue.get)
            if profiled:
                profile.disable()
            client.join()
        server.close()
        await server.wait_closed()
        await services.pipeline.stop()
    return {"path": "accept", "mails": sent, "areas": by_area(pstats.Stats(profile))}


async def decide_profile(workdir: Path, mails: int) -> dict[str, Any]:
    from mailsvc.bootstrap import open_services
    from mailsvc.config import load_settings
    from mailsvc.ingest.decider import Decider
    from mailsvc.mail import Envelope, RawMail, Role

    settings = load_settings(
        database_url=f"sqlite+aiosqlite:///{workdir / 'decide.db'}", api_enabled=False,
        support_address=SUPPORT, _env_file=None,
    )
    half = mails // 2
    raws = [RawMail(mail(n, follow_up), Envelope("x@example.com", (SUPPORT,), Role.SUPPORT,
                                                  "file"))
            for follow_up in (False, True) for n in range(half)]
    async with open_services(settings) as services:
        await services.pipeline.accept_many(raws)
        decider = Decider(services.pipeline)  # parses in this process: all of it is profiled
        profile = cProfile.Profile(time.process_time)
        profile.enable()
        while await decider.step():
            pass
        profile.disable()
        await decider.close()
    return {"path": "decide", "mails": len(raws), "areas": by_area(pstats.Stats(profile))}


def table(results: list[dict[str, Any]]) -> str:
    areas = sorted({a for r in results for a in r["areas"]},
                   key=lambda a: -max(r["areas"].get(a, 0) / r["mails"] for r in results))
    rows = []
    for area in areas:
        row: dict[str, Any] = {"area": area}
        for result in results:
            row[result["path"]] = f"{1000 * result['areas'].get(area, 0) / result['mails']:.3f}"
        rows.append(row)
    rows.append({"area": "total (CPU ms per mail, under cProfile)", **{
        r["path"]: f"{1000 * sum(r['areas'].values()) / r['mails']:.3f}" for r in results}})
    return render_table([("area", "area"), *((r["path"], f"{r['path']} ms/mail")
                                             for r in results)], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=3000, help="mails per path (3000)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        results = [asyncio.run(accept_profile(workdir, args.mails)),
                   asyncio.run(decide_profile(workdir, args.mails))]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(table(results))


if __name__ == "__main__":
    main()
