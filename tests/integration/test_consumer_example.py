"""examples/consumer.py against the real RabbitMQ: it handles each event once, re-deliveries too."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path

import aio_pika
import pytest

from tests.conftest import AMQP_URL
from tests.support.waiting import wait_for

CONSUMER = Path(__file__).parents[2] / "examples" / "consumer.py"

pytestmark = pytest.mark.rabbitmq


def event(event_id: str, key: str) -> bytes:
    return json.dumps({
        "specversion": "1.0", "id": event_id, "source": "urn:mailsvc",
        "type": f"com.mailsvc.{key}", "time": "2026-01-01T00:00:00Z",
        "datacontenttype": "application/json", "subject": "email/1", "data": {"id": 1},
    }).encode()


async def test_the_example_consumer_handles_each_event_once(tmp_path: Path) -> None:
    exchange_name = f"mailsvc.test.{uuid.uuid4().hex[:8]}"
    queue_name = f"example.{uuid.uuid4().hex[:8]}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(CONSUMER), "--url", AMQP_URL, "--exchange", exchange_name,
        "--queue", queue_name, "--bind", "email.*", "--seen", str(tmp_path / "seen.db"),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    connection = await aio_pika.connect_robust(AMQP_URL)
    try:
        lines: list[str] = []

        async def read_line() -> bool:
            line = await asyncio.wait_for(process.stdout.readline(), 60)  # type: ignore[union-attr]
            lines.append(line.decode())
            return True

        await read_line()  # "consuming ..." once the queue is bound
        assert lines[0].startswith("consuming"), lines
        channel = await connection.channel()
        exchange = await channel.get_exchange(exchange_name)
        for event_id, key in (("a", "email.linked"), ("a", "email.linked"), ("b", "email.received"),
                              ("c", "ticket.created")):
            await exchange.publish(
                aio_pika.Message(event(event_id, key), message_id=event_id), routing_key=key
            )
        await read_line()
        await read_line()
        assert lines[1].startswith("com.mailsvc.email.linked email/1")
        assert lines[2].startswith("com.mailsvc.email.received email/1")

        async def queue_drained() -> bool:
            queue = await channel.declare_queue(queue_name, durable=True, passive=True)
            return queue.declaration_result.message_count == 0

        await wait_for(queue_drained, within=60, what="the consumer to ack everything")
    finally:
        process.terminate()
        await process.wait()
        channel = await connection.channel()
        await channel.queue_delete(queue_name)
        await channel.exchange_delete(exchange_name)
        await connection.close()
    rest = (await process.stdout.read()).decode()
    assert "email.linked" not in rest, "the re-delivered event was handled twice"
