"""/metrics reports the outbox depth and age and the quarantine size, read from the store."""

from __future__ import annotations

import re

import httpx

from mailsvc.api.app import create_app
from mailsvc.bootstrap import Services
from mailsvc.mail import Envelope, RawMail
from tests.conftest import SUPPORT

MAIL = (b"From: Carla <carla@customer.example>\r\nTo: support@crm.example\r\n"
        b"Subject: printer broken\r\nMessage-ID: <gauge-1@customer.example>\r\n\r\nHelp!\r\n")
BROKEN = b"\x00\x01\x02 not a mail at all"


def gauge(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


async def test_outbox_and_quarantine_gauges(services: Services) -> None:
    envelope = Envelope(None, (SUPPORT,), "support", "file")
    await services.pipeline.submit(RawMail(MAIL, envelope))
    await services.pipeline.submit(RawMail(BROKEN, envelope))
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        text = (await client.get("/metrics")).text
    assert gauge(text, "mailsvc_outbox_pending_events") >= 2  # no broker: events wait
    assert gauge(text, "mailsvc_outbox_oldest_seconds") >= 0
    assert gauge(text, "mailsvc_quarantine_messages") == 1
