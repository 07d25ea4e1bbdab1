"""What a fresh install starts with, so it is usable at once: a lead and a deal pipeline with
stages and probabilities, an activity plan, standard loss reasons, ticket types and priorities.

Written by the migration ``0006_crm_defaults`` (only where nothing of the kind exists yet); every
row is ordinary data an admin edits, renames, moves or retires through the API afterwards.
The tables are described here with the few columns the seed writes, so the migration does not
depend on the models of later revisions."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy import Connection

# (name, kind, stages as (name, probability %))
PIPELINES: tuple[tuple[str, str, tuple[tuple[str, int], ...]], ...] = (
    ("Lead qualification", "lead", (
        ("New", 5), ("Contacted", 10), ("Qualifying", 20), ("Sales-ready", 30))),
    ("Sales pipeline", "deal", (
        ("Qualified", 20), ("Needs analysis", 30), ("Proposal", 50), ("Negotiation", 75),
        ("Verbal commitment", 90))),
)
# The deal pipeline's standard tasks: (subject, type, days after the start date)
ACTIVITY_PLAN: tuple[tuple[str, str, int], ...] = (
    ("Kick-off call", "call", 0),
    ("Needs analysis meeting", "meeting", 3),
    ("Send proposal", "task", 7),
    ("Follow up on the proposal", "call", 14),
)
LOSS_REASONS = ("Too expensive", "Chose a competitor", "No budget", "No decision",
                "Bad timing", "Requirements not met", "No response")
# The built-in values of the extensible lists, as rows an admin can rename, reorder or retire.
CHOICES: dict[str, tuple[str, ...]] = {
    "ticket_type": ("question", "incident", "problem", "complaint"),
    "priority": ("low", "normal", "high", "urgent"),
}

_pipelines = sa.table("pipelines", sa.column("id", sa.Integer), sa.column("name", sa.String),
                      sa.column("kind", sa.String), sa.column("position", sa.Integer),
                      sa.column("created_at", sa.DateTime(timezone=True)))
_stages = sa.table("stages", sa.column("pipeline_id", sa.Integer), sa.column("name", sa.String),
                   sa.column("position", sa.Integer), sa.column("probability", sa.Integer))
_plan = sa.table("activity_plan_steps", sa.column("pipeline_id", sa.Integer),
                 sa.column("position", sa.Integer), sa.column("type", sa.String),
                 sa.column("subject", sa.String), sa.column("offset_days", sa.Integer))
_reasons = sa.table("loss_reasons", sa.column("name", sa.String), sa.column("active", sa.Boolean))
_choices = sa.table("choice_options", sa.column("kind", sa.String), sa.column("name", sa.String),
                    sa.column("position", sa.Integer), sa.column("active", sa.Boolean))


def seed_defaults(connection: Connection) -> None:
    """Insert the defaults of every kind that is still empty (safe to run again)."""
    now = datetime.now(UTC)
    if not connection.scalar(sa.select(sa.func.count()).select_from(_pipelines)):
        for position, (name, kind, stages) in enumerate(PIPELINES):
            pipeline_id = connection.execute(
                _pipelines.insert().values(name=name, kind=kind, position=position,
                                           created_at=now).returning(_pipelines.c.id)
            ).scalar_one()
            connection.execute(_stages.insert(), [
                {"pipeline_id": pipeline_id, "name": stage, "position": i, "probability": p}
                for i, (stage, p) in enumerate(stages)])
            if kind == "deal":
                connection.execute(_plan.insert(), [
                    {"pipeline_id": pipeline_id, "position": i, "type": type_,
                     "subject": subject, "offset_days": days}
                    for i, (subject, type_, days) in enumerate(ACTIVITY_PLAN)])
    if not connection.scalar(sa.select(sa.func.count()).select_from(_reasons)):
        connection.execute(_reasons.insert(), [{"name": n, "active": True}
                                               for n in LOSS_REASONS])
    for kind, names in CHOICES.items():
        if not connection.scalar(sa.select(sa.func.count()).select_from(_choices)
                                 .where(_choices.c.kind == kind)):
            connection.execute(_choices.insert(), [
                {"kind": kind, "name": n, "position": i, "active": True}
                for i, n in enumerate(names)])
