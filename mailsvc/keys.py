"""API keys: kept only as SHA-256 digests and compared in constant time.

Pure functions, shared by the API (keys from ``MAILSVC_API_KEYS``) and by any store of per-user
keys: store ``key_digest(key)``, check with ``matches_any(supplied, digests)``.

A configured key is either the key itself or its digest written ``sha256:<64 hex digits>`` (so the
secret need not sit in the environment). API keys are long random strings, so an unsalted SHA-256
is enough to keep a leaked configuration from revealing them; comparing digests (always 32 bytes)
with ``hmac.compare_digest`` tells an attacker nothing about how much of a guess was right, and
every configured digest is compared, so the time does not say which key matched either.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

HASHED_PREFIX = "sha256:"
_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")


def key_digest(key: str) -> bytes:
    """The SHA-256 digest of a key (UTF-8)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def hashed_form(key: str) -> str:
    """What to put in the configuration instead of the key: ``sha256:<hex>``."""
    return HASHED_PREFIX + key_digest(key).hex()


def parse_configured_key(entry: str) -> bytes:
    """The digest of one configured key: ``sha256:<hex>`` as written, anything else hashed.

    Raises ValueError for a ``sha256:`` entry that is not 64 hex digits (a typo must not turn
    into a key that is the typo itself)."""
    if entry.lower().startswith(HASHED_PREFIX):
        hex_digest = entry[len(HASHED_PREFIX):]
        if not _HEX_DIGEST.match(hex_digest):
            raise ValueError("a sha256: key must be followed by 64 hex digits")
        return bytes.fromhex(hex_digest)
    if not entry:
        raise ValueError("an API key must not be empty")
    return key_digest(entry)


def matches_any(supplied: str, digests: Iterable[bytes]) -> bool:
    """Whether ``supplied`` is one of the keys with these digests, in constant time.

    Every digest is compared (no early exit), each comparison is ``hmac.compare_digest`` over
    two 32-byte digests."""
    candidate = key_digest(supplied)
    found = False
    for digest in digests:
        found |= hmac.compare_digest(candidate, digest)
    return found
