"""The pure work on one mail before its transaction: parse and key it, classify it, work out
what it wants, its newest reply, whether its sender is proven, and the columns of its e-mail
row that depend on the mail alone.

It runs in the deciding process, or in that process's parsing processes (``ingest/decider.py``).
Those import this module and nothing of the store (no SQLAlchemy, no models: the options bring
the column lengths), so they are up in a fraction of the time the whole service takes to load.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mailsvc.errors import ParseError
from mailsvc.ingest.classify import classify
from mailsvc.ingest.outcome import (
    LimitExceeded,
    ParserFailed,
    QuarantineReason,
    TooLarge,
    Unparseable,
)
from mailsvc.ingest.parse import (
    DEFAULT_LIMITS,
    MimeLimitExceeded,
    ParseLimits,
    mail_key,
    parse_mail,
)
from mailsvc.ingest.sanitize import fit_values
from mailsvc.ingest.trust import TrustPolicy, sender_verified
from mailsvc.linking.decide import Policy, reply_of, wanted
from mailsvc.linking.model import MailKind, Wanted
from mailsvc.linking.text import Reply
from mailsvc.mail import Address, ParsedMail, RawMail

logger = logging.getLogger(__name__)

# What a fork server imports once for the parsing processes it forks: this module and the
# parser (which parsing loads on first use); nothing of the store.
PRELOAD = [__name__, "mailparser"]

# Columns looked up as they are: never changed on the way in.
EXACT_COLUMNS = frozenset({"dedup_key"})


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message made ready before its transaction: parsed (or why not) and keyed."""

    raw: RawMail
    key: str
    parsed: ParsedMail | None
    problem: QuarantineReason | None = None
    # Pure work done before the queue (None: not done, the writer does it).
    kind: MailKind | None = None
    want: Wanted | None = None
    reply: Reply | None = None
    # Whether the header From is proven to be its author's (ingest/trust.py); unproven unless
    # the prepare step says so.
    sender_verified: bool = False
    # The e-mail row's columns that depend on the mail alone (``mail_values``), if worked out.
    values: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PrepareOptions:
    """What the pure per-mail work needs (picklable, for parsing in other processes)."""

    max_bytes: int
    max_received_headers: int
    policy: Policy
    limits: ParseLimits
    trust: TrustPolicy
    # The ``emails`` table's columns and their lengths (``sanitize.column_lengths``).
    email_columns: Mapping[str, int | None]


def prepare(raw: RawMail, max_bytes: int, limits: ParseLimits = DEFAULT_LIMITS) -> Prepared:
    """Parse and key one message; what cannot be parsed is prepared for quarantine."""
    key = mail_key(raw.data)
    if len(raw.data) > max_bytes:
        return Prepared(raw, key, None, TooLarge.limit(max_bytes))
    try:
        parsed = parse_mail(raw.data, limits)
    except MimeLimitExceeded as exc:
        return Prepared(raw, key, None, LimitExceeded.of(str(exc)))
    except ParseError as exc:
        return Prepared(raw, key, None, Unparseable.of(str(exc)))
    except Exception as exc:  # a parser bug must not lose the mail: quarantine it
        logger.exception("parser failed")
        return Prepared(raw, key, None, ParserFailed.of(repr(exc)))
    return Prepared(raw, key, parsed)


def parser_crashed(raw: RawMail) -> Prepared:
    """A mail whose parsing ended the process that parsed it, prepared for quarantine."""
    return Prepared(raw, mail_key(raw.data), None,
                    ParserFailed.of("the parsing process ended while it parsed this mail"))


def prepare_item(raw: RawMail, options: PrepareOptions) -> Prepared:
    """Parse, then do the pure per-mail work too, so the writer only decides and stores."""
    item = prepare(raw, options.max_bytes, options.limits)
    if item.parsed is None:
        return item
    try:
        return replace(
            item,
            kind=classify(item.parsed, raw.envelope, options.max_received_headers, raw.data),
            want=wanted(item.parsed, options.policy, raw.envelope),
            reply=reply_of(item.parsed),
            sender_verified=sender_verified(raw, item.parsed, options.trust),
            values=mail_values(item, options.email_columns),
        )
    except Exception:  # the writer tries again and quarantines the mail if it fails there
        logger.exception("preparing %s failed", item.key)
        return item


def prepare_items(raws: Sequence[RawMail], options: PrepareOptions) -> list[Prepared]:
    """Parse a chunk of mails (runs in a parsing process)."""
    return [prepare_item(raw, options) for raw in raws]


def mail_values(item: Prepared, columns: Mapping[str, int | None]) -> dict[str, Any]:
    """The columns of the mail's ``emails`` row that depend on the mail alone, cleaned and
    fitted: worked out with the parsing (in a parsing process when there is one), so the
    transaction that stores the mail does not spend its time on them."""
    mail = item.parsed
    assert mail is not None
    sender = mail.sender
    envelope = item.raw.envelope
    return fit_values(columns, {
        "dedup_key": item.key,
        "message_id": mail.message_id,
        "subject": mail.subject,
        "from_email": sender.email if sender else None,
        "from_name": sender.name if sender else None,
        "to": _addresses(mail.to),
        "cc": _addresses(mail.cc),
        "reply_to": _addresses(mail.reply_to),
        "sent_at": mail.date,
        "in_reply_to": list(mail.in_reply_to),
        "references": list(mail.references),
        "headers": [[name, value] for name, value in mail.headers],
        "text_body": mail.text,
        "html_body": mail.html,
        "envelope_from": envelope.mail_from,
        "envelope_to": list(envelope.rcpt_tos),
        "intake_role": str(envelope.role),
        "source": envelope.source,
    }, keep=EXACT_COLUMNS)


def _addresses(items: tuple[Address, ...]) -> list[dict[str, str]]:
    return [{"name": a.name, "email": a.email} for a in items]


# ---------------------------------------------------------------- in a parsing process


def ready() -> None:
    """Nothing: submitted to start a parsing process."""


# How often a parsing process looks whether the process it parses for is still there.
CREATOR_WATCH_SECONDS = 1.0


def end_with(creator: int) -> None:
    """In a parsing process: end when the process it parses for is gone. Killed (SIGKILL, the
    OOM killer), that process cannot shut its pool down, and the parsing processes (with the
    fork server they came from) would wait for work for ever, each restart of a decide worker
    leaving three more behind."""

    def watch() -> None:
        while True:
            time.sleep(CREATOR_WATCH_SECONDS)
            try:
                os.kill(creator, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # there, under another user: cannot be (it forked us)
                continue

    threading.Thread(target=watch, name="creator-watch", daemon=True).start()
    gc.freeze()  # what the fork server loaded lives as long as this process: not collected
