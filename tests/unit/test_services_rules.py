"""Pure business rules of the service layer (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from mailsvc.crmstore import services as crm
from mailsvc.crmstore.models import Opportunity, OpportunityStatus


def test_traffic_light_follows_days_since_last_contact() -> None:
    now = datetime(2025, 3, 31, tzinfo=UTC)
    opp = Opportunity(status=OpportunityStatus.OPEN, created_at=now - timedelta(days=40))
    assert crm.traffic_light(opp, now, 14, 30) == "red"
    opp.last_contact_at = now - timedelta(days=20)
    assert crm.traffic_light(opp, now, 14, 30) == "yellow"
    opp.last_contact_at = now - timedelta(days=2)
    assert crm.traffic_light(opp, now, 14, 30) == "green"
    assert crm.traffic_light(opp, now, 1, 2) == "red"  # configurable
    opp.status = OpportunityStatus.WON
    assert crm.traffic_light(opp, now, 14, 30) is None


def test_weighted_value_is_amount_times_probability() -> None:
    opp = Opportunity(amount=Decimal("1234.50"), probability=35)
    assert crm.weighted_value(opp) == Decimal("432.08")
    assert crm.weighted_value(Opportunity(amount=None, probability=50)) is None


def test_company_names_are_compared_without_legal_form_and_punctuation() -> None:
    assert crm.normalise_company("ACME GmbH.") == crm.normalise_company("Acme gmbh") == "acme"
    assert crm.normalise_company("Müller & Söhne KG") == "müller söhne"
    assert crm.normalise_company("GmbH") == "gmbh"
