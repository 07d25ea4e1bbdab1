"""The outbox relay against the real RabbitMQ: unroutable events are not marked sent, parked
events never block the others, and the broker state /readyz reports is true."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aio_pika
from prometheus_client import REGISTRY
from sqlalchemy import select

from mailsvc import metrics
from mailsvc.bootstrap import build_relay, open_services
from mailsvc.config import Settings
from mailsvc.crmstore.models import OutboxEvent
from mailsvc.crmstore.outbox import record_event
from mailsvc.events.relay import Relay
from tests.conftest import AMQP_URL
from tests.support.broker import consumer
from tests.support.waiting import wait_for


async def _rows(relay_settings: Settings) -> dict[str, OutboxEvent]:
    async with open_services(relay_settings, migrate=False) as services, \
            services.sessions() as session:
        return {row.type: row for row in await session.scalars(select(OutboxEvent))}


async def test_an_event_no_queue_is_bound_for_stays_pending_and_does_not_block_others(
    make_settings: Callable[..., Settings],
) -> None:
    async with consumer(AMQP_URL, binding="bound.*") as received:
        settings = make_settings(amqp_url=AMQP_URL, amqp_exchange=received.exchange)
        async with open_services(settings, migrate=False) as services:
            async with services.sessions() as session, session.begin():
                record_event(session, "nobody.listens", {"n": 1})
                record_event(session, "bound.first", {"n": 2})
            relay = build_relay(settings.events, services.sessions)
            assert relay is not None
            try:
                assert await relay.publish_pending() == 1
                rows = await _rows(settings)
                assert rows["bound.first"].sent_at is not None
                parked = rows["nobody.listens"]
                assert parked.sent_at is None
                assert (parked.last_error or "").startswith("unroutable: ")
                assert parked.attempts == 1

                # A new event goes out although the parked one is older.
                async with services.sessions() as session, session.begin():
                    record_event(session, "bound.second", {"n": 3})
                assert await relay.publish_pending() == 1
                await wait_for(lambda: _async(len(received.messages) == 2), what="2 events")

                # Once a queue is bound, the parked event goes out on its next try.
                connection = await aio_pika.connect(AMQP_URL)
                async with connection:
                    channel = await connection.channel()
                    queue = await channel.declare_queue(exclusive=True)
                    await queue.bind(received.exchange, "nobody.*")
                    assert await relay.publish_pending(parked=True) == 1
                    message = await queue.get(timeout=10)
                    assert message.message_id == parked.id
                rows = await _rows(settings)
                assert all(row.sent_at is not None for row in rows.values())
            finally:
                await relay.close()


async def _async(value: bool) -> bool:
    return value


async def test_broker_status_is_ok_only_after_a_round_trip_and_not_when_unreachable(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(amqp_url=AMQP_URL, amqp_exchange="mailsvc.test.status")
    async with open_services(settings, migrate=False) as services:
        relay = build_relay(settings.events, services.sessions)
        assert relay is not None
        assert relay.status().state == "connecting"
        task = asyncio.create_task(relay.run())
        try:
            await wait_for(lambda: _async(relay.status().state == "ok"), within=30,
                           what="broker ok")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert relay.status().state != "ok"  # closed: never "ok" without a connection

        nowhere = Relay(services.sessions, "amqp://guest:guest@127.0.0.1:1/", "x",
                        poll_seconds=0.1, reconnect_max=0.2)
        task = asyncio.create_task(nowhere.run())
        try:
            await wait_for(lambda: _async(nowhere.status().state == "unavailable"), within=30,
                           what="broker unavailable")
            assert nowhere.status().last_error
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_doctor_names_the_event_types_no_queue_is_bound_for(
    make_settings: Callable[..., Settings],
) -> None:
    from mailsvc.doctor import check_events

    async with consumer(AMQP_URL, binding="bound.*") as received:
        settings = make_settings(amqp_url=AMQP_URL, amqp_exchange=received.exchange)
        assert (await check_events(settings.store, settings.events)).status == "ok"
        async with open_services(settings, migrate=False) as services:
            async with services.sessions() as session, session.begin():
                record_event(session, "nobody.listens", {"n": 1})
            relay = build_relay(settings.events, services.sessions)
            assert relay is not None
            try:
                await relay.publish_pending()
            finally:
                await relay.close()
        finding = await check_events(settings.store, settings.events)
        assert finding.status == "warn"
        assert "nobody.listens (1)" in finding.detail
        assert received.exchange in finding.fix


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_relay_counts_published_and_failed_events_and_times_its_batches(
    make_settings: Callable[..., Settings],
) -> None:
    metrics.register()
    before = {
        "published": _sample("mailsvc_relay_published_events_total"),
        "unroutable": _sample("mailsvc_relay_failed_events_total", reason="unroutable"),
        "batches": _sample("mailsvc_relay_batch_events_count"),
        "events": _sample("mailsvc_relay_batch_events_sum"),
        "timed": _sample("mailsvc_relay_publish_seconds_count"),
    }
    async with consumer(AMQP_URL, binding="bound.*") as received:
        settings = make_settings(amqp_url=AMQP_URL, amqp_exchange=received.exchange)
        async with open_services(settings, migrate=False) as services:
            async with services.sessions() as session, session.begin():
                record_event(session, "nobody.listens", {"n": 1})
                record_event(session, "bound.first", {"n": 2})
                record_event(session, "bound.second", {"n": 3})
            relay = build_relay(settings.events, services.sessions)
            assert relay is not None
            try:
                assert await relay.publish_pending() == 2
            finally:
                await relay.close()
    assert _sample("mailsvc_relay_published_events_total") == before["published"] + 2
    assert _sample("mailsvc_relay_failed_events_total",
                   reason="unroutable") == before["unroutable"] + 1
    assert _sample("mailsvc_relay_batch_events_count") == before["batches"] + 1
    assert _sample("mailsvc_relay_batch_events_sum") == before["events"] + 3
    assert _sample("mailsvc_relay_publish_seconds_count") == before["timed"] + 1
