"""The decision: which records a mail belongs to, or what to create for it, and the rule why.

``decide`` works out who is on the mail (direction, forwards, counterparty), then walks the
chain of rules (``mailsvc.linking.rules.RULES``); the first rule that decides names itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from email.utils import getaddresses
from typing import Literal

from mailsvc.linking.forwards import Forwarded, find_forwarded
from mailsvc.linking.model import (
    HUMAN,
    Facts,
    LinkDecision,
    MailKind,
    Policy,
    Rule,
    UserRef,
    Wanted,
)
from mailsvc.linking.references import (
    IdPatterns,
    RecordId,
    find_record_ids,
    parse_message_ids,
)
from mailsvc.linking.resolve import (
    Parties,
    find_parties,
    internal_domains,
    resolve_counterparty,
    wanted_addresses,
    wanted_domains,
)
from mailsvc.linking.rules import RULES, Context, View
from mailsvc.linking.text import Reply, body_text, split_reply
from mailsvc.mail import ARCHIVE_SOURCE, Envelope, ParsedMail, split_extension

__all__ = ["Policy", "address_ids", "context", "decide", "reply_of", "wanted"]

Direction = Literal["incoming", "outgoing"]


def wanted(mail: ParsedMail, policy: Policy, envelope: Envelope | None = None) -> Wanted:
    """What must be looked up in the store to decide on this mail (forwarded original included,
    and the records its recipient addresses name when the ``envelope`` is given)."""
    forwarded = find_forwarded(mail)
    emails = set(wanted_addresses(mail))
    subjects = [mail.subject]
    # In-Reply-To last: the store answers the newest (last) reference first.
    thread_headers = [*mail.references, *mail.in_reply_to]
    if forwarded is not None:
        emails |= {a.email for a in (*forwarded.from_, *forwarded.to, *forwarded.cc)}
        subjects.append(forwarded.subject)
        thread_headers += [*forwarded.in_reply_to, *forwarded.references]
    emails = {e for e in emails if policy.intake_base(e) is None}
    thread = tuple(dict.fromkeys(thread_headers))
    parsed = tuple(dict.fromkeys(m for ids in map(parse_message_ids, thread) for m in ids))
    named = address_ids(mail, envelope, policy) if envelope is not None else ()
    return Wanted(
        emails=frozenset(emails),
        domains=wanted_domains(emails),
        record_ids=tuple(dict.fromkeys((*named, *_subject_ids(subjects, policy.patterns)))),
        message_ids=parsed or thread,
        senders=frozenset({mail.sender.email} if mail.sender else ()),
    )


def _subject_ids(subjects: list[str], patterns: IdPatterns) -> tuple[RecordId, ...]:
    return tuple(dict.fromkeys(i for s in subjects for i in find_record_ids(s, patterns)))


# Headers that name the mailbox a mail was delivered to (set by the delivering server).
DELIVERY_HEADERS = ("Delivered-To", "X-Original-To")


def address_ids(mail: ParsedMail, envelope: Envelope, policy: Policy) -> tuple[RecordId, ...]:
    """The records named by the intake addresses with an extension the mail was sent to
    (``bcc+OPP-12@...``): the envelope's recipients; when none has one (an IMAP mailbox plays
    the recipient), the Delivered-To, X-Original-To, To and Cc addresses of the intake role the
    mail arrived on."""
    found = _extension_ids(envelope.rcpt_tos, policy, None)
    if found:
        return found
    delivered = [address for name in DELIVERY_HEADERS for value in mail.header_all(name)
                 for _, address in getaddresses([value])]
    headers = [*delivered, *(a.email for a in (*mail.to, *mail.cc))]
    return _extension_ids(headers, policy, str(envelope.role))


def _extension_ids(
    addresses: Iterable[str], policy: Policy, role: str | None
) -> tuple[RecordId, ...]:
    roles = dict(policy.intake_roles)
    found: dict[RecordId, None] = {}
    for address in addresses:
        base, extension = split_extension(address, policy.recipient_delimiter)
        if extension is None or base not in policy.intake_addresses:
            continue
        if role is not None and roles.get(base) != role:
            continue
        found.update(dict.fromkeys(find_record_ids(extension, policy.patterns)))
    return tuple(found)


def decide(
    mail: ParsedMail,
    envelope: Envelope,
    facts: Facts,
    policy: Policy,
    kind: MailKind = HUMAN,
    reply: Reply | None = None,
    *,
    sender_verified: bool = True,
) -> LinkDecision:
    """Walk the chain of rules; the first that decides names itself in ``rule``.

    ``reply`` is ``reply_of(mail)`` when the caller worked it out already (it is pure and costly).
    ``sender_verified`` is False when the receiving server could not verify that a mail with one
    of our users in its From was sent by us (rule ``sender_unverified``).
    """
    ctx = context(mail, envelope, facts, policy, kind, reply, sender_verified=sender_verified)
    tried: list[Rule] = []
    for spec in RULES:
        tried.append(spec.rule)
        decision = spec.check(ctx)
        if decision is not None:
            return replace(decision, rule=spec.rule, rules_tried=tuple(tried))
    raise AssertionError("the last rule of the chain always decides")


def context(
    mail: ParsedMail,
    envelope: Envelope,
    facts: Facts,
    policy: Policy,
    kind: MailKind = HUMAN,
    reply: Reply | None = None,
    *,
    sender_verified: bool = True,
) -> Context:
    """What every rule looks at: who is on the mail, the IDs of its subject (unknown ones noted)
    and the decision a rule starts from (ignore, with the mail's direction, kind and notes)."""
    view = _view(mail, facts, policy, reply)
    subjects = [mail.subject, *([view.forwarded.subject] if view.forwarded else [])]
    ids = _subject_ids(subjects, policy.patterns)
    named = address_ids(mail, envelope, policy)
    label = policy.patterns.label
    unknown = tuple(f"unknown_address:{label(i)}" for i in named if i not in facts.records)
    unknown += tuple(f"unknown_id:{label(i)}" for i in ids if i not in facts.records)
    base = LinkDecision(
        "ignore", Rule.NO_MATCH, direction=view.parties.direction, automatic=kind.machine,
        mail_kind=kind.name, notes=view.notes + unknown, reply_text=view.reply.text,
    )
    return Context(mail, envelope.role, facts, policy, kind, view, ids, base, sender_verified,
                   address_ids=named, historical=envelope.source == ARCHIVE_SOURCE)


def reply_of(mail: ParsedMail) -> Reply:
    """The new part of the mail's own text (a forwarded original's is worked out in ``decide``)."""
    return split_reply(body_text(mail))


def _intake_on(mail: ParsedMail, policy: Policy) -> frozenset[str]:
    """The intake addresses, and those with an extension on the mail (never counterparties)."""
    on_mail = (a.email for a in (*mail.to, *mail.cc, *mail.from_, *mail.reply_to))
    return policy.intake_addresses | {e for e in on_mail if policy.intake_base(e) is not None}


def _view(mail: ParsedMail, facts: Facts, policy: Policy, own: Reply | None = None) -> View:
    internal = internal_domains(policy, facts)
    intake = _intake_on(mail, policy)
    parties = find_parties(mail, facts, intake, internal)
    names = {a.email: a for a in (*mail.cc, *mail.to, *mail.from_, *mail.reply_to)}
    forwarded = None
    reply = own if own is not None else reply_of(mail)
    notes: tuple[str, ...] = ()
    if parties.user is not None and not parties.counterparties:
        # A user who sends a mail to no outside address but forwards one means its original.
        forwarded = find_forwarded(mail)
    if forwarded is not None:
        names.update({a.email: a for a in (*forwarded.cc, *forwarded.to, *forwarded.from_)})
        original = _forwarded_parties(forwarded, parties.user, facts, policy, internal)
        if original.counterparties:
            parties = original
            reply = split_reply(forwarded.body)
            notes = (f"forwarded:{forwarded.style}",)
        else:
            forwarded = None
    counterparty = resolve_counterparty(parties.counterparties, facts)
    subject = forwarded.subject if forwarded is not None else mail.subject
    return View(
        parties, counterparty, names, forwarded, reply, notes + counterparty.ambiguous, subject
    )


def _forwarded_parties(
    forwarded: Forwarded, user: UserRef | None, facts: Facts, policy: Policy,
    internal: frozenset[str],
) -> Parties:
    """The original's counterparties: its sender, or its recipients if one of us wrote it."""
    sender = forwarded.sender
    if sender is not None and sender.email in facts.users:
        others = [a.email for a in (*forwarded.to, *forwarded.cc)]
        direction: Direction = "outgoing"
    else:
        others = [a.email for a in forwarded.from_]
        direction = "incoming"
    external = tuple(
        dict.fromkeys(
            e for e in others if policy.intake_base(e) is None and e not in facts.users
            and e.rpartition("@")[2] not in internal
        )
    )
    return Parties(direction, user, external)
