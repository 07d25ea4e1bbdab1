"""Real-world mail, damaged at random (truncated, bytes flipped, lines dropped or repeated), goes
through every pure step of the intake without an exception: parsed or refused with ParseError,
then classified, looked up and decided."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsvc.errors import ParseError
from mailsvc.ingest.classify import classify
from mailsvc.ingest.parse import dedup_key, parse_mail
from mailsvc.linking.decide import Policy, decide, reply_of, wanted
from mailsvc.linking.model import Facts
from mailsvc.linking.references import IdPatterns
from mailsvc.mail import Envelope
from tests.conftest import corpus_messages

# Small and medium messages keep each example fast; the large ones are covered unmutated elsewhere.
SOURCES = [p for p in corpus_messages() if p.stat().st_size < 60_000]
POLICY = Policy(
    patterns=IdPatterns("OPP", "TCK"),
    intake_addresses=frozenset({"bcc@crm.example", "sales@crm.example", "support@crm.example"}),
)
ENVELOPES = [
    Envelope(None, ("bcc@crm.example",), "bcc"),
    Envelope("x@outside.example", ("sales@crm.example",), "sales"),
    Envelope("", ("support@crm.example",), "support"),
]


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(Path(draw(st.sampled_from(SOURCES))).read_bytes())
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["truncate", "flip", "drop_line", "repeat_line", "insert"]))
        if action == "truncate":
            del data[at:]
        elif action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action in ("drop_line", "repeat_line"):
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            end = len(data) if end < 0 else end + 1
            line = bytes(data[start:end])
            if action == "drop_line":
                del data[start:end]
            else:
                data[start:start] = line * draw(st.integers(1, 50))
        else:
            data[at:at] = draw(st.sampled_from([
                b"\n\n", b"--", b"=?utf-8?b?", b"Content-Type: multipart/mixed; boundary=x\n",
                b"Content-Transfer-Encoding: base64\n", b"\xff\xfe\x00", b"\r", b"=\n", b"<",
            ]))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=damaged(), envelope=st.sampled_from(ENVELOPES))
def test_damaged_mail_never_raises_in_the_pure_steps(data: bytes, envelope: Envelope) -> None:
    try:
        mail = parse_mail(data)
    except ParseError:
        assert dedup_key(None, data).startswith("sha256:")
        return
    assert dedup_key(mail, data)
    kind = classify(mail, envelope, 30)
    want = wanted(mail, POLICY)
    reply = reply_of(mail)
    decision = decide(mail, envelope, Facts(), POLICY, kind, reply)
    assert decision.kind in {"link", "new_lead", "new_ticket", "ticket_update", "ignore"}
    assert want.emails.isdisjoint(POLICY.intake_addresses)
