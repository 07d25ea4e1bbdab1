"""Addresses to people and companies: who is on our side, who is the counterparty, which account."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal

from mailsvc.linking.model import AccountRef, ContactRef, Facts, UserRef
from mailsvc.mail import Address, ParsedMail


@lru_cache(maxsize=1)
def freemail_domains() -> frozenset[str]:
    text = resources.files("mailsvc.linking").joinpath("data/freemail.txt").read_text("utf-8")
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line.strip() and line[0] != "#"
    )


def is_freemail(domain: str) -> bool:
    return domain.lower() in freemail_domains()


@dataclass(frozen=True, slots=True)
class Parties:
    """The mail's direction, our user on it (if any) and the outside addresses, best first."""

    direction: Literal["incoming", "outgoing"]
    user: UserRef | None
    counterparties: tuple[str, ...]


def _addresses(items: Iterable[Address], exclude: frozenset[str]) -> tuple[str, ...]:
    seen: list[str] = []
    for item in items:
        if item.email not in exclude and item.email not in seen:
            seen.append(item.email)
    return tuple(seen)


def find_parties(mail: ParsedMail, facts: Facts, intake: frozenset[str]) -> Parties:
    """Outgoing when the sender is one of our users; otherwise the sender is the counterparty."""
    sender = mail.sender
    user = facts.users.get(sender.email) if sender else None
    if user is not None:
        others = _addresses((*mail.to, *mail.cc), intake)
        return Parties("outgoing", user, tuple(a for a in others if a not in facts.users))
    senders = _addresses((*mail.reply_to, *mail.from_), intake)
    return Parties("incoming", None, tuple(a for a in senders if a not in facts.users))


def wanted_addresses(mail: ParsedMail) -> frozenset[str]:
    return frozenset(a.email for a in (*mail.from_, *mail.reply_to, *mail.to, *mail.cc))


def wanted_domains(emails: Iterable[str]) -> frozenset[str]:
    domains = (email.rpartition("@")[2] for email in emails)
    return frozenset(d for d in domains if d and not is_freemail(d))


@dataclass(frozen=True, slots=True)
class Counterparty:
    email: str | None
    contact: ContactRef | None
    account: AccountRef | None
    ambiguous: bool = False


def resolve_counterparty(addresses: tuple[str, ...], facts: Facts) -> Counterparty:
    """The first address that is a known contact wins; else the first whose domain is an account's.

    Several contacts on one address: the one with an account is preferred, ties are ambiguous and
    link the first by id. Several accounts on one domain: no account is linked (ambiguous).
    """
    for email in addresses:
        contacts = facts.contacts.get(email, ())
        if contacts:
            ranked = sorted(contacts, key=lambda c: (c.account_id is None, c.id))
            contact = ranked[0]
            account = facts.accounts.get(contact.account_id) if contact.account_id else None
            return Counterparty(email, contact, account, ambiguous=len(contacts) > 1)
    for email in addresses:
        candidates = facts.accounts_by_domain.get(email.rpartition("@")[2], ())
        if len(candidates) == 1:
            return Counterparty(email, None, candidates[0])
        if len(candidates) > 1:
            return Counterparty(email, None, None, ambiguous=True)
    return Counterparty(addresses[0] if addresses else None, None, None)
