"""What became of one message: the value every intake adapter reports back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

OutcomeKind = Literal[
    "linked",
    "lead_created",
    "ticket_created",
    "ticket_updated",
    "ignored",
    "duplicate",
    "quarantined",
    "accepted",  # committed to the intake, not decided yet (the SMTP 250 of the staged intake)
]

LINK_NAMES = ("account", "contact", "owner", "opportunity", "ticket", "inbox_lead")


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    email_id: int | None = None
    message_id: str | None = None
    rule: str | None = None
    links: dict[str, int | None] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    quarantine_id: int | None = None
    reason: str | None = None
    automatic: bool = False
    intake_id: int | None = None  # the accepted mail's row in the intake ("queued as N")

    def to_json(self) -> dict[str, Any]:
        """The stable JSON shape of ``mailsvc ingest`` (and the body of ``email.*`` events)."""
        links = {name: self.links.get(name) for name in LINK_NAMES}
        body: dict[str, Any] = {
            "outcome": self.kind,
            "email_id": self.email_id,
            "message_id": self.message_id,
            "rule": self.rule,
            "links": links,
            **links,
            "notes": list(self.notes),
            "automatic": self.automatic,
        }
        if self.kind == "quarantined":
            body["quarantine_id"] = self.quarantine_id
            body["reason"] = self.reason
        if self.intake_id is not None:
            body["intake_id"] = self.intake_id
        return body
