"""Every message of the real-world corpus goes through the whole pipeline: stored or quarantined
with a reason, and the pipeline keeps going."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import func, select

from mailsvc.bootstrap import Services
from mailsvc.crmstore.models import Email, QuarantinedMail
from mailsvc.mail import Envelope, RawMail
from tests.conftest import BCC, SUPPORT, corpus_messages


async def test_every_corpus_message_is_stored_or_quarantined(services: Services) -> None:
    paths = corpus_messages()
    assert len(paths) == 307
    outcomes = []
    for index, path in enumerate(paths):
        role, rcpt = ("support", SUPPORT) if index % 2 else ("bcc", BCC)
        raw = RawMail(path.read_bytes(), Envelope("sender@outside.example", (rcpt,), role, "file"))
        outcomes.append((path, await services.pipeline.submit(raw)))

    kinds = Counter(outcome.kind for _, outcome in outcomes)
    for path, outcome in outcomes:
        assert outcome.kind != "quarantined" or outcome.reason, path
        assert outcome.email_id or outcome.quarantine_id, path
    async with services.sessions() as session:
        emails = await session.scalar(select(func.count()).select_from(Email))
        quarantined = await session.scalar(select(func.count()).select_from(QuarantinedMail))
        raw_bytes = await session.scalar(select(func.sum(Email.size)))
    # Some corpus files reuse another file's Message-ID (test fixtures derived from one mail): the
    # later one is a duplicate of a stored mail with that Message-ID; everything else is kept.
    stored_ids = {o.message_id for _, o in outcomes if o.kind != "duplicate"}
    for path, outcome in outcomes:
        if outcome.kind == "duplicate":
            assert outcome.message_id in stored_ids, path
    assert emails + quarantined == len(paths) - kinds["duplicate"]
    assert kinds["duplicate"] <= 40
    assert raw_bytes and raw_bytes > 1_000_000


async def test_the_same_corpus_again_is_all_duplicates(services: Services) -> None:
    paths = corpus_messages()[:60]
    raws = [RawMail(p.read_bytes(), Envelope(None, (BCC,), "bcc", "file")) for p in paths]
    first = await services.pipeline.process([await services.pipeline.prepare(r) for r in raws])
    again = await services.pipeline.process([await services.pipeline.prepare(r) for r in raws])
    assert {o.kind for o in again} == {"duplicate"}
    assert [o.email_id or o.quarantine_id for o in again] == [
        o.email_id or o.quarantine_id for o in first
    ]
