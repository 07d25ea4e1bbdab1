"""Sender trust: is the header From of a mail really its author? (docs/trust.md)

A From header is only a claim. mailsvc believes it when one of these proves it:

* the mail came over an authenticated SMTP submission and the login is the From address;
* an ``Authentication-Results`` header (RFC 8601) added by a configured ``authserv-id`` (the
  operator's MTA, or a mailbox provider) says DMARC passed for the From domain, or (at the level
  ``aligned``) DKIM or SPF passed for a domain aligned with it; for SMTP, only if the client
  connects from a trusted network when such networks are configured;
* a DKIM signature of a domain aligned with the From domain verifies here (dkimpy).

Nothing else counts: not the network a mail comes from, not ``mailsvc ingest``, not any other
Authentication-Results header. ``sender_verified`` is a pure function of the mail, its envelope
and the policy; the only outside call is the DKIM key lookup, through the policy's ``dns``.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import authres

from mailsvc.mail import Envelope, ParsedMail, RawMail

if TYPE_CHECKING:
    from mailsvc.config import TrustSettings

logger = logging.getLogger(__name__)

Level = Literal["dmarc", "aligned", "off"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# dkimpy's DNS interface: a TXT record's text for a name, or None.
DnsFunc = Callable[..., bytes | str | None]


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """What proves a sender (the settings of docs/trust.md)."""

    level: Level = "aligned"
    authserv_ids: frozenset[str] = frozenset()
    trusted_networks: tuple[Network, ...] = ()
    verify_dkim: bool = True
    dns: DnsFunc | None = field(default=None, compare=False)
    dns_timeout: float = 5.0


def sender_verified(raw: RawMail, mail: ParsedMail, policy: TrustPolicy) -> bool:
    """True when the mail's (first) From address is proven to be its author's."""
    if policy.level == "off":
        return True
    sender = mail.sender
    if sender is None or "@" not in sender.email:
        return False
    if authenticated_as(raw.envelope, sender.email):
        return True
    domain = sender.domain
    if results_pass(mail, raw.envelope, domain, policy):
        return True
    return policy.verify_dkim and dkim_pass(raw.data, mail, domain, policy)


def authenticated_as(envelope: Envelope, address: str) -> bool:
    """SMTP AUTH identity equals the From address."""
    login = envelope.authenticated
    return login is not None and login.strip().lower() == address.lower()


# ---------------------------------------------------------------- Authentication-Results


def results_pass(mail: ParsedMail, envelope: Envelope, domain: str, policy: TrustPolicy) -> bool:
    """A trusted Authentication-Results header says the From domain passed."""
    if not policy.authserv_ids or not _relay_trusted(envelope, policy.trusted_networks):
        return False
    for value in mail.header_all("authentication-results"):
        header = _parse_results(value)
        if header is None or str(header.authserv_id).lower() not in policy.authserv_ids:
            continue
        if _results_pass(header.results, domain, policy.level):
            return True
    return False


def _relay_trusted(envelope: Envelope, networks: tuple[Network, ...]) -> bool:
    """Over SMTP or LMTP with trusted networks configured, only a client from them adds trusted
    headers. The LMTP unix socket (no peer address) counts as trusted: its file mode decides who
    may connect, as the pipe does for `mailsvc ingest`."""
    if envelope.source not in ("smtp", "lmtp") or not networks:
        return True
    if envelope.source == "lmtp" and envelope.peer is None:
        return True
    if not envelope.peer:
        return False
    try:
        peer = ipaddress.ip_address(envelope.peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return any(peer in network for network in networks)


def _parse_results(value: str) -> authres.AuthenticationResultsHeader | None:
    try:
        return authres.AuthenticationResultsHeader.parse_value(value)
    except Exception:  # authres raises several kinds on bad input: such a header proves nothing
        return None


def _results_pass(results: Iterable[object], domain: str, level: Level) -> bool:
    for result in results:
        method = str(getattr(result, "method", "")).lower()
        if str(getattr(result, "result", "")).lower() != "pass":
            continue
        props = _properties(result)
        if method == "dmarc" and props.get("header.from", "").lower() == domain:
            return True
        if level != "aligned":
            continue
        if method == "dkim" and aligned(_domain_of(props.get("header.d", "")), domain):
            return True
        if method == "spf":
            spf = props.get("smtp.mailfrom", "")
            if aligned(_domain_of(spf), domain):
                return True
    return False


def _properties(result: object) -> dict[str, str]:
    found: dict[str, str] = {}
    for prop in getattr(result, "properties", None) or ():
        key = f"{getattr(prop, 'type', '')}.{getattr(prop, 'name', '')}".lower()
        found.setdefault(key, str(getattr(prop, "value", "")).strip())
    return found


def _domain_of(value: str) -> str:
    """A domain, or the domain of an address (``user@example.com``, ``@example.com``)."""
    return value.rpartition("@")[2].strip().strip(".").lower()


def aligned(signer: str, author: str) -> bool:
    """DMARC-style relaxed alignment, without the public suffix list: the same domain, or one a
    subdomain of the other (a signer must control the DNS of its domain to pass at all)."""
    if not signer or not author or "." not in signer:
        return False
    return signer == author or author.endswith("." + signer) or signer.endswith("." + author)


# ---------------------------------------------------------------- DKIM, verified here


def dkim_pass(data: bytes, mail: ParsedMail, domain: str, policy: TrustPolicy) -> bool:
    """A DKIM signature whose d= aligns with the From domain verifies."""
    signatures = mail.header_all("dkim-signature")
    candidates = [n for n, value in enumerate(signatures) if aligned(_tag(value, "d"), domain)]
    if not candidates:
        return False
    import dkim  # here: most mail has no aligned signature, and dkimpy loads DNS code

    dns = policy.dns or cached_dns
    for index in candidates:
        try:
            verifier = dkim.DKIM(data, timeout=policy.dns_timeout)
            if verifier.verify(idx=index, dnsfunc=dns):
                return True
        except Exception as exc:  # dkimpy raises for bad keys, DNS errors, odd signatures
            logger.info("DKIM signature %d of %s did not verify: %r", index, domain, exc)
    return False


def _tag(value: str, name: str) -> str:
    for part in value.split(";"):
        key, _, tag_value = part.partition("=")
        if key.strip().lower() == name:
            return "".join(tag_value.split()).strip(".").lower()
    return ""


_HEAD_LIMIT = 1024 * 1024


def needs_lookup(data: bytes) -> bool:
    """Cheap (it runs on the event loop): does the header section carry a DKIM-Signature, so that
    verifying it may ask DNS?"""
    ends = [n for n in (data.find(b"\n\n", 0, _HEAD_LIMIT), data.find(b"\n\r\n", 0, _HEAD_LIMIT))
            if n >= 0]
    head = data[: min(ends)] if ends else data[:_HEAD_LIMIT]
    return b"\ndkim-signature" in b"\n" + head.lower()


_DNS_CACHE: dict[str, tuple[float, bytes | str | None]] = {}
_DNS_LOCK = threading.Lock()
_DNS_TTL = 300.0
_DNS_MAX = 4096


def cached_dns(name: bytes | str, timeout: float = 5) -> bytes | str | None:
    """dkimpy's TXT lookup, cached for five minutes (keys rarely change, mail often repeats)."""
    key = name.decode("ascii", "replace") if isinstance(name, bytes) else name
    now = time.monotonic()
    with _DNS_LOCK:
        hit = _DNS_CACHE.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
    import dkim.dnsplug

    value: bytes | str | None = dkim.dnsplug.get_txt(name, timeout=timeout)
    with _DNS_LOCK:
        if len(_DNS_CACHE) >= _DNS_MAX:
            _DNS_CACHE.clear()
        _DNS_CACHE[key] = (now + _DNS_TTL, value)
    return value


def trust_policy(trust: TrustSettings) -> TrustPolicy:
    return TrustPolicy(
        level=trust.sender_verification,
        authserv_ids=frozenset(trust.trusted_authserv_ids),
        trusted_networks=tuple(trust.trusted_networks),
        verify_dkim=trust.dkim_verify,
        dns_timeout=trust.dkim_dns_timeout,
    )
