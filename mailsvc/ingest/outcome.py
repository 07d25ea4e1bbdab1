"""What became of one message: the value every intake adapter reports back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

OutcomeKind = Literal[
    "linked",
    "lead_created",
    "ticket_created",
    "ticket_updated",
    "ignored",
    "duplicate",
    "quarantined",
    "accepted",  # committed to the intake, not decided yet (the SMTP 250 of the staged intake)
    "dropped",  # a never-log rule named it: nothing stored (docs/linking.md)
]

LINK_NAMES = ("account", "contact", "owner", "opportunity", "ticket", "inbox_lead")


class QuarantineReason(str):
    """Why a mail went to quarantine: the text shown and stored. Callers match the type (the
    subclass), never the text."""

    prefix: ClassVar[str] = ""

    @classmethod
    def of(cls, detail: str) -> Self:
        return cls(f"{cls.prefix}{detail}")


class TooLarge(QuarantineReason):
    """Larger than ``MAILSVC_MAX_MESSAGE_BYTES``."""

    @classmethod
    def limit(cls, max_bytes: int) -> TooLarge:
        return cls(f"message larger than {max_bytes} bytes")


class Unparseable(QuarantineReason):
    """The message itself is broken."""

    prefix = "unparseable: "


class LimitExceeded(QuarantineReason):
    """The MIME structure is beyond the configured limits (depth, parts, attachments, size)."""

    prefix = "limit exceeded: "


class ParserFailed(QuarantineReason):
    """The parser failed on the message (a bug, or a message it cannot handle)."""

    prefix = "parser error: "


class ProcessingFailed(QuarantineReason):
    """Storing or deciding failed after parsing: our fault, not the mail's; a retry after a fix
    may store it."""

    prefix = "processing error: "


def stored_reason(text: str) -> QuarantineReason:
    """A reason read back from the store, as the type it was written as."""
    for kind in (LimitExceeded, ParserFailed, ProcessingFailed, Unparseable):
        if text.startswith(kind.prefix):
            return kind(text)
    if text.startswith("message larger than"):
        return TooLarge(text)
    return QuarantineReason(text)


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    email_id: int | None = None
    message_id: str | None = None
    rule: str | None = None
    links: dict[str, int | None] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    quarantine_id: int | None = None
    reason: QuarantineReason | None = None
    automatic: bool = False
    intake_id: int | None = None  # the accepted mail's row in the intake ("queued as N")
    # The linking rules checked, in chain order, the deciding one last.
    rules_tried: tuple[str, ...] = ()

    @property
    def in_quarantine(self) -> bool:
        """Quarantined now, or earlier (a duplicate of a quarantined mail)."""
        if self.kind == "quarantined":
            return True
        return self.kind == "duplicate" and self.email_id is None and bool(self.quarantine_id)

    @property
    def mail_at_fault(self) -> bool:
        """Quarantined for what the mail is (too large, unparseable), not for our failure."""
        return self.kind == "quarantined" and not isinstance(self.reason, ProcessingFailed)

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
        if self.rules_tried:
            body["rules_tried"] = list(self.rules_tried)
        if self.kind == "quarantined":
            body["quarantine_id"] = self.quarantine_id
            body["reason"] = self.reason
        if self.intake_id is not None:
            body["intake_id"] = self.intake_id
        return body


# A mail a never-log rule dropped: nothing of it is stored, so this is all there is to report.
DROPPED = Outcome("dropped", rule="never_log")
