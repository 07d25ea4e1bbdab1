"""Shared fixtures: a fresh store on SQLite and on PostgreSQL, settings, the corpus."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import select, text

from mailsvc.bootstrap import Services, open_services
from mailsvc.config import Settings, load_settings
from mailsvc.crmstore.base import Base
from mailsvc.crmstore.db import create_engine
from mailsvc.crmstore.defaults import seed_defaults
from mailsvc.crmstore.migrate import upgrade
from mailsvc.crmstore.models import OutboxEvent
from mailsvc.events.schema import cloudevent, encode
from tests.support.contract import envelope_errors

CORPUS = Path(__file__).parent / "corpus"
PG_ADMIN_DSN = os.environ.get("MAILSVC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("MAILSVC_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")

BCC = "bcc@crm.example"
SALES = "sales@crm.example"
SUPPORT = "support@crm.example"

# The corpus files that are mail (the rest are expected results and notes).
_NOT_MAIL = {".md", ".yml", ".json"}


def corpus_messages() -> list[Path]:
    return sorted(
        p for p in CORPUS.rglob("*")
        if p.is_file() and p.suffix not in _NOT_MAIL
        and p.name not in {"iphone_reply_text", "COPYING", "LICENSE"}
    )


def base_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "bcc_address": BCC,
        "sales_address": SALES,
        "support_address": SUPPORT,
        "amqp_url": None,
        "batch_max_wait_ms": 1.0,
        "relay_poll_seconds": 0.2,
        # The linking scenarios are about linking, not sender trust: they believe the header From.
        # The trust tests (test_smtp_trust.py, test_trust.py) set the level they test.
        "sender_verification": "off",
        "_env_file": None,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file; each test gets a copy (migrating once is the slow part)."""
    import asyncio

    path = tmp_path_factory.mktemp("sqlite") / "template.db"

    async def go() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        await upgrade(engine)
        await engine.dispose()

    asyncio.run(go())
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of our own on the local PostgreSQL server, migrated once, dropped at the end."""
    import asyncio

    name = f"mailsvc_test_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        engine = create_engine(_pg_url(name))
        await upgrade(engine)
        await engine.dispose()

    async def drop() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    yield _pg_url(name)
    asyncio.run(drop())


def _pg_url(name: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"


async def _truncate_postgres(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        # What the migrations seed (pipelines, loss reasons, lists), as on a fresh SQLite copy.
        await conn.run_sync(seed_defaults)
    await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    """A clean, migrated database: a copied SQLite file, or the PostgreSQL test DB truncated."""
    if request.param == "sqlite":
        path = tmp_path / "mailsvc.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    import asyncio

    url = request.getfixturevalue("postgres_database")
    asyncio.run(_truncate_postgres(url))
    yield url


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "mailsvc.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
def make_settings(database_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return base_settings(database_url, **overrides)

    return make


@pytest.fixture
async def services(make_settings: Callable[..., Settings]) -> AsyncIterator[Services]:
    """The wired service (pipeline started, no broker) on a clean database.

    Afterwards every event the test produced is checked against docs/asyncapi.yaml.
    """
    async with open_services(make_settings(), migrate=False) as svc:
        await svc.pipeline.start()
        try:
            yield svc
        finally:
            await svc.pipeline.stop()
        await check_event_contract(svc)


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the REST API of ``services`` (no keys set: open access)."""
    from mailsvc.api.app import create_app

    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test/api/v1") as c:
        yield c


async def check_event_contract(svc: Services) -> None:
    """Every event in the outbox, as the relay would publish it, matches its message schema."""
    async with svc.sessions() as session:
        rows = (await session.scalars(select(OutboxEvent).order_by(OutboxEvent.seq))).all()
    errors = [
        error for row in rows
        for error in envelope_errors(
            json.loads(encode(cloudevent(row.id, row.type, row.created_at, row.data, row.subject)))
        )
    ]
    assert not errors, f"events that break docs/asyncapi.yaml: {errors[:5]}"
