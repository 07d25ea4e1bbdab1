"""A small mailsvc event consumer: binds a queue, drops re-deliveries by CloudEvent id, acks
after handling.

    pip install aio-pika
    python examples/consumer.py --url amqp://guest:guest@127.0.0.1:5672/ --bind 'email.*'

Delivery is at least once (docs/events.md): the same event can arrive twice, so a consumer
remembers the ids it has handled. This example keeps them in a small SQLite file next to it; a
real consumer records them in the same transaction as its own change.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage


class SeenIds:
    """Event ids already handled, kept across restarts."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY)")

    def __contains__(self, event_id: str) -> bool:
        found = self._db.execute("SELECT 1 FROM seen WHERE id = ?", (event_id,)).fetchone()
        return found is not None

    def add(self, event_id: str) -> None:
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO seen (id) VALUES (?)", (event_id,))


def handle(event: dict[str, object]) -> None:
    """Your code goes here. Raising makes the message go back to the queue."""
    data = event.get("data")
    print(event["type"], event.get("subject"), json.dumps(data, ensure_ascii=False)[:200])


async def consume(url: str, exchange_name: str, queue_name: str, keys: list[str],
                  seen: SeenIds) -> None:
    connection = await aio_pika.connect_robust(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=50)
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(queue_name, durable=True)
        for key in keys:
            await queue.bind(exchange, key)
        print(f"consuming {keys} from {exchange_name} into {queue_name}; Ctrl-C stops")
        async with queue.iterator() as messages:
            message: AbstractIncomingMessage
            async for message in messages:
                event = json.loads(message.body)
                event_id = str(event["id"])
                # Handle, remember, then ack: a crash in between re-delivers the message and the
                # id check drops the copy.
                if event_id not in seen:
                    handle(event)
                    seen.add(event_id)
                await message.ack()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--exchange", default="mailsvc.events")
    parser.add_argument("--queue", default="example.consumer")
    parser.add_argument("--bind", action="append", help="routing key pattern (repeatable)")
    parser.add_argument("--seen", type=Path, default=Path(__file__).with_name("seen-ids.db"))
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(consume(args.url, args.exchange, args.queue, args.bind or ["#"],
                            SeenIds(args.seen)))


if __name__ == "__main__":
    main()
