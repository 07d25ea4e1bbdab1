"""Prometheus metrics of the service; the intake counts its outcomes here.

The metrics are made on first use, and a short-lived process that nobody scrapes (``mailsvc
ingest``, one process per piped mail) calls ``disable()`` so it never pays for importing
prometheus_client.

Several processes, one total: `mailsvc serve` with workers (accept processes sharing the SMTP
port, decide processes, the API in one of them) sets ``PROMETHEUS_MULTIPROC_DIR`` for them to a
directory it owns (mailsvc/supervisor.py). prometheus_client then keeps every value in a
memory-mapped file per process, and ``exposition`` (what /metrics answers) sums the counters and
histograms of all processes, also of those that died and were restarted. Gauges say how they
combine (``multiprocess_mode``): the store-derived ones (backlog, outbox, quarantine) are set by
the process that answers /metrics from one query, so the most recent value is the truth; a
mailbox's connected state lives only while its process does.
"""

from __future__ import annotations

import os
import time
from functools import cache
from types import SimpleNamespace
from typing import Any

_enabled = True
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Seconds, for the stage latencies: a commit is milliseconds, a stalled one tens of seconds.
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                 30.0, 60.0)


@cache
def _metrics() -> Any:
    from prometheus_client import Counter, Gauge, Histogram

    return SimpleNamespace(
        outcomes=Counter(
            "mailsvc_intake_messages",
            "Messages processed by the intake, by outcome (accepted, linked, lead_created, "
            "ticket_created, ticket_updated, duplicate, ignored, quarantined, dropped).",
            ["outcome"],
        ),
        rules=Counter(
            "mailsvc_intake_rules",
            "Decided messages by the linking rule that decided them (docs/linking.md).",
            ["rule"],
        ),
        loop_guard=Counter(
            "mailsvc_loop_guard_trips",
            "Mails the loop guard held back (rule rate_limited): stored, nothing created or "
            "updated.",
        ),
        never_log=Counter(
            "mailsvc_never_log_dropped",
            "Mails dropped unstored because a never-log rule names a sender or participant.",
        ),
        batch=Histogram(
            "mailsvc_intake_batch_messages", "Messages decided together in one transaction.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
        ),
        commit=Histogram(
            "mailsvc_intake_commit_seconds",
            "Apply stage: time to decide, store and commit one parsed batch of messages.",
            buckets=STAGE_BUCKETS,
        ),
        accept=Histogram(
            "mailsvc_intake_accept_seconds",
            "Accept stage: time to commit one group of accepted mails (raw bytes, envelope, "
            "dedup key).",
            buckets=STAGE_BUCKETS,
        ),
        decide=Histogram(
            "mailsvc_intake_decide_seconds",
            "Decide stage: time to parse and classify one claimed batch before it is applied.",
            buckets=STAGE_BUCKETS,
        ),
        backlog=Gauge(
            "mailsvc_intake_backlog_messages", "Mails accepted and not decided yet.",
            multiprocess_mode="mostrecent",
        ),
        backlog_age=Gauge(
            "mailsvc_intake_backlog_oldest_seconds",
            "Age of the oldest mail accepted and not decided yet (0 when none waits).",
            multiprocess_mode="mostrecent",
        ),
        outbox=Gauge(
            "mailsvc_outbox_pending_events",
            "Events in the outbox not confirmed by the broker yet.",
            multiprocess_mode="mostrecent",
        ),
        outbox_age=Gauge(
            "mailsvc_outbox_oldest_seconds",
            "Age of the oldest event not confirmed by the broker yet (0 when none waits).",
            multiprocess_mode="mostrecent",
        ),
        quarantine=Gauge(
            "mailsvc_quarantine_messages", "Mails in quarantine (could not be processed).",
            multiprocess_mode="mostrecent",
        ),
        smtp_replies=Counter(
            "mailsvc_smtp_replies",
            "SMTP replies sent, by reply code (the final line of each reply; 421 for a "
            "connection refused at the limits).",
            ["code"],
        ),
        lmtp_replies=Counter(
            "mailsvc_lmtp_replies",
            "LMTP replies sent, by reply code (after DATA one per accepted recipient; 421 for a "
            "connection refused at the limits).",
            ["code"],
        ),
        relay_published=Counter(
            "mailsvc_relay_published_events",
            "Events the broker confirmed and routed to a queue (stamped sent in the outbox).",
        ),
        relay_failed=Counter(
            "mailsvc_relay_failed_events",
            "Events published and not confirmed, by reason (unroutable: no queue bound; "
            "unconfirmed: the broker did not confirm); they stay in the outbox and are retried.",
            ["reason"],
        ),
        relay_batch=Histogram(
            "mailsvc_relay_batch_events", "Events published together in one batch.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
        ),
        relay_publish=Histogram(
            "mailsvc_relay_publish_seconds",
            "Relay publish stage: time to publish one batch and receive the broker's confirms.",
            buckets=STAGE_BUCKETS,
        ),
        webhook_attempts=Counter(
            "mailsvc_webhook_attempts",
            "Webhook requests by outcome (delivered: 2xx; retry: it will be tried again; failed: "
            "the delivery failed for good).",
            ["outcome"],
        ),
        webhook_seconds=Histogram(
            "mailsvc_webhook_request_seconds",
            "Time of one webhook request, until the receiver's answer or the error.",
            buckets=STAGE_BUCKETS,
        ),
        webhooks_disabled=Counter(
            "mailsvc_webhooks_disabled",
            "Webhook subscriptions disabled automatically after repeated failure.",
        ),
        fallbacks=Counter(
            "mailsvc_intake_fallbacks",
            "Groups redone mail by mail after the fast path failed (a concurrent writer, an odd "
            "mail).",
        ),
        parsers_lost=Counter(
            "mailsvc_parsing_processes_lost",
            "Sets of parsing processes replaced because one of them ended (killed, out of "
            "memory, or a mail that crashed the parser).",
        ),
        imap_errors=Counter(
            "mailsvc_imap_errors",
            "IMAP mailbox failures, by mailbox and kind (token, login, tls, network, store, "
            "other); each is followed by a reconnect.",
            ["mailbox", "kind"],
        ),
        imap_polls=Counter(
            "mailsvc_imap_polls",
            "Searches of a mailbox for new mail that completed (after IDLE woke or the poll "
            "interval passed).",
            ["mailbox"],
        ),
        imap_checked=Gauge(
            "mailsvc_imap_last_check_timestamp_seconds",
            "When the mailbox was last searched for new mail (Unix time): time() minus this is "
            "how far behind its mailbox mailsvc may be.",
            ["mailbox"], multiprocess_mode="max",
        ),
        imap_connected=Gauge(
            "mailsvc_imap_connected", "1 while the mailbox's poller is connected and logged in.",
            ["mailbox"], multiprocess_mode="livemax",
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


def record_outcome(kind: str, rule: str | None = None) -> None:
    """Count one processed message by its outcome kind, and by its rule when one decided it."""
    if not _enabled:
        return
    found = _metrics()
    found.outcomes.labels(outcome=kind).inc()
    if rule:
        found.rules.labels(rule=rule).inc()


def record_loop_guard_trip() -> None:
    """One mail held back by the loop guard (docs/linking.md, rule ``rate_limited``)."""
    if not _enabled:
        return
    _metrics().loop_guard.inc()


def record_never_log_drop() -> None:
    """One mail dropped by a never-log rule: the only trace it leaves."""
    if not _enabled:
        return
    _metrics().never_log.inc()


def record_batch(size: int, seconds: float) -> None:
    if not _enabled:
        return
    _metrics().batch.observe(size)
    _metrics().commit.observe(seconds)


def record_accept(size: int, seconds: float) -> None:
    if not _enabled:
        return
    _metrics().accept.observe(seconds)


def record_decide(seconds: float) -> None:
    if not _enabled:
        return
    _metrics().decide.observe(seconds)


def record_relay_batch(size: int, seconds: float, published: int, unroutable: int,
                       unconfirmed: int) -> None:
    """One relay batch: its size, publish-and-confirm time, and what became of its events."""
    if not _enabled:
        return
    found = _metrics()
    found.relay_batch.observe(size)
    found.relay_publish.observe(seconds)
    if published:
        found.relay_published.inc(published)
    if unroutable:
        found.relay_failed.labels(reason="unroutable").inc(unroutable)
    if unconfirmed:
        found.relay_failed.labels(reason="unconfirmed").inc(unconfirmed)


def record_webhook_attempt(outcome: str, seconds: float) -> None:
    """One webhook request: ``delivered``, ``retry`` or ``failed``."""
    if not _enabled:
        return
    found = _metrics()
    found.webhook_attempts.labels(outcome=outcome).inc()
    found.webhook_seconds.observe(seconds)


def record_webhook_disabled() -> None:
    if not _enabled:
        return
    _metrics().webhooks_disabled.inc()


@cache
def _smtp_reply(code: str) -> Any:
    """The counter child of one reply code, looked up once (codes are three digits: bounded)."""
    return _metrics().smtp_replies.labels(code=code)


def reply_code(line: str) -> str | None:
    """The code of a reply's final line ("250 2.0.0 Ok" -> "250"); None for a continuation line
    ("250-SIZE"), which belongs to the reply its final line counts."""
    code, separator = line[:3], line[3:4]
    if separator == "-":
        return None
    return code if code.isdigit() and code[0] in "2345" else "other"


def record_smtp_reply(line: str) -> None:
    if not _enabled:
        return
    code = reply_code(line)
    if code is not None:
        _smtp_reply(code).inc()


@cache
def _lmtp_reply(code: str) -> Any:
    return _metrics().lmtp_replies.labels(code=code)


def record_lmtp_reply(line: str) -> None:
    if not _enabled:
        return
    code = reply_code(line)
    if code is not None:
        _lmtp_reply(code).inc()


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


def record_parsers_lost() -> None:
    if not _enabled:
        return
    _metrics().parsers_lost.inc()


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


def record_imap_check(mailbox: str) -> None:
    """The mailbox was searched for new mail just now."""
    if not _enabled:
        return
    found = _metrics()
    found.imap_polls.labels(mailbox=mailbox).inc()
    found.imap_checked.labels(mailbox=mailbox).set(time.time())


def set_imap_connected(mailbox: str, connected: bool) -> None:
    if not _enabled:
        return
    _metrics().imap_connected.labels(mailbox=mailbox).set(1 if connected else 0)


def exposition() -> tuple[bytes, str]:
    """What /metrics answers, and its content type: this process's metrics, or, in multiprocess
    mode (``PROMETHEUS_MULTIPROC_DIR`` set), every process's summed (a fresh registry per scrape,
    as prometheus_client asks: the collector reads the files when collected)."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    if os.environ.get(MULTIPROC_DIR):
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def forget_process(pid: int, directory: str) -> None:
    """A supervised process is gone: drop its live gauges (its counters stay in the totals)."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def register() -> None:
    """Create the metrics now (the API does, so /metrics lists them before the first mail)."""
    _metrics()


def disable() -> None:
    """Record nothing in this process (and never import prometheus_client)."""
    global _enabled  # noqa: PLW0603
    _enabled = False
