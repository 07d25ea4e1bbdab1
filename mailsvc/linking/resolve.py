"""Addresses to people and companies: who is on our side, who is the counterparty, which account."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from mailsvc.freemail import is_freemail
from mailsvc.linking.model import AccountRef, ContactRef, Facts, Policy, UserRef
from mailsvc.mail import Address, ParsedMail


def internal_domains(policy: Policy, facts: Facts) -> frozenset[str]:
    """``MAILSVC_INTERNAL_DOMAINS``; unset, the domains of our own users' (non-freemail) addresses,
    so a team mailbox such as ``vertrieb@`` of the company is one of us, not a customer."""
    return policy.internal_domains or facts.user_domains


def pattern_keys(email: str) -> tuple[str, ...]:
    """What an address/domain rule may name to match ``email``: the address, its domain and each
    parent domain (``hr@mail.example.com``: ``mail.example.com``, ``example.com``)."""
    email = email.strip().lower()
    labels = email.rpartition("@")[2].split(".")
    parents = tuple(".".join(labels[i:]) for i in range(len(labels) - 1) if labels[i])
    return (email, *parents)


def matches(email: str, patterns: Iterable[str] | frozenset[str]) -> bool:
    """Whether an address or a domain (parent domains included) in ``patterns`` names ``email``."""
    wanted = patterns if isinstance(patterns, frozenset) else frozenset(patterns)
    return any(key in wanted for key in pattern_keys(email))


def user_domains(addresses: Iterable[str]) -> frozenset[str]:
    """The domains of users' addresses that name our company (freemail domains do not)."""
    domains = (a.rpartition("@")[2].lower() for a in addresses)
    return frozenset(d for d in domains if d and not is_freemail(d))


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


def find_parties(
    mail: ParsedMail, facts: Facts, intake: frozenset[str], internal: frozenset[str] = frozenset()
) -> Parties:
    """Outgoing when the sender is one of our users; otherwise the sender is the counterparty.

    A sender of an internal domain who is no user (a team mailbox) writing to outside addresses
    is outgoing as well, without a user. Counterparties are never our users, intake addresses or
    addresses of internal domains.
    """
    sender = mail.sender
    user = facts.users.get(sender.email) if sender else None
    recipients = _external(_addresses((*mail.to, *mail.cc), intake), facts, internal)
    if user is not None:
        return Parties("outgoing", user, recipients)
    if sender is not None and sender.domain in internal and recipients:
        return Parties("outgoing", None, recipients)
    senders = _addresses((*mail.reply_to, *mail.from_), intake)
    return Parties("incoming", None, _external(senders, facts, internal))


def _external(
    addresses: tuple[str, ...], facts: Facts, internal: frozenset[str]
) -> tuple[str, ...]:
    return tuple(
        a for a in addresses if a not in facts.users and a.rpartition("@")[2] not in internal
    )


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
    ambiguous: tuple[str, ...] = ()


def resolve_counterparty(addresses: tuple[str, ...], facts: Facts) -> Counterparty:
    """The first address that is a known contact wins; else the first whose domain is an account's.

    Several contacts on one address: the one with an account is preferred, then the lowest id
    (noted ``ambiguous:contact``). A contact without account takes its domain's account. Several
    accounts on one domain: no account is linked (``ambiguous:domain``). Other addresses that
    point to a different account are noted (``ambiguous:several_accounts``), never linked.
    """
    for email in addresses:
        contacts = facts.contacts.get(email, ())
        if contacts:
            ranked = sorted(contacts, key=lambda c: (c.account_id is None, c.id))
            contact = ranked[0]
            notes: tuple[str, ...] = ("ambiguous:contact",) if len(contacts) > 1 else ()
            if contact.account_id:
                account = facts.accounts.get(contact.account_id)
            else:
                account, domain_notes = _account_by_domain(email, facts)
                notes += domain_notes
            return Counterparty(email, contact, account, notes + _others(addresses, account, facts))
    for email in addresses:
        account, notes = _account_by_domain(email, facts)
        if account is not None or notes:
            return Counterparty(email, None, account, notes + _others(addresses, account, facts))
    return Counterparty(addresses[0] if addresses else None, None, None)


def _account_by_domain(email: str, facts: Facts) -> tuple[AccountRef | None, tuple[str, ...]]:
    candidates = facts.accounts_by_domain.get(email.rpartition("@")[2], ())
    if len(candidates) == 1:
        return candidates[0], ()
    if len(candidates) > 1:
        return None, ("ambiguous:domain",)
    return None, ()


def _others(addresses: tuple[str, ...], chosen: AccountRef | None, facts: Facts) -> tuple[str, ...]:
    """A note when other counterparties belong to another account than the chosen one."""
    if chosen is None:
        return ()
    accounts: set[int] = set()
    for email in addresses:
        accounts |= {c.account_id for c in facts.contacts.get(email, ()) if c.account_id}
        accounts |= {a.id for a in facts.accounts_by_domain.get(email.rpartition("@")[2], ())}
    accounts.discard(chosen.id)
    return ("ambiguous:several_accounts",) if accounts else ()
