"""`mailsvc serve --workers 2`: /metrics, answered by one process, counts the mail of all of them
(two accept processes sharing the SMTP port, a decide process), and the supervisor removes its
metrics directory when it stops."""

from __future__ import annotations

import re
import signal
import smtplib
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BCC
from tests.integration.test_serve import EXAMPLES, free_port, start_serve, wait_until_listening

MAILS = 12


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    """The sum of ``name`` over the series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


def decided(found: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
    everything = total(found, "mailsvc_intake_messages_total")
    return everything - total(found, "mailsvc_intake_messages_total", outcome="accepted")


def test_metrics_of_two_workers_add_up(database_url: str) -> None:
    smtp_port, api_port = free_port(), free_port()
    process = start_serve(database_url, smtp_port, api_port, "--workers", "2")
    template = (EXAMPLES / "bcc-opportunity.eml").read_bytes()
    try:
        wait_until_listening(smtp_port, process)
        wait_until_listening(api_port, process)
        for n in range(MAILS):  # a connection each: the kernel spreads them over the workers
            mail = template.replace(b"quote-followup-1@", f"metrics-{n}@".encode())
            with smtplib.SMTP("127.0.0.1", smtp_port) as smtp:
                assert smtp.sendmail("anna@outside.example", [BCC], mail) == {}
        deadline = time.monotonic() + 120  # accepted at 250; the decide worker follows
        while True:
            found = samples(httpx.get(f"http://127.0.0.1:{api_port}/metrics", timeout=60).text)
            if decided(found) >= MAILS or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr.decode()
    # Both accept workers took mail, so the totals below span processes.
    pids = set(re.findall(rb"\[(\d+)\] mailsvc\.ingest\.pipeline accepted", stderr))
    assert len(pids) == 2, stderr.decode()

    assert total(found, "mailsvc_intake_messages_total", outcome="accepted") == MAILS
    assert decided(found) == MAILS  # counted in the decide worker, another process
    for code in ("354", "221"):  # DATA, QUIT: once per mail
        assert total(found, "mailsvc_smtp_replies_total", code=code) == MAILS, code
    # The greeting: once per mail, and once for the test's probe whether SMTP listens.
    assert total(found, "mailsvc_smtp_replies_total", code="220") == MAILS + 1
    assert total(found, "mailsvc_smtp_replies_total", code="250") == 4 * MAILS  # EHLO MAIL RCPT .
    assert 1 <= total(found, "mailsvc_intake_accept_seconds_count") <= MAILS
    assert total(found, "mailsvc_intake_accept_seconds_bucket", le="+Inf") == total(
        found, "mailsvc_intake_accept_seconds_count")
    assert total(found, "mailsvc_intake_decide_seconds_count") >= 1
    assert total(found, "mailsvc_intake_commit_seconds_count") >= 1
    assert total(found, "mailsvc_intake_batch_messages_sum") == MAILS
    # Gauges from the store: one value, not one per process.
    backlog = [v for (n, _), v in found.items() if n == "mailsvc_intake_backlog_messages"]
    assert len(backlog) == 1
    directories = re.findall(rb"metrics directory (\S+)", stderr)
    assert directories, stderr.decode()
    assert not Path(directories[0].decode()).exists()  # removed with the workers
