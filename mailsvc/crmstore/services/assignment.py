"""Automatic assignment of new tickets to support users, by ticket type and by load.

A ticket created without an owner (the intake's ticket from a sender nobody owns, or one opened
through the API without ``owner_id``) goes to a user: to one of the users configured for its type
(``MAILSVC_TICKET_ASSIGNEES``) when any of them is active, else to an active support user. Among
the candidates the one with the fewest open tickets (open or in progress) wins; a tie goes to the
one whose newest ticket is the oldest (round-robin), then to the lowest id, so the choice is
deterministic.

The loads are read once (one aggregate query) into an :class:`Assigner`, which then counts the
tickets it hands out itself: the intake assigns a whole batch of new tickets with one query. The
query takes no lock: two transactions assigning at the same moment may both pick the same least
loaded user (the next assignment sees both tickets and evens it out), but they never wait for
each other, so assignment can neither deadlock nor fail a ticket.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mailsvc.crmstore.models import Ticket, TicketStatus, User, UserRole

ASSIGNMENT_KEY = "mailsvc.ticket_assignment"
Mode = Literal["least_open", "off"]
Rule = Literal["type", "least_open"]
# The statuses that count as a user's load.
LOADED = (TicketStatus.OPEN, TicketStatus.IN_PROGRESS)


@dataclass(frozen=True, slots=True)
class AssignmentPolicy:
    """How new tickets without an owner are assigned (from the settings)."""

    mode: Mode = "least_open"
    # Ticket type -> the addresses of the users its tickets go to.
    by_type: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset(a.strip().lower() for users in self.by_type.values() for a in users)


@dataclass(frozen=True, slots=True)
class Load:
    """A candidate and how busy it is: open tickets, and the id of its newest ticket (0: none)."""

    user_id: int
    email: str
    support: bool
    open_tickets: int
    newest_ticket: int

    def rank(self) -> tuple[int, int, int]:
        return (self.open_tickets, self.newest_ticket, self.user_id)


@dataclass(frozen=True, slots=True)
class Assignment:
    user_id: int
    rule: Rule
    open_tickets: int  # the user's open tickets before this one


def pick(loads: Sequence[Load]) -> Load | None:
    """The least loaded candidate; ties: assigned longest ago, then the lowest id."""
    return min(loads, key=Load.rank, default=None)


class Assigner:
    """Assigns the tickets of one transaction from loads read once, counting its own choices."""

    def __init__(self, policy: AssignmentPolicy, loads: Sequence[Load]) -> None:
        self.policy = policy
        self._loads = {load.user_id: load for load in loads}
        self._next = max((load.newest_ticket for load in loads), default=0) + 1

    def _candidates(self, ticket_type: str) -> tuple[list[Load], Rule]:
        listed = self.policy.by_type.get(ticket_type.strip().lower(), ())
        wanted = {address.strip().lower() for address in listed}
        typed = [load for load in self._loads.values() if load.email in wanted]
        if typed:
            return typed, "type"
        return [load for load in self._loads.values() if load.support], "least_open"

    def assign(self, ticket_type: str) -> Assignment | None:
        """The user a new ticket of ``ticket_type`` goes to (None: assignment off, nobody)."""
        if self.policy.mode == "off":
            return None
        candidates, rule = self._candidates(ticket_type)
        chosen = pick(candidates)
        if chosen is None:
            return None
        # The ticket just handed out counts: the next tie goes to someone else.
        self._loads[chosen.user_id] = Load(chosen.user_id, chosen.email, chosen.support,
                                           chosen.open_tickets + 1, self._next)
        self._next += 1
        return Assignment(chosen.user_id, rule, chosen.open_tickets)


def policy_of(session: AsyncSession) -> AssignmentPolicy:
    """The session's policy (``configure_assignment``); without one, the default (least_open)."""
    policy = session.info.get(ASSIGNMENT_KEY)
    return policy if isinstance(policy, AssignmentPolicy) else AssignmentPolicy()


def configure_assignment(
    sessions: async_sessionmaker[AsyncSession], policy: AssignmentPolicy
) -> None:
    """Every session of the factory carries ``policy`` (keeping what else its info holds)."""
    info = dict(sessions.kw.get("info") or {})
    info[ASSIGNMENT_KEY] = policy
    sessions.configure(info=info)


async def load_assigner(session: AsyncSession) -> Assigner:
    """Read the candidates' loads in one query: active support users and the active users the
    type mapping names, each with its open tickets and its newest ticket."""
    policy = policy_of(session)
    if policy.mode == "off":
        return Assigner(policy, ())
    addresses = sorted(policy.addresses)
    is_support = User.role == UserRole.SUPPORT
    who = or_(is_support, func.lower(User.email).in_(addresses)) if addresses else is_support
    rows = await session.execute(
        select(
            User.id, User.email, User.role,
            func.coalesce(func.sum(case((Ticket.status.in_(LOADED), 1), else_=0)), 0),
            func.coalesce(func.max(Ticket.id), 0),
        )
        .outerjoin(Ticket, Ticket.owner_id == User.id)
        .where(User.active.is_(True), who)
        .group_by(User.id, User.email, User.role)
    )
    return Assigner(policy, [
        Load(int(user_id), str(email).lower(), role == UserRole.SUPPORT, int(open_), int(newest))
        for user_id, email, role, open_, newest in rows
    ])
