"""Prometheus metrics of the service; the intake counts its outcomes here."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
    "mailsvc_api_requests", "API requests answered, by method and status class.",
    ["method", "status"],
)


def record_outcome(kind: str) -> None:
    """Count one processed message by its outcome kind."""
    INTAKE_OUTCOMES.labels(outcome=kind).inc()


def record_batch(size: int, seconds: float) -> None:
    INTAKE_BATCH.observe(size)
    INTAKE_COMMIT.observe(seconds)


def record_fallback() -> None:
    INTAKE_FALLBACKS.inc()


def record_request(method: str, status: int) -> None:
    API_REQUESTS.labels(method=method, status=f"{status // 100}xx").inc()


# --- IMAP mailboxes ---
IMAP_ERRORS = Counter(
    "mailsvc_imap_errors",
    "IMAP mailbox failures, by mailbox and kind (token, login, tls, network, store, other); "
    "each is followed by a reconnect.",
    ["mailbox", "kind"],
)
IMAP_CONNECTED = Gauge(
    "mailsvc_imap_connected", "1 while the mailbox's poller is connected and logged in.",
    ["mailbox"],
)


def record_imap_error(mailbox: str, kind: str) -> None:
    IMAP_ERRORS.labels(mailbox=mailbox, kind=kind).inc()


def set_imap_connected(mailbox: str, connected: bool) -> None:
    IMAP_CONNECTED.labels(mailbox=mailbox).set(1 if connected else 0)
