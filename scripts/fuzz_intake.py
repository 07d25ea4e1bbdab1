#!/usr/bin/env python3
"""Fuzz the pure intake steps with mutated real-world mail (hypothesis; docs/trust.md).

Every message of tests/corpus is a seed. Hypothesis picks one, applies up to eight mutations
(bytes flipped, inserted or deleted, slices repeated, lines dropped or repeated, pieces of another
mail spliced in, hostile fragments: NUL, CR-only lines, encoded words, MIME boundaries, deep
nesting, long lines, bare LF, invalid UTF-8), then runs what the intake runs before the database:

    parse_mail (with the intake's MIME limits) -> dedup_key -> classify -> wanted -> reply_of
    -> sender_verified (no DNS) -> decide on empty facts -> the row values, cleaned and fitted

A ParseError (MimeLimitExceeded included) is a correct answer: the mail is quarantined. Anything
else raised is a crash; the script prints the first few with the input that caused them (saved
under --crashes) and exits 1.

    .venv/bin/python scripts/fuzz_intake.py                 # 100,000 messages (the full size)
    .venv/bin/python scripts/fuzz_intake.py --count 300     # a quick slice
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailsvc.crmstore.models import Email  # noqa: E402
from mailsvc.errors import ParseError  # noqa: E402
from mailsvc.ingest.classify import classify  # noqa: E402
from mailsvc.ingest.parse import ParseLimits, dedup_key, parse_mail  # noqa: E402
from mailsvc.ingest.sanitize import fit_row  # noqa: E402
from mailsvc.ingest.trust import TrustPolicy, sender_verified  # noqa: E402
from mailsvc.linking.decide import Policy, decide, reply_of, wanted  # noqa: E402
from mailsvc.linking.model import Facts  # noqa: E402
from mailsvc.linking.references import IdPatterns  # noqa: E402
from mailsvc.mail import Envelope, RawMail  # noqa: E402

CORPUS = ROOT / "tests" / "corpus"
NOT_MAIL = {".md", ".yml", ".json"}
MAX_BYTES = 25 * 1024 * 1024
SEED_BYTES = 64 * 1024
LIMITS = ParseLimits()  # the defaults of MAILSVC_MIME_MAX_*
POLICY = Policy(
    patterns=IdPatterns("OPP", "TCK"),
    intake_addresses=frozenset({"bcc@crm.example", "sales@crm.example", "support@crm.example"}),
)
TRUST = TrustPolicy(
    authserv_ids=frozenset({"mx.crm.example"}), dns=lambda name, timeout=5: None,
)
ENVELOPES = [
    Envelope(None, ("bcc@crm.example",), "bcc", "smtp", "192.0.2.1", None),
    Envelope("x@outside.example", ("sales@crm.example",), "sales", "imap"),
    Envelope("", ("support@crm.example",), "support", "stdin", None, "anna@crm.example"),
]
FRAGMENTS = [
    b"\n\n", b"\r\n\r\n", b"\r", b"\n", b"\x00", b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"--",
    b"=?utf-8?b?", b"=?iso-2022-jp?q?=1B$B?=", b"?=", b"=\n", b"<", b">", b"\"", b"\\",
    b"Content-Type: multipart/mixed; boundary=x\n\n--x\n",
    b"Content-Type: message/rfc822\n\n",
    b"Content-Transfer-Encoding: base64\n", b"Content-Transfer-Encoding: quoted-printable\n",
    b"From: Anna <anna@crm.example>\n", b"Authentication-Results: mx.crm.example; dmarc=pass "
    b"header.from=crm.example\n", b"DKIM-Signature: v=1; d=crm.example; s=x; h=from; b=; bh=\n",
    b"Subject: Re: [OPP-1] [TCK-2]\n", b"Message-ID: <" + b"i" * 1200 + b">\n",
    b"References: " + b"<r@x> " * 300 + b"\n", b"To: " + b"a@b.example, " * 500 + b"\n",
    b"x" * 70_000, b"\t" * 1000, b"\x1b$B", b"\xef\xbb\xbf",
]
DEEP = b"".join(
    b'Content-Type: multipart/mixed; boundary="d%d"\n\n--d%d\n' % (i, i) for i in range(60)
)


def corpus(max_seed: int = SEED_BYTES) -> list[bytes]:
    """The corpus mails up to ``max_seed`` bytes: most of it, and quick enough that the count can
    be large (mutations still grow messages well beyond; the large mails are parsed unmutated by
    the test suite)."""
    paths = sorted(
        p for p in CORPUS.rglob("*")
        if p.is_file() and p.suffix not in NOT_MAIL
        and p.name not in {"iphone_reply_text", "COPYING", "LICENSE"}
        and p.stat().st_size <= max_seed
    )
    return [p.read_bytes() for p in paths]


def intake(data: bytes, envelope: Envelope) -> None:
    """The pure intake steps; raises only on a crash (a ParseError is an answer)."""
    try:
        mail = parse_mail(data, LIMITS)
    except ParseError:
        dedup_key(None, data)
        return
    dedup_key(mail, data)
    kind = classify(mail, envelope, 30)
    want = wanted(mail, POLICY)
    reply = reply_of(mail)
    verified = sender_verified(RawMail(data, envelope), mail, TRUST)
    decision = decide(mail, envelope, Facts(), POLICY, kind, reply, sender_verified=verified)
    sender = mail.sender
    fit_row(Email.__table__, {
        "message_id": mail.message_id, "subject": mail.subject,
        "from_email": sender.email if sender else None,
        "from_name": sender.name if sender else None,
        "to": [{"name": a.name, "email": a.email} for a in mail.to],
        "headers": [[k, v] for k, v in mail.headers], "text_body": mail.text,
        "html_body": mail.html, "reply_text": decision.reply_text, "notes": list(decision.notes),
        "envelope_from": envelope.mail_from, "rule": decision.rule,
    })
    _ = want


@dataclass
class Tally:
    count: int = 0
    parsed: int = 0
    bytes: int = 0
    crashes: list[tuple[bytes, str]] = field(default_factory=list)


Mutation = tuple[str, int, int, int]


def mutate(data: bytes, mutations: list[Mutation], seeds: list[bytes]) -> bytes:
    out = bytearray(data)
    for action, a, b, c in mutations:
        size = len(out)
        at = a % (size + 1)
        if action == "flip" and size:
            out[at % size] = b & 0xFF
        elif action == "insert":
            out[at:at] = _repeated(FRAGMENTS[b % len(FRAGMENTS)], 1 + c % 4)
        elif action == "delete":
            del out[at : at + 1 + b % 4096]
        elif action == "repeat":
            piece = bytes(out[at : at + 1 + b % 512])
            out[at:at] = _repeated(piece, 1 + c % 200)
        elif action == "line":
            start = out.rfind(b"\n", 0, at) + 1
            end = out.find(b"\n", at)
            end = size if end < 0 else end + 1
            line = bytes(out[start:end])
            if c % 2:
                del out[start:end]
            else:
                out[start:start] = _repeated(line, 1 + b % 100)
        elif action == "splice":
            other = seeds[b % len(seeds)]
            cut = c % (len(other) + 1)
            out[at:] = other[cut : cut + 65536]
        elif action == "nest":
            out[at:at] = DEEP[: (b % len(DEEP)) + 1]
        elif action == "bare_lf":
            out = bytearray(bytes(out).replace(b"\r\n", b"\n"))
        elif action == "cr_only":
            out = bytearray(bytes(out).replace(b"\r\n", b"\n").replace(b"\n", b"\r"))
        elif action == "truncate":
            del out[at:]
        del out[MAX_BYTES:]  # each step, not only at the end: repeats of repeats grow as a power
    return bytes(out)


def _repeated(piece: bytes, times: int) -> bytes:
    """``piece * times``, no longer than a message may be."""
    return piece * min(times, MAX_BYTES // max(1, len(piece)) + 1)


ACTIONS = ["flip", "insert", "delete", "repeat", "line", "splice", "nest", "bare_lf", "cr_only",
           "truncate"]
MUTATION = st.tuples(
    st.sampled_from(ACTIONS), st.integers(0, 2**31), st.integers(0, 2**31), st.integers(0, 2**31)
)


def run(count: int, seed: int = 0, crashes_dir: Path | None = None, quiet: bool = False) -> Tally:
    seeds = corpus()
    tally = Tally()
    started = time.perf_counter()

    @settings(
        max_examples=count, database=None, deadline=None, derandomize=False,
        phases=[Phase.generate], suppress_health_check=list(HealthCheck),
    )
    @given(
        index=st.integers(0, len(seeds) - 1),
        mutations=st.lists(MUTATION, min_size=0, max_size=8),
        which=st.integers(0, len(ENVELOPES) - 1),
    )
    def example(index: int, mutations: list[Mutation], which: int) -> None:
        data = mutate(seeds[index], mutations, seeds)
        tally.count += 1
        tally.bytes += len(data)
        try:
            intake(data, ENVELOPES[which])
        except Exception:
            tally.crashes.append((data, traceback.format_exc()))
            if crashes_dir is not None:
                crashes_dir.mkdir(parents=True, exist_ok=True)
                name = hashlib.sha256(data).hexdigest()[:16]
                (crashes_dir / f"{name}.eml").write_bytes(data)
        if not quiet and tally.count % 1000 == 0:
            print(f"{tally.count} messages, {len(tally.crashes)} crashes, "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    import random

    random.seed(seed)  # hypothesis draws from the global random when not derandomized
    example()
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crashes", type=Path, default=Path("fuzz-crashes"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # mail-parser logs every odd part
    started = time.perf_counter()
    tally = run(args.count, args.seed, args.crashes)
    elapsed = time.perf_counter() - started
    print(
        f"{tally.count} messages ({tally.bytes / 1e6:.0f} MB), {len(tally.crashes)} crashes, "
        f"{elapsed:.0f} s ({tally.count / elapsed:.0f}/s)"
    )
    for data, trace in tally.crashes[:5]:
        print(f"--- {len(data)} bytes: {data[:200]!r}\n{trace}")
    return 1 if tally.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
