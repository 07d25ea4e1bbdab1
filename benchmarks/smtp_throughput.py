"""SMTP intake throughput: mailsvc on SQLite and PostgreSQL against a bare aiosmtpd sink.

Each target runs in its own process (so the load generator does not share its CPU and the peak
memory is the server's own); the load generator opens N concurrent aiosmtplib connections and
sends ~4 KB mails with unique Message-IDs to the Smart BCC address. A quarter of them carry the
demo opportunity's number in the subject, the rest are linked by address.

mailsvc runs as `mailsvc serve` does with its defaults: the accept side (SMTP, group commit of the
raw mail) in the target process, and `MAILSVC_DECIDE_WORKERS` decide processes (`mailsvc decide`;
`--decide-workers` overrides). msg/s and the latencies are the accept side (DATA to 250); e2e
msg/s runs until the last mail is decided (and, with --amqp, its events confirmed by the broker).

    python benchmarks/smtp_throughput.py --total 5000 --connections 20
    python benchmarks/smtp_throughput.py --targets sqlite --amqp amqp://guest:guest@127.0.0.1:5672/
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from email.utils import formatdate
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aio_pika
import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session
from common import create_database, drop_database, render_table

BCC = "bcc@mailsvc.localhost"
AUTHSERV = "bench.mailsvc.example"  # the MTA in front, whose verdicts are trusted
SENDER = "anna.seller@mailsvc.example"
TARGETS = ("sink", "sqlite", "postgres")
MAIL_BYTES = 4096


# --- the targets (run in a child process) -----------------------------------------------------

class SinkHandler:
    """The baseline: accept every recipient and answer 250 at once, store nothing."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 Ok: sunk"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def serve_target(target: str, database_url: str | None, amqp_url: str | None,
                 exchange: str, conn: Connection, decide_workers: int | None = None) -> None:
    asyncio.run(_serve_target(target, database_url, amqp_url, exchange, conn, decide_workers))


async def _commands(conn: Connection) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


async def _serve_sink(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    factory = partial(SMTP, SinkHandler(), decode_data=False, enable_SMTPUTF8=True,
                      hostname="sink.localhost", ident="sink ESMTP")
    server = await loop.create_server(factory, host="127.0.0.1", port=0)
    conn.send({"port": server.sockets[0].getsockname()[1], "opportunity": None})
    while (command := await _commands(conn)) != "stop":
        if command == "mark":
            cpu_at_start = _cpu_seconds()
        conn.send(0)  # "pending": a sink has no outbox
    server.close()
    await server.wait_closed()
    conn.send({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               "cpu_s": _cpu_seconds() - cpu_at_start})


def _decide_processes(database_url: str, count: int) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "MAILSVC_DATABASE_URL": database_url, "MAILSVC_BCC_ADDRESS": BCC,
           "MAILSVC_LOG_LEVEL": "WARNING", "MAILSVC_TRUSTED_AUTHSERV_IDS": AUTHSERV}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "mailsvc", "decide", "--workers", "1", "--no-migrate"],
            env=env,
        )
        for _ in range(count)
    ]


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _serve_target(target: str, database_url: str | None, amqp_url: str | None,
                        exchange: str, conn: Connection, decide_workers: int | None) -> None:
    if target == "sink":
        await _serve_sink(conn)
        return
    from sqlalchemy import func, select

    from mailsvc.bootstrap import open_services
    from mailsvc.config import load_settings
    from mailsvc.crmstore.demo import seed
    from mailsvc.crmstore.models import Email, OutboxEvent
    from mailsvc.events.relay import pending_count
    from mailsvc.ingest.decider import backlog
    from mailsvc.ingest.smtp import start_smtp

    settings = load_settings(
        database_url=database_url, smtp_port=0, amqp_url=amqp_url, amqp_exchange=exchange,
        api_enabled=False, bcc_address=BCC, decide_workers=decide_workers, _env_file=None,
        trusted_authserv_ids=AUTHSERV,
    )
    workers = settings.effective_decide_workers
    assert database_url is not None
    async with open_services(settings) as services:
        async with services.sessions() as session, session.begin():
            demo = await seed(session, settings.opportunity_prefix, settings.ticket_prefix)
        deciders = _decide_processes(database_url, workers)
        await services.pipeline.start(decide=workers == 0)
        server = await start_smtp(services.pipeline, settings.smtp)
        relay = asyncio.create_task(services.relay.run()) if services.relay else None
        conn.send({"port": server.sockets[0].getsockname()[1],
                   "opportunity": demo["opportunities"][0]["number"]})
        while (command := await _commands(conn)) != "stop":
            if command == "mark":
                cpu_at_start = _cpu_seconds()
            waiting = (await backlog(services.pipeline.writer)).count
            conn.send(waiting + (await pending_count(services.sessions) if amqp_url else 0))
        cpu = _cpu_seconds() - cpu_at_start
        server.close()
        await server.wait_closed()
        await services.pipeline.stop()
        for process in deciders:
            process.send_signal(signal.SIGTERM)
        for process in deciders:
            process.wait(60)
        cpu_deciders = _children_cpu_seconds()
        if relay is not None:
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
        async with services.sessions() as session:
            outcomes = dict((await session.execute(
                select(Email.outcome, func.count()).group_by(Email.outcome))).tuples().all())
            events = await session.scalar(select(func.count()).select_from(OutboxEvent))
    conn.send({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               "cpu_s": cpu, "decide_cpu_s": cpu_deciders, "decide_workers": workers,
               "decide_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
               "outcomes": outcomes, "events": events})


# --- the load generator ------------------------------------------------------------------------

def build_mail(number: int, run: str, opportunity: str | None) -> bytes:
    """One ~4 KB plain-text mail from the demo user to the demo contact, unique Message-ID."""
    if opportunity and number % 4 == 0:
        subject = f"Re: Your quote [{opportunity}] (#{number})"
    else:
        subject = f"Notes from our call (#{number})"
    head = (
        # As the MTA in front of mailsvc writes it: the user's From is verified, so the mail is
        # filed as her outgoing mail (the realistic path, not the unverified shortcut).
        f"Authentication-Results: {AUTHSERV}; dmarc=pass header.from=mailsvc.example\r\n"
        "From: Anna Seller <anna.seller@mailsvc.example>\r\n"
        "To: Carla Customer <carla.customer@acme.example>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <bench-{run}-{number}@mailsvc.example>\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 7bit\r\n\r\n"
        "Hello Carla,\r\n\r\nhere are the notes from today's call.\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, and the quote stands.\r\n"
    body = line * ((MAIL_BYTES - len(head)) // len(line))
    return head + body + b"\r\nAnna\r\n"


@dataclass
class LoadResult:
    sent: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    replies: dict[str, int] = field(default_factory=dict)


async def _connection(port: int, mails: list[bytes], result: LoadResult) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=120)
    await client.connect()
    try:
        for data in mails:
            await client.mail(SENDER)
            await client.rcpt(BCC)
            started = time.perf_counter()
            try:
                reply = await client.data(data)
            except aiosmtplib.SMTPResponseException as exc:
                result.errors += 1
                key = str(exc.code)
                await client.rset()
            else:
                result.latencies.append(time.perf_counter() - started)
                result.sent += 1
                # "250 2.0.0 Ok: queued as 17" -> "queued"
                key = reply.message.split(": ", 1)[-1].split(" ", 1)[0]
            result.replies[key] = result.replies.get(key, 0) + 1
    finally:
        with suppress(aiosmtplib.SMTPException):
            await client.quit()


async def generate_load(port: int, mails: list[bytes], connections: int) -> LoadResult:
    result = LoadResult()
    shares = [mails[i::connections] for i in range(connections)]
    started = time.perf_counter()
    await asyncio.gather(*(_connection(port, share, result) for share in shares if share))
    result.seconds = time.perf_counter() - started
    return result


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# --- one run per target ------------------------------------------------------------------------




async def _ask(conn: Connection, command: str) -> Any:
    conn.send(command)
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


async def run_target(target: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    pg_name: str | None = None
    database_url: str | None = None
    if target == "sqlite":
        database_url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    elif target == "postgres":
        pg_name, database_url = await create_database()
    amqp_url = args.amqp if target != "sink" else None
    exchange = f"mailsvc.bench.{uuid.uuid4().hex[:8]}"
    broker = await _bind_queue(amqp_url, exchange) if amqp_url else None
    parent, child = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=serve_target,
        args=(target, database_url, amqp_url, exchange, child, args.decide_workers),
        name=f"target-{target}",
    )
    process.start()
    try:
        ready = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
        run = uuid.uuid4().hex[:8]
        warmup = [build_mail(-n, run, ready["opportunity"]) for n in range(1, args.warmup + 1)]
        mails = [build_mail(n, run, ready["opportunity"]) for n in range(args.total)]
        if warmup:
            await generate_load(ready["port"], warmup, min(args.connections, len(warmup)))
            await _wait_drained(parent, args.drain_timeout)
        await _ask(parent, "mark")  # the server's CPU time is counted from here
        started = time.perf_counter()
        load = await generate_load(ready["port"], mails, args.connections)
        drained = await _wait_drained(parent, args.drain_timeout) if target != "sink" else None
        end_to_end = time.perf_counter() - started if drained else None
        stats = await _ask(parent, "stop")
        process.join(timeout=60)
    finally:
        if process.is_alive():
            process.kill()
        if broker is not None:
            await _drop_queue(*broker)
        if pg_name:
            await drop_database(pg_name)
    return {
        "target": target,
        "mails": args.total,
        "connections": args.connections,
        "ok": load.sent,
        "errors": load.errors,
        "seconds": round(load.seconds, 3),
        "msg_per_s": round(load.sent / load.seconds, 1),
        "p50_ms": round(percentile(load.latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(load.latencies, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(load.latencies) * 1000, 2) if load.latencies else None,
        "server_peak_rss_mib": round(stats["maxrss_kb"] / 1024, 1),
        # CPU seconds the server used per wall second of the run: ~1.0 means one core is saturated.
        "server_cpu_share": round(stats["cpu_s"] / (end_to_end or load.seconds), 2),
        "decide_workers": stats.get("decide_workers"),
        # decide processes: CPU over the whole run (warm-up included), peak RSS of the largest
        "decide_cpu_s": round(stats["decide_cpu_s"], 1) if "decide_cpu_s" in stats else None,
        "decide_peak_rss_mib": round(stats["decide_maxrss_kb"] / 1024, 1)
        if "decide_maxrss_kb" in stats else None,
        "replies": load.replies,
        "stored": stats.get("outcomes"),
        "events": stats.get("events"),
        "end_to_end_msg_per_s": round(load.sent / end_to_end, 1) if end_to_end else None,
    }


async def _wait_drained(conn: Connection, limit: float) -> bool:
    """Until every mail is decided (and with a broker, the outbox is empty: the relay got every
    confirm); False after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while await _ask(conn, "pending"):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _bind_queue(amqp_url: str, exchange_name: str) -> tuple[Any, str]:
    """A queue bound to every key, so events are routed and persisted as a consumer would see."""
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(
        exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(f"{exchange_name}.all", durable=True)
    await queue.bind(exchange, "#")
    return connection, exchange_name


async def _drop_queue(connection: Any, exchange_name: str) -> None:
    channel = await connection.channel()
    await channel.queue_delete(f"{exchange_name}.all")
    await channel.exchange_delete(exchange_name)
    await connection.close()


# --- output ------------------------------------------------------------------------------------

COLUMNS = (
    ("target", "target"), ("mails", "mails"), ("ok", "ok"), ("errors", "err"),
    ("msg_per_s", "msg/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
    ("server_peak_rss_mib", "peak RSS MiB"), ("server_cpu_share", "server CPU"),
    ("decide_workers", "deciders"), ("end_to_end_msg_per_s", "e2e msg/s"),
)


def table(rows: list[dict[str, Any]]) -> str:
    return render_table(COLUMNS, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=5000, help="mails per target (5000)")
    parser.add_argument("--connections", type=int, default=20, help="concurrent clients (20)")
    parser.add_argument("--warmup", type=int, default=100, help="unmeasured mails first (100)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated: sink,sqlite,postgres (all)")
    parser.add_argument("--amqp", default=None, metavar="URL",
                        help="also run the relay to this broker and report end-to-end msg/s "
                             "(e.g. amqp://guest:guest@127.0.0.1:5672/)")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="seconds to wait for the outbox to empty (300)")
    parser.add_argument("--decide-workers", type=int, default=None,
                        help="decide processes (default: MAILSVC_DECIDE_WORKERS' default, 1 on "
                             "SQLite, one per core on PostgreSQL; 0: in the serving process)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    return args


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for target in args.targets:
        with tempfile.TemporaryDirectory(prefix="mailsvc-bench-") as workdir:
            rows.append(await run_target(target, args, Path(workdir)))
        if not args.json:
            print(f"{target}: {rows[-1]['msg_per_s']} msg/s", file=sys.stderr)
    return rows


if __name__ == "__main__":
    arguments = parse_args()
    results = asyncio.run(main(arguments))
    if arguments.json:
        print(json.dumps({"args": {k: v for k, v in vars(arguments).items()},
                          "results": results}, indent=2))
    else:
        print(table(results))
