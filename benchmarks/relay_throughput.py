"""Outbox relay throughput: the relay (batched confirms) against publish-one-await-one.

The outbox is filled with N events in one transaction, then drained to a private topic exchange
on RabbitMQ twice: once by ``mailsvc.events.relay.Relay`` and once by a naive loop that awaits each
confirm before the next publish. A durable queue bound to ``#`` makes the broker route and persist
every event (``--no-queue`` leaves it unbound, so the broker confirms without writing). Both
drains claim and stamp rows the same way, so the difference is the confirm strategy.

    python benchmarks/relay_throughput.py --events 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
from common import create_database, drop_database, render_table
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mailsvc.config import Settings
from mailsvc.crmstore.db import create_engine, create_session_factory
from mailsvc.crmstore.migrate import upgrade
from mailsvc.crmstore.models import OutboxEvent
from mailsvc.events.relay import Relay, pending_count
from mailsvc.events.schema import cloudevent, encode

DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
DATABASES = ("sqlite", "postgres")


def event_data(number: int) -> dict[str, Any]:
    """A body shaped like a real ``email.linked`` event (about 650 bytes as CloudEvent JSON)."""
    links = {"account": 1, "contact": 1, "owner": 1, "opportunity": 1, "ticket": None,
             "inbox_lead": None}
    return {
        "outcome": "linked", "email_id": number, "message_id": f"<bench-{number}@mailsvc.example>",
        "rule": "subject_id", "links": links, **links, "notes": [], "automatic": False,
        "subject": f"Re: Your quote [OPP-1] (#{number})", "from": "anna.seller@mailsvc.example",
        "intake_role": "bcc", "direction": "outgoing",
    }


async def fill_outbox(sessions: async_sessionmaker[AsyncSession], count: int) -> float:
    """Insert ``count`` pending events in one transaction; returns the seconds it took."""
    rows = [
        {"id": str(uuid.uuid4()), "type": "email.linked", "subject": f"email/{n}",
         "data": event_data(n), "created_at": datetime.now(UTC), "attempts": 0}
        for n in range(count)
    ]
    started = time.perf_counter()
    async with sessions() as session, session.begin():
        await session.execute(insert(OutboxEvent), rows)
    return time.perf_counter() - started


async def reset_outbox(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session, session.begin():
        await session.execute(update(OutboxEvent).values(sent_at=None))


async def drain_with_relay(relay: Relay) -> int:
    sent = 0
    while batch := await relay.publish_pending():
        sent += batch
    return sent


async def drain_one_by_one(
    sessions: async_sessionmaker[AsyncSession], amqp_url: str, exchange_name: str,
    batch_size: int,
) -> int:
    """The baseline: same claim and stamp per batch, but each publish awaits its own confirm."""
    connection = await aio_pika.connect_robust(amqp_url)
    sent = 0
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        while True:
            async with sessions() as session, session.begin():
                query = (select(OutboxEvent).where(OutboxEvent.sent_at.is_(None))
                         .order_by(OutboxEvent.seq).limit(batch_size))
                if session.get_bind().dialect.name == "postgresql":
                    query = query.with_for_update(skip_locked=True)
                events = list((await session.scalars(query)).all())
                if not events:
                    return sent
                for e in events:
                    await exchange.publish(
                        aio_pika.Message(
                            body=encode(cloudevent(e.id, e.type, e.created_at, e.data, e.subject)),
                            content_type="application/cloudevents+json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=e.id, type=e.type, timestamp=e.created_at,
                        ),
                        routing_key=e.type, timeout=30,
                    )
                await session.execute(
                    update(OutboxEvent).where(OutboxEvent.seq.in_([e.seq for e in events]))
                    .values(sent_at=datetime.now(UTC))
                )
                sent += len(events)
    finally:
        await connection.close()


async def _database(kind: str, workdir: Path) -> tuple[str, str | None]:
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{workdir / 'relay.db'}", None
    name, url = await create_database()
    return url, name


async def run_database(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    url, pg_name = await _database(kind, workdir)
    engine = create_engine(url)
    exchange_name = f"mailsvc.bench.{uuid.uuid4().hex[:8]}"
    broker = await aio_pika.connect_robust(args.amqp)
    try:
        await upgrade(engine)
        sessions = create_session_factory(engine)
        channel = await broker.channel()
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(f"{exchange_name}.all", durable=True)
        if not args.no_queue:
            await queue.bind(exchange, "#")
        fill_seconds = await fill_outbox(sessions, args.events)

        relay = Relay(sessions, args.amqp, exchange_name, batch_size=args.batch_size)
        started = time.perf_counter()
        batched = await drain_with_relay(relay)
        batched_seconds = time.perf_counter() - started
        await relay.close()
        assert await pending_count(sessions) == 0

        await reset_outbox(sessions)
        await queue.purge()
        started = time.perf_counter()
        naive = await drain_one_by_one(sessions, args.amqp, exchange_name, args.batch_size)
        naive_seconds = time.perf_counter() - started
        assert await pending_count(sessions) == 0
        routed = await queue.declare()  # re-declaring answers with the current message count
        async with sessions() as session:
            total = await session.scalar(select(func.count()).select_from(OutboxEvent))
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
    finally:
        await broker.close()
        await engine.dispose()
        if pg_name:
            await drop_database(pg_name)
    return {
        "database": kind,
        "events": total,
        "batch_size": args.batch_size,
        "fill_s": round(fill_seconds, 2),
        "relay_s": round(batched_seconds, 2),
        "relay_events_per_s": round(batched / batched_seconds),
        "one_by_one_s": round(naive_seconds, 2),
        "one_by_one_events_per_s": round(naive / naive_seconds),
        "speedup": round(naive_seconds / batched_seconds, 1),
        "queued_after_baseline": routed.message_count,
    }


TABLE = (
    ("database", "database"), ("events", "events"), ("batch_size", "batch"),
    ("relay_events_per_s", "relay ev/s"), ("one_by_one_events_per_s", "one-by-one ev/s"),
    ("speedup", "speedup"),
)


def table(rows: list[dict[str, Any]]) -> str:
    return render_table(TABLE, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events in the outbox (20000)")
    parser.add_argument("--batch-size", type=int,
                        default=Settings.model_fields["relay_batch_size"].default,
                        help="rows claimed per batch (MAILSVC_RELAY_BATCH_SIZE default)")
    parser.add_argument("--databases", default=",".join(DATABASES),
                        help="comma-separated: sqlite,postgres (both)")
    parser.add_argument("--amqp", default=DEFAULT_AMQP, metavar="URL", help=DEFAULT_AMQP)
    parser.add_argument("--no-queue", action="store_true",
                        help="bind no queue: the broker confirms unroutable events at once, "
                             "without persisting them (isolates the relay from broker disk I/O)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    args.databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    if set(args.databases) - set(DATABASES):
        parser.error("databases are sqlite and/or postgres")
    return args


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for kind in args.databases:
        with tempfile.TemporaryDirectory(prefix="mailsvc-relay-") as workdir:
            rows.append(await run_database(kind, args, Path(workdir)))
        print(f"{kind}: {rows[-1]}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    arguments = parse_args()
    results = asyncio.run(main(arguments))
    if arguments.json:
        print(json.dumps({"args": vars(arguments), "results": results}, indent=2))
    else:
        print(table(results))
