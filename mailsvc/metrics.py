"""Prometheus metrics of the service; the intake counts its outcomes here."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

INTAKE_OUTCOMES = Counter(
    "mailsvc_intake_messages",
    "Messages processed by the intake, by outcome (linked, lead_created, ticket_created, "
    "ticket_updated, duplicate, ignored, quarantined).",
    ["outcome"],
)
INTAKE_BATCH = Histogram(
    "mailsvc_intake_batch_messages", "Messages committed together in one transaction.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)
INTAKE_COMMIT = Histogram(
    "mailsvc_intake_commit_seconds", "Time to process and commit one batch of messages.",
)
INTAKE_FALLBACKS = Counter(
    "mailsvc_intake_fallbacks",
    "Groups redone mail by mail after the fast path failed (a concurrent writer, an odd mail).",
)
API_REQUESTS = Counter(
    "mailsvc_api_requests",
    "API requests answered, by method (unknown methods: other), route template (unmatched "
    "paths: unmatched) and status class.",
    ["method", "route", "status"],
)

# Label values are bounded: a made-up method or path must not create a new series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
UNMATCHED_ROUTE = "unmatched"


def record_outcome(kind: str) -> None:
    """Count one processed message by its outcome kind."""
    INTAKE_OUTCOMES.labels(outcome=kind).inc()


def record_batch(size: int, seconds: float) -> None:
    INTAKE_BATCH.observe(size)
    INTAKE_COMMIT.observe(seconds)


def record_fallback() -> None:
    INTAKE_FALLBACKS.inc()


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


def status_label(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


def record_request(method: str, route: str | None, status: int) -> None:
    """Count one answered request; ``route`` is the route template (None: no route matched)."""
    API_REQUESTS.labels(method=method_label(method), route=route or UNMATCHED_ROUTE,
                        status=status_label(status)).inc()
