"""The scale benchmark's bulk loader and mail set (benchmarks/scale*.py) on a tiny store."""

from __future__ import annotations

import sys
from pathlib import Path

from sqlalchemy import select

from mailsvc.crmstore.db import create_engine
from mailsvc.crmstore.models import Email, QuarantinedMail

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import scale
import scale_seed

SIZES = scale_seed.Sizes(contacts=60, accounts=12, emails=40, users=4)


async def test_seeded_store_is_consistent_and_the_mail_set_links_as_designed(
    database_url: str,
) -> None:
    await scale_seed.seed(database_url, SIZES)
    counts, problems = await scale_seed.check(database_url)
    assert counts == scale_seed.expected_counts(SIZES)
    assert problems == dict.fromkeys(scale_seed.CHECKS, 0)

    store = scale.Store("tiny", SIZES, database_url, None)
    run = await scale.timed_run(store, 60, 0, "t", 1, scale.Capture())
    assert sum(run.outcomes.values()) == 60
    assert "quarantined" not in run.outcomes

    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(Email.message_id, Email.rule)
                                      .where(Email.message_id.like("scale-t-%")))
            rules = {(int(mid.split("-")[2].split(".")[0]), rule) for mid, rule in rows}
            assert await conn.scalar(select(QuarantinedMail.id)) is None
    finally:
        await engine.dispose()
    kinds = dict(enumerate(scale.mail_kinds(60, "t")))
    by_kind: dict[str, set[str]] = {}
    for n, rule in rules:
        by_kind.setdefault(kinds[n], set()).add(rule)
    assert by_kind["new_person"] == {"new_lead"}
    assert by_kind["opportunity_id"] == {"subject_id"}
    assert by_kind["ticket_id"] == {"subject_id"}
    assert by_kind["contact"] <= {"single_open_record", "address"}
    assert "thread" in by_kind["reply"]
    assert by_kind["reply"] <= {"thread", "single_open_record", "address"}

