"""Sender trust: which proofs make a From believable, and which do not."""

from __future__ import annotations

import base64
import ipaddress
import subprocess
from pathlib import Path

import dkim
import pytest

from mailsvc.ingest.parse import parse_mail
from mailsvc.ingest.trust import TrustPolicy, aligned, needs_lookup, sender_verified
from mailsvc.mail import Envelope, RawMail

MAIL = (
    b"From: Anna Seller <anna.seller@mailsvc.example>\n"
    b"To: Carla <carla@acme.example>\n"
    b"Subject: Your quote [OPP-1]\n"
    b"Message-ID: <q1@mailsvc.example>\n"
    b"\n"
    b"Hello Carla,\nthe quote.\n"
)
TRUSTED = TrustPolicy(authserv_ids=frozenset({"mx.mailsvc.example"}), verify_dkim=False)


def verdict(
    data: bytes, policy: TrustPolicy = TRUSTED, source: str = "smtp", peer: str | None = None,
    login: str | None = None,
) -> bool:
    envelope = Envelope(None, ("bcc@crm.example",), "bcc", source, peer, login)
    return sender_verified(RawMail(data, envelope), parse_mail(data), policy)


def with_results(value: str, data: bytes = MAIL) -> bytes:
    return f"Authentication-Results: {value}\n".encode() + data


def test_a_bare_from_is_not_believed_from_anywhere() -> None:
    assert not verdict(MAIL)
    assert not verdict(MAIL, source="stdin")
    assert not verdict(MAIL, peer="127.0.0.1")


def test_off_believes_the_header() -> None:
    assert verdict(MAIL, TrustPolicy(level="off"))


@pytest.mark.parametrize("login, believed", [
    ("anna.seller@mailsvc.example", True),
    ("ANNA.SELLER@mailsvc.example", True),
    ("sam.support@mailsvc.example", False),
])
def test_smtp_auth_proves_only_its_own_address(login: str, believed: bool) -> None:
    assert verdict(MAIL, login=login) is believed


@pytest.mark.parametrize("results, believed", [
    ("mx.mailsvc.example; dmarc=pass header.from=mailsvc.example", True),
    ("MX.mailsvc.example; dmarc=pass (p=reject) header.from=mailsvc.example", True),
    ("mx.mailsvc.example; dmarc=fail header.from=mailsvc.example", False),
    ("mx.mailsvc.example; dmarc=pass header.from=evil.example", False),
    # Someone else's verdict, however good, is not ours.
    ("mx.evil.example; dmarc=pass header.from=mailsvc.example", False),
    ("mx.mailsvc.example; dkim=pass header.d=mailsvc.example", True),
    ("mx.mailsvc.example; dkim=pass header.d=mail.mailsvc.example", True),
    ("mx.mailsvc.example; dkim=pass header.d=evil.example", False),
    ("mx.mailsvc.example; dkim=pass header.d=example", False),
    ("mx.mailsvc.example; spf=pass smtp.mailfrom=bounce@mailsvc.example", True),
    ("mx.mailsvc.example; spf=pass smtp.mailfrom=bounce@evil.example", False),
    ("mx.mailsvc.example; spf=softfail smtp.mailfrom=anna@mailsvc.example", False),
    ("mx.mailsvc.example; none", False),
    ("mx.mailsvc.example; dmarc=pass header.from=mailsvc.example (", False),  # malformed
    ("this is not an authentication-results header at all", False),
])
def test_authentication_results_of_the_trusted_authserv_id(results: str, believed: bool) -> None:
    assert verdict(with_results(results)) is believed


def test_level_dmarc_wants_dmarc() -> None:
    policy = TrustPolicy(level="dmarc", authserv_ids=TRUSTED.authserv_ids, verify_dkim=False)
    assert not verdict(with_results("mx.mailsvc.example; dkim=pass header.d=mailsvc.example"),
                       policy)
    assert verdict(with_results("mx.mailsvc.example; dmarc=pass header.from=mailsvc.example"),
                   policy)


def test_a_forged_header_beside_a_real_one_adds_nothing() -> None:
    real = "mx.mailsvc.example; dmarc=fail header.from=mailsvc.example"
    forged = "mx.evil.example; dmarc=pass header.from=mailsvc.example"
    assert not verdict(with_results(real, with_results(forged)))


def test_over_smtp_and_lmtp_trusted_networks_limit_who_may_add_results() -> None:
    data = with_results("mx.mailsvc.example; dmarc=pass header.from=mailsvc.example")
    policy = TrustPolicy(
        authserv_ids=TRUSTED.authserv_ids, verify_dkim=False,
        trusted_networks=(ipaddress.ip_network("10.1.0.0/16"),),
    )
    assert verdict(data, policy, peer="10.1.2.3")
    assert verdict(data, policy, peer="::ffff:10.1.2.3")
    assert not verdict(data, policy, peer="192.0.2.7")
    assert not verdict(data, policy, peer=None)
    assert verdict(data, policy, source="imap")  # the provider's own header, no SMTP peer
    # LMTP over TCP: the same rule; over the unix socket (no peer) its file mode decides.
    assert verdict(data, policy, source="lmtp", peer="10.1.2.3")
    assert not verdict(data, policy, source="lmtp", peer="192.0.2.7")
    assert verdict(data, policy, source="lmtp", peer=None)


def test_alignment() -> None:
    assert aligned("mailsvc.example", "mailsvc.example")
    assert aligned("mailsvc.example", "eu.mailsvc.example")
    assert aligned("eu.mailsvc.example", "mailsvc.example")
    assert not aligned("example", "mailsvc.example")
    assert not aligned("vailsvc.example", "mailsvc.example")
    assert not aligned("", "mailsvc.example")


# ---------------------------------------------------------------- DKIM verified here


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    """A throw-away RSA key pair: (private PEM, public key as in a DKIM TXT record)."""
    path: Path = tmp_path_factory.mktemp("dkim") / "key.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(path), "1024"], check=True,
                   capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", str(path), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return path.read_bytes(), base64.b64encode(der).decode()


def signed(data: bytes, key: bytes, domain: bytes = b"mailsvc.example") -> bytes:
    headers = [b"from", b"to", b"subject", b"message-id"]
    return bytes(dkim.sign(data, b"test", domain, key, include_headers=headers)) + data


def policy_with_key(public: str, looked_up: list[str]) -> TrustPolicy:
    def dns(name: bytes, timeout: float = 5) -> bytes:
        looked_up.append(name.decode())
        return f"v=DKIM1; k=rsa; p={public}".encode()

    return TrustPolicy(dns=dns)


def test_a_valid_signature_of_the_from_domain_is_believed(dkim_key: tuple[bytes, str]) -> None:
    private, public = dkim_key
    looked_up: list[str] = []
    assert verdict(signed(MAIL, private), policy_with_key(public, looked_up))
    assert looked_up == ["test._domainkey.mailsvc.example."]


def test_a_changed_body_or_an_unaligned_signer_is_not(dkim_key: tuple[bytes, str]) -> None:
    private, public = dkim_key
    looked_up: list[str] = []
    policy = policy_with_key(public, looked_up)
    assert not verdict(signed(MAIL, private).replace(b"the quote", b"the money"), policy)
    # A good signature of the attacker's own domain says nothing about the From.
    assert not verdict(signed(MAIL, private, b"evil.example"), policy)
    assert looked_up == ["test._domainkey.mailsvc.example."]  # the unaligned one is not checked


def test_dkim_can_be_switched_off(dkim_key: tuple[bytes, str]) -> None:
    private, public = dkim_key
    looked_up: list[str] = []
    policy = TrustPolicy(verify_dkim=False, dns=policy_with_key(public, looked_up).dns)
    assert not verdict(signed(MAIL, private), policy)
    assert looked_up == []


def test_a_dns_failure_is_not_a_pass() -> None:
    def broken(name: bytes, timeout: float = 5) -> bytes:
        raise OSError("resolver timed out")

    data = b"DKIM-Signature: v=1; a=rsa-sha256; d=mailsvc.example; s=x; h=from; bh=AA==; b=AA==\n"
    assert not verdict(data + MAIL, TrustPolicy(dns=broken))


def test_needs_lookup_looks_at_the_header_section_only() -> None:
    assert needs_lookup(b"From: a\r\nDKIM-Signature: v=1\r\n\r\nbody")
    assert needs_lookup(b"dkim-signature: v=1\n\nbody")
    assert not needs_lookup(b"From: a\n\nDKIM-Signature: in the body")
    assert not needs_lookup(MAIL)


def test_decide_believes_a_user_only_when_verified() -> None:
    from mailsvc.linking.decide import Policy, decide
    from mailsvc.linking.model import Facts, UserRef
    from mailsvc.linking.references import IdPatterns

    policy = Policy(IdPatterns("OPP", "TCK"), frozenset({"bcc@crm.example"}))
    mail = parse_mail(MAIL)
    envelope = Envelope(None, ("bcc@crm.example",), "bcc")
    facts = Facts(users={"anna.seller@mailsvc.example": UserRef(1, "anna.seller@mailsvc.example")})
    doubted = decide(mail, envelope, facts, policy, sender_verified=False)
    assert (doubted.kind, doubted.rule, doubted.direction) == (
        "ignore", "sender_unverified", "incoming")
    assert doubted.notes == ("sender_unverified",) and not doubted.links.any
    believed = decide(mail, envelope, facts, policy, sender_verified=True)
    assert believed.direction == "outgoing" and believed.rule != "sender_unverified"
    # Someone who is not a user is not affected by the verdict.
    stranger = decide(mail, envelope, Facts(), policy, sender_verified=False)
    assert stranger.rule != "sender_unverified"
