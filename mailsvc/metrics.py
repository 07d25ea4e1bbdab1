"""Prometheus metrics of the service; the intake counts its outcomes here."""

from __future__ import annotations

from prometheus_client import Counter

INTAKE_OUTCOMES = Counter(
    "mailsvc_intake_messages",
    "Messages processed by the intake, by outcome (linked, lead_created, ticket_created, "
    "ticket_updated, duplicate, ignored, quarantined).",
    ["outcome"],
)
API_REQUESTS = Counter(
    "mailsvc_api_requests", "API requests answered, by method and status class.",
    ["method", "status"],
)


def record_outcome(kind: str) -> None:
    """Count one processed message by its outcome kind."""
    INTAKE_OUTCOMES.labels(outcome=kind).inc()


def record_request(method: str, status: int) -> None:
    API_REQUESTS.labels(method=method, status=f"{status // 100}xx").inc()
