"""A real RabbitMQ consumer for tests: a private exchange name and a queue bound to it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage


@dataclass
class Received:
    exchange: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    raw: list[AbstractIncomingMessage] = field(default_factory=list)

    def of_type(self, routing_key: str) -> list[dict[str, Any]]:
        return [m for m, r in zip(self.messages, self.raw, strict=True)
                if r.routing_key == routing_key]


@asynccontextmanager
async def consumer(amqp_url: str, binding: str = "#") -> AsyncIterator[Received]:
    """Declares a durable topic exchange with a unique name and collects what arrives on it."""
    exchange_name = f"mailsvc.test.{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(
        exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, binding)
    received = Received(exchange_name)
    lock = asyncio.Lock()

    async def on_message(message: AbstractIncomingMessage) -> None:
        async with lock:
            received.raw.append(message)
            received.messages.append(json.loads(message.body))
            await message.ack()

    tag = await queue.consume(on_message)
    try:
        yield received
    finally:
        await queue.cancel(tag)
        await exchange.delete()
        await connection.close()
