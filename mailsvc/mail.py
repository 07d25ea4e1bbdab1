"""Plain values that travel through the intake: raw bytes with their envelope, a parsed mail."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Role(StrEnum):
    """The intake address a mail arrived on, and so what it is meant for (docs/linking.md)."""

    BCC = "bcc"
    SALES = "sales"
    SUPPORT = "support"


# The source of mail brought in by `mailsvc import --archive`: history, kept as history.
ARCHIVE_SOURCE = "archive"


def split_extension(address: str, delimiters: str) -> tuple[str, str | None]:
    """``local+extension@domain`` -> (``local@domain``, ``extension``), split at the first of the
    ``delimiters`` characters, as Postfix's ``recipient_delimiter`` does; lower case. Without a
    delimiter (or none configured) the address is its own base and there is no extension."""
    address = address.strip().lower()
    local, at, domain = address.rpartition("@")
    cut = min((i for i in (local.find(d) for d in delimiters) if i > 0), default=-1)
    if not at or cut < 0:
        return address, None
    return f"{local[:cut]}@{domain}", local[cut + 1:]


class IntakeRoles(dict[str, Role]):
    """Intake address (lower case) -> role; ``role_of`` also knows the addresses with an
    extension (``bcc+OPP-12@...``: the base address's role)."""

    def __init__(self, roles: Iterable[tuple[str, Role]] = (), delimiters: str = "") -> None:
        super().__init__(roles)
        self.delimiters = delimiters

    def role_of(self, address: str) -> Role | None:
        exact = self.get(address.strip().lower())
        if exact is not None:
            return exact
        return self.get(split_extension(address, self.delimiters)[0])


@dataclass(frozen=True, slots=True)
class Envelope:
    """Who the transport says the mail is from and for, and the intake role it arrived on."""

    mail_from: str | None
    rcpt_tos: tuple[str, ...]
    role: Role
    source: str = "smtp"  # smtp, lmtp, imap, file, archive, stdin
    peer: str | None = None  # the SMTP client's IP address
    authenticated: str | None = None  # the SMTP AUTH login (lower case), if the client logged in

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role(self.role))  # a plain "bcc" becomes Role.BCC

    @property
    def historical(self) -> bool:
        """Mail of an archive import: it happened before, nothing is answered or reopened."""
        return self.source == ARCHIVE_SOURCE


@dataclass(frozen=True, slots=True)
class RawMail:
    """The bytes exactly as received, and their envelope."""

    data: bytes
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox: a display name and a lower-cased address."""

    name: str
    email: str

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2]


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str | None
    content_type: str
    content: bytes
    content_id: str | None = None
    inline: bool = False


@dataclass(frozen=True, slots=True)
class ParsedMail:
    """What the parser made of a message. Header values are decoded text."""

    message_id: str | None
    subject: str
    from_: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    date: datetime | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    text: str
    html: str
    attachments: tuple[Attachment, ...] = ()
    content_type: str = "text/plain"
    defects: tuple[str, ...] = ()
    # Messages carried inside as message/rfc822 parts (forwarded originals), parsed the same way.
    enclosed: tuple[ParsedMail, ...] = field(default=())

    @property
    def sender(self) -> Address | None:
        return self.from_[0] if self.from_ else None

    def header(self, name: str) -> str | None:
        """The first value of a header, matched case-insensitively."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def header_all(self, name: str) -> tuple[str, ...]:
        wanted = name.lower()
        return tuple(value for key, value in self.headers if key.lower() == wanted)
