"""Metric helpers: SMTP reply codes as bounded labels; the exposition of one process (several
processes: tests/integration/test_serve_metrics.py)."""

from __future__ import annotations

import pytest

from mailsvc import metrics


@pytest.mark.parametrize(("line", "code"), [
    ("250 2.0.0 Ok: queued as 7", "250"),
    ("250-SIZE 10240000", None),  # a continuation: its reply counts once, at the final line
    ("250 HELP", "250"),
    ("421 4.7.0 Too many connections", "421"),
    ("550 5.1.1 No such intake address", "550"),
    ("999 nonsense", "other"),
    ("hello", "other"),
    ("", "other"),
])
def test_a_reply_is_counted_by_the_code_of_its_final_line(line: str, code: str | None) -> None:
    assert metrics.reply_code(line) == code


def test_without_a_multiprocess_directory_the_exposition_is_this_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_DIR, raising=False)
    metrics.register()
    body, media_type = metrics.exposition()
    assert media_type.startswith("text/plain")
    assert b"# TYPE mailsvc_smtp_replies_total counter" in body



def sample(body: bytes, line_start: str) -> float:
    """The value of the exposition line that starts with ``line_start``."""
    line = next(line for line in body.decode().splitlines() if line.startswith(line_start))
    return float(line.rsplit(" ", 1)[1])


def test_a_decision_counts_its_rule_and_a_mailbox_check_its_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    monkeypatch.delenv(metrics.MULTIPROC_DIR, raising=False)
    metrics.register()
    before, _ = metrics.exposition()
    ruled = 'mailsvc_intake_rules_total{rule="subject_id"}'
    polled = 'mailsvc_imap_polls_total{mailbox="metrics-test"}'
    start_rule = sample(before, ruled) if ruled.encode() in before else 0.0
    metrics.record_outcome("linked", "subject_id")
    metrics.record_outcome("duplicate")  # no rule decided it: counted by outcome only
    started = time.time()
    metrics.record_imap_check("metrics-test")
    after, _ = metrics.exposition()
    assert sample(after, ruled) == start_rule + 1
    assert sample(after, polled) == 1
    checked = sample(after, 'mailsvc_imap_last_check_timestamp_seconds{mailbox="metrics-test"}')
    assert started <= checked <= time.time()
