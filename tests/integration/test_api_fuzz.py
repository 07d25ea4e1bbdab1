"""Property-based fuzz of the API from its OpenAPI document: no input makes it answer 500.

SQLite only, bounded (a few dozen examples per operation) so it finishes in minutes.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from sqlalchemy.pool import NullPool

from mailsvc.api.app import create_app
from mailsvc.bootstrap import Services
from mailsvc.crmstore import services as crm
from mailsvc.crmstore.db import create_engine, create_session_factory
from mailsvc.crmstore.models import Email, OpportunityKind
from tests.conftest import base_settings


async def _seed(url: str) -> None:
    """A few records with small ids, so generated ids sometimes hit real rows."""
    engine = create_engine(url)
    async with create_session_factory(engine)() as session, session.begin():
        user = await crm.create_user(session, "ann@corp.example", "Ann")
        account = await crm.create_account(session, "Acme", ["acme.example"], owner_id=user.id)
        contact = await crm.create_contact(session, "Customer", "c@acme.example",
                                           account_id=account.id)
        pipeline = await crm.create_pipeline(session, "Deals", OpportunityKind.DEAL, [
            crm.StageSpec("Qualified", 20), crm.StageSpec("Won", 90)])
        await crm.set_activity_plan(session, pipeline.id, [crm.PlanStepSpec("Call", 1)])
        await crm.create_loss_reason(session, "Price")
        opp = await crm.create_opportunity(session, "Deal", account_id=account.id,
                                           contact_id=contact.id, amount=Decimal("100"))
        await crm.create_ticket(session, "Broken")
        await crm.create_inbox_lead(session, "Lead", company="Initech", last_name="Bill",
                                    email="bill@initech.example")
        quote = await crm.create_quote(session, "Q", Decimal("10"), opportunity_id=opp.id)
        await crm.create_order(session, "O", Decimal("10"), opportunity_id=opp.id)
        await crm.create_invoice(session, Decimal("10"), due_date=quote.created_at.date())
        await crm.create_activity(session, "task", "Follow up", opportunity_id=opp.id)  # type: ignore[arg-type]
        await crm.create_budget(session, 2026)
        session.add(Email(dedup_key="k", subject="Hi", raw=b"x", size=1, intake_role="bcc",
                          outcome="linked"))
    await engine.dispose()


def _services(url: str) -> Services:
    # No pool: the ASGI test client may run requests on different event loops.
    engine = create_engine(url, poolclass=NullPool)
    return Services(base_settings(url), engine, create_session_factory(engine),
                    pipeline=None, relay=None)  # type: ignore[arg-type]


# The OpenAPI document needs no database; each test run points the app at a fresh one.
APP = create_app(_services("sqlite+aiosqlite:///:memory:"))
schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", APP)


@pytest.fixture(autouse=True)
def fresh_store(sqlite_url: str) -> None:
    asyncio.run(_seed(sqlite_url))
    APP.state.services = _services(sqlite_url)


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_input_makes_the_api_fail(case: Any) -> None:
    response = case.call()
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    )
