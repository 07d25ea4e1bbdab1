"""Prometheus metrics of the service; the intake counts its outcomes here.

The metrics are made on first use, and a short-lived process that nobody scrapes (``mailsvc
ingest``, one process per piped mail) calls ``disable()`` so it never pays for importing
prometheus_client.
"""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace
from typing import Any

_enabled = True


@cache
def _metrics() -> Any:
    from prometheus_client import Counter, Gauge, Histogram

    return SimpleNamespace(
        outcomes=Counter(
            "mailsvc_intake_messages",
            "Messages processed by the intake, by outcome (accepted, linked, lead_created, "
            "ticket_created, ticket_updated, duplicate, ignored, quarantined).",
            ["outcome"],
        ),
        batch=Histogram(
            "mailsvc_intake_batch_messages", "Messages decided together in one transaction.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
        ),
        commit=Histogram(
            "mailsvc_intake_commit_seconds", "Time to decide and commit one batch of messages.",
        ),
        accept=Histogram(
            "mailsvc_intake_accept_seconds",
            "Time to commit one group of accepted mails (raw bytes, envelope, dedup key).",
        ),
        backlog=Gauge(
            "mailsvc_intake_backlog_messages", "Mails accepted and not decided yet.",
        ),
        backlog_age=Gauge(
            "mailsvc_intake_backlog_oldest_seconds",
            "Age of the oldest mail accepted and not decided yet (0 when none waits).",
        ),
        outbox=Gauge(
            "mailsvc_outbox_pending_events",
            "Events in the outbox not confirmed by the broker yet.",
        ),
        outbox_age=Gauge(
            "mailsvc_outbox_oldest_seconds",
            "Age of the oldest event not confirmed by the broker yet (0 when none waits).",
        ),
        quarantine=Gauge(
            "mailsvc_quarantine_messages", "Mails in quarantine (could not be processed).",
        ),
        fallbacks=Counter(
            "mailsvc_intake_fallbacks",
            "Groups redone mail by mail after the fast path failed (a concurrent writer, an odd "
            "mail).",
        ),
        imap_errors=Counter(
            "mailsvc_imap_errors",
            "IMAP mailbox failures, by mailbox and kind (token, login, tls, network, store, "
            "other); each is followed by a reconnect.",
            ["mailbox", "kind"],
        ),
        imap_connected=Gauge(
            "mailsvc_imap_connected", "1 while the mailbox's poller is connected and logged in.",
            ["mailbox"],
        ),
        requests=Counter(
            "mailsvc_api_requests",
            "API requests answered, by method (unknown methods: other), route template "
            "(unmatched paths: unmatched) and status class.",
            ["method", "route", "status"],
        ),
    )

# Label values are bounded: a made-up method or path must not create a new series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
UNMATCHED_ROUTE = "unmatched"


def record_outcome(kind: str) -> None:
    """Count one processed message by its outcome kind."""
    if not _enabled:
        return
    _metrics().outcomes.labels(outcome=kind).inc()


def record_batch(size: int, seconds: float) -> None:
    if not _enabled:
        return
    _metrics().batch.observe(size)
    _metrics().commit.observe(seconds)


def record_accept(size: int, seconds: float) -> None:
    if not _enabled:
        return
    _metrics().accept.observe(seconds)


def record_backlog(count: int, oldest_age_seconds: float) -> None:
    if not _enabled:
        return
    _metrics().backlog.set(count)
    _metrics().backlog_age.set(oldest_age_seconds)


def record_store_gauges(outbox: int, outbox_age_seconds: float, quarantine: int) -> None:
    if not _enabled:
        return
    _metrics().outbox.set(outbox)
    _metrics().outbox_age.set(outbox_age_seconds)
    _metrics().quarantine.set(quarantine)


def record_fallback() -> None:
    if not _enabled:
        return
    _metrics().fallbacks.inc()


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


def status_label(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


def record_request(method: str, route: str | None, status: int) -> None:
    """Count one answered request; ``route`` is the route template (None: no route matched)."""
    if not _enabled:
        return
    _metrics().requests.labels(method=method_label(method), route=route or UNMATCHED_ROUTE,
                               status=status_label(status)).inc()


def record_imap_error(mailbox: str, kind: str) -> None:
    if not _enabled:
        return
    _metrics().imap_errors.labels(mailbox=mailbox, kind=kind).inc()


def set_imap_connected(mailbox: str, connected: bool) -> None:
    if not _enabled:
        return
    _metrics().imap_connected.labels(mailbox=mailbox).set(1 if connected else 0)


def register() -> None:
    """Create the metrics now (the API does, so /metrics lists them before the first mail)."""
    _metrics()


def disable() -> None:
    """Record nothing in this process (and never import prometheus_client)."""
    global _enabled  # noqa: PLW0603
    _enabled = False
