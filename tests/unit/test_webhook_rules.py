"""The pure rules of webhooks: targets, secrets, signatures, verdicts, backoff, disabling."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from standardwebhooks.webhooks import Webhook as Verifier

from mailsvc.events.schema import EVENT_TYPES
from mailsvc.events.webhook_rules import (
    DisablePolicy,
    RetryPolicy,
    TargetRefused,
    check_address,
    check_host,
    check_secret,
    check_url,
    new_secret,
    retry_after_seconds,
    signature_headers,
    verdict,
    wanted,
)

ASYNCAPI = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"


def test_the_catalogue_subscriptions_choose_from_is_the_documented_one() -> None:
    document = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    documented = {m["name"] for m in document["components"]["messages"].values()}
    assert set(EVENT_TYPES) == documented


def test_the_signature_is_the_standard_webhooks_hmac_and_verifies() -> None:
    secret = new_secret()
    body = '{"id":"e-1","data":{"name":"Müller"}}'.encode()
    when = datetime(2026, 12, 1, 10, 0, 0, 500000, tzinfo=UTC)
    headers = signature_headers(secret, "e-1", when, body)
    assert headers["webhook-id"] == "e-1"
    assert headers["webhook-timestamp"] == str(int(when.timestamp()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, b"e-1." + headers["webhook-timestamp"].encode() + b"." + body,
                   hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()
    # What a receiver using the reference library does (its clock check aside).
    verifier = Verifier(secret)
    now = {**headers, "webhook-timestamp": str(int(datetime.now(UTC).timestamp()))}
    now["webhook-signature"] = signature_headers(
        secret, "e-1", datetime.fromtimestamp(int(now["webhook-timestamp"]), UTC), body,
    )["webhook-signature"]
    assert verifier.verify(body, now) == {"id": "e-1", "data": {"name": "Müller"}}


def test_secrets_are_whsec_and_24_to_64_bytes() -> None:
    made = new_secret()
    assert check_secret(made) == made
    assert len(base64.b64decode(made[6:])) == 32
    for bad, why in [("abc", "whsec_"), ("whsec_!!!", "base64"),
                     ("whsec_" + base64.b64encode(b"x" * 23).decode(), "24 to 64"),
                     ("whsec_" + base64.b64encode(b"x" * 65).decode(), "24 to 64")]:
        with pytest.raises(ValueError, match=why):
            check_secret(bad)


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://example.com/", "http"), ("https://", "no host"), ("https://u:p@example.com/", "cred"),
    ("https://example.com/#x", "fragment"), ("https://example.com:99999/", "valid URL"),
    ("https://exa mple.com/", "white space"), ("https://example.com/" + "a" * 2000, "longer"),
])
def test_urls_must_be_plain_http_or_https(url: str, why: str) -> None:
    with pytest.raises(TargetRefused, match=why):
        check_url(url)


def test_good_urls_pass() -> None:
    for url in ("https://hooks.example.com/mailsvc?token=1", "http://10.0.0.5:8080/x"):
        assert check_url(url) == url


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "::1", "fd00::1", "fe80::1", "::ffff:127.0.0.1", "192.0.2.1",
])
def test_non_public_addresses_need_the_setting(address: str) -> None:
    parsed = ipaddress.ip_address(address)
    with pytest.raises(TargetRefused, match="MAILSVC_WEBHOOK_ALLOW_PRIVATE"):
        check_address(parsed, allow_private=False)
    check_address(parsed, allow_private=True)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "224.0.0.1", "ff02::1"])
def test_unspecified_and_multicast_are_never_targets(address: str) -> None:
    with pytest.raises(TargetRefused, match="not a host address"):
        check_address(ipaddress.ip_address(address), allow_private=True)


def test_public_addresses_and_names_pass() -> None:
    check_address(ipaddress.ip_address("93.184.216.34"), allow_private=False)
    check_address(ipaddress.ip_address("2606:2800:220:1::1"), allow_private=False)
    check_host("https://hooks.example.com/x", allow_private=False)  # names: at connection time
    with pytest.raises(TargetRefused, match="loopback name"):
        check_host("http://LOCALHOST./x", allow_private=False)
    check_host("http://localhost/x", allow_private=True)


@pytest.mark.parametrize(("status", "expected"), [
    (200, "delivered"), (204, "delivered"), (299, "delivered"),
    (301, "failed"), (400, "failed"), (401, "failed"), (404, "failed"), (410, "failed"),
    (408, "retry"), (425, "retry"), (429, "retry"), (500, "retry"), (503, "retry"),
])
def test_what_an_answer_means(status: int, expected: str) -> None:
    assert verdict(status) == expected


def test_backoff_doubles_up_to_the_cap_and_honours_retry_after() -> None:
    policy = RetryPolicy(max_attempts=5, initial_seconds=30, max_seconds=600)
    assert [policy.delay(n) for n in range(1, 7)] == [30, 60, 120, 240, 480, 600]
    assert policy.delay(2, jitter=0.5) == 30
    assert policy.delay(1, retry_after=120) == 120
    assert policy.delay(1, retry_after=10_000) == 600
    assert not policy.exhausted(4) and policy.exhausted(5)
    assert retry_after_seconds(" 7 ") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after_seconds(None) is None


def test_disabling_after_failures_in_a_row_or_hours_of_failure() -> None:
    policy = DisablePolicy(after_failures=3, after_seconds=3600)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert policy.reason(2, None, now) is None
    assert policy.reason(2, now - timedelta(minutes=59), now) is None
    assert "3 deliveries in a row" in (policy.reason(3, None, now) or "")
    assert "every attempt failed for 1 h" in (policy.reason(0, now - timedelta(hours=1), now)
                                               or "")


def test_a_subscription_without_types_takes_all() -> None:
    assert wanted(None, "email.linked")
    assert wanted(["email.linked"], "email.linked")
    assert not wanted(["email.linked"], "email.received")
