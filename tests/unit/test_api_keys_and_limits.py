"""Pure parts of the API's gate: key digests, the failed-attempt limiter, the access policy,
the public view of readiness, metric labels."""

from __future__ import annotations

import hashlib

import pytest

from mailsvc.api.guard import Access, AccessPolicy, status_only
from mailsvc.api.ratelimit import FailureLimiter, retry_after_header
from mailsvc.keys import hashed_form, key_digest, matches_any, parse_configured_key
from mailsvc.metrics import method_label, status_label


def test_a_key_matches_as_itself_or_as_its_digest() -> None:
    digests = [parse_configured_key("alpha"), parse_configured_key(hashed_form("beta"))]
    assert parse_configured_key(hashed_form("beta")) == hashlib.sha256(b"beta").digest()
    assert matches_any("alpha", digests) and matches_any("beta", digests)
    assert not matches_any("alph", digests) and not matches_any("", digests)
    assert not matches_any(hashed_form("beta"), digests)  # the digest is not a key
    assert not matches_any("alpha", [])
    assert key_digest("ä") == hashlib.sha256("ä".encode()).digest()


@pytest.mark.parametrize("entry", ["sha256:abc", "sha256:" + "g" * 64, ""])
def test_a_malformed_configured_key_is_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_configured_key(entry)


def test_settings_refuse_a_malformed_digest() -> None:
    from mailsvc.config import load_settings
    from mailsvc.errors import ConfigError

    with pytest.raises(ConfigError, match="API_KEYS"):
        load_settings(api_keys="sha256:1234", _env_file=None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limiter_allows_a_burst_then_one_failure_per_interval() -> None:
    clock = Clock()
    limiter = FailureLimiter(3, 60, clock=clock)
    assert limiter.blocked_for("a") == 0
    assert limiter.failed("a") == 0 and limiter.failed("a") == 0
    assert limiter.failed("a") == pytest.approx(20)  # the third used the last one
    assert limiter.blocked_for("a") == pytest.approx(20) and limiter.blocked_for("b") == 0
    clock.now += 19
    assert limiter.blocked_for("a") == pytest.approx(1)
    clock.now += 1
    assert limiter.blocked_for("a") == 0
    assert limiter.failed("a") == pytest.approx(20)
    clock.now += 600
    assert limiter.blocked_for("a") == 0  # refilled, never above the burst
    assert limiter.failed("a") == 0 and limiter.failed("a") == 0


def test_the_limiter_remembers_a_bounded_number_of_clients() -> None:
    limiter = FailureLimiter(1, 60, max_clients=100, clock=Clock())
    for n in range(10_000):
        limiter.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter) == 100
    assert limiter.blocked_for("10.0.39.15") > 0  # the most recent are kept


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert retry_after_header(0.01) == "1" and retry_after_header(5.2) == "6"


def test_the_access_policy() -> None:
    docs = frozenset({"/api/v1/openapi.json", "/api/v1/docs"})
    keyed = AccessPolicy(keys=(key_digest("k"),), docs_paths=docs)
    assert keyed.access("/healthz") is Access.OPEN
    assert keyed.access("/readyz") is Access.STATUS
    for path in ("/metrics", "/api/v1/openapi.json", "/api/v1/users", "/anything", "/readyz/"):
        assert keyed.access(path) is Access.KEY, path
    opened = AccessPolicy(keys=(key_digest("k"),), docs_paths=docs, public_docs=True,
                          public_metrics=True, public_readyz_detail=True)
    for path in ("/metrics", "/api/v1/docs", "/readyz"):
        assert opened.access(path) is Access.OPEN
    assert opened.access("/api/v1/users") is Access.KEY
    assert AccessPolicy(keys=()).access("/api/v1/users") is Access.OPEN


def test_readiness_without_a_key_shows_only_its_status() -> None:
    detail = b'{"status": "unavailable", "checks": {"database": "error: OSError"}}'
    assert status_only(detail, 503) == b'{"status": "unavailable"}'
    assert status_only(b"not json", 200) == b'{"status": "ok"}'
    assert status_only(b"[1]", 503) == b'{"status": "unavailable"}'


def test_metric_labels_are_bounded() -> None:
    assert method_label("GET") == "GET" and method_label("get") == "other"
    assert method_label("BREW") == "other"
    assert status_label(404) == "4xx" and status_label(999) == "other"
