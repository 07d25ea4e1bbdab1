"""Property-based fuzz of the outbound endpoints with a relay configured (so requests get past
the 409 and are validated, composed and stored): no input makes them answer 500. SQLite only,
bounded; the relay address is never contacted (no sender runs)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from sqlalchemy.pool import NullPool

from mailsvc.api.app import create_app
from mailsvc.bootstrap import Services
from mailsvc.crmstore.db import create_engine, create_session_factory
from mailsvc.outbound.queue import configure_sessions
from tests.conftest import base_settings
from tests.integration.test_api_fuzz import _seed


def _services(url: str) -> Services:
    settings = base_settings(url, outbound_smtp_url="smtp://127.0.0.1:9")
    engine = create_engine(url, poolclass=NullPool)
    sessions = create_session_factory(engine)
    configure_sessions(sessions, settings.outbound, settings.linking, settings.intake)
    return Services(settings, engine, sessions, pipeline=None, relay=None)  # type: ignore[arg-type]


APP = create_app(_services("sqlite+aiosqlite:///:memory:"))
# A generous timeout: building the document takes seconds on a busy machine.
schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", APP, timeout=120).include(
    path_regex=r"/(replies|emails)$", method="POST")


@pytest.fixture(autouse=True)
def fresh_store(sqlite_url: str) -> None:
    asyncio.run(_seed(sqlite_url))
    APP.state.services = _services(sqlite_url)


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_input_makes_the_outbound_endpoints_fail(case: Any) -> None:
    response = case.call()
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    )
