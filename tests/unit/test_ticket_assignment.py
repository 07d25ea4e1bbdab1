"""The choice of the assignee, without a database: least open, then longest ago, then lowest id."""

from __future__ import annotations

import pytest

from mailsvc.config import load_settings
from mailsvc.crmstore.services.assignment import Assigner, AssignmentPolicy, Load, pick
from mailsvc.errors import ConfigError


def load(user_id: int, open_tickets: int, newest: int, *, support: bool = True,
         email: str | None = None) -> Load:
    return Load(user_id, email or f"u{user_id}@ours.example", support, open_tickets, newest)


def test_the_fewest_open_tickets_win_then_the_longest_ago_then_the_lowest_id() -> None:
    assert pick([load(1, 3, 10), load(2, 1, 50), load(3, 2, 1)]).user_id == 2  # type: ignore[union-attr]
    assert pick([load(1, 1, 10), load(2, 1, 5)]).user_id == 2  # type: ignore[union-attr]
    assert pick([load(2, 0, 0), load(1, 0, 0)]).user_id == 1  # type: ignore[union-attr]
    assert pick([]) is None


def test_a_batch_goes_round_robin_among_equally_loaded_users() -> None:
    assigner = Assigner(AssignmentPolicy(), [load(1, 0, 0), load(2, 0, 0), load(3, 2, 7)])
    chosen = [assigner.assign("question") for _ in range(5)]
    assert [a.user_id for a in chosen if a] == [1, 2, 1, 2, 3]
    assert [a.open_tickets for a in chosen if a] == [0, 0, 1, 1, 2]
    assert {a.rule for a in chosen if a} == {"least_open"}


def test_a_type_goes_to_its_users_and_falls_back_to_support_when_none_is_active() -> None:
    policy = AssignmentPolicy(by_type={"complaint": ("Boss@Ours.example",),
                                       "incident": ("gone@ours.example",)})
    assigner = Assigner(policy, [load(1, 0, 0), load(9, 5, 3, support=False,
                                                       email="boss@ours.example")])
    complaint = assigner.assign("Complaint")
    assert complaint is not None and (complaint.user_id, complaint.rule) == (9, "type")
    incident = assigner.assign("incident")
    assert incident is not None and (incident.user_id, incident.rule) == (1, "least_open")
    # A user of a type list who is not support gets only that type's tickets.
    question = assigner.assign("question")
    assert question is not None and question.user_id == 1


def test_off_assigns_nobody_and_nobody_to_pick_is_none() -> None:
    assert Assigner(AssignmentPolicy(mode="off"), [load(1, 0, 0)]).assign("question") is None
    assert Assigner(AssignmentPolicy(), []).assign("question") is None


def test_the_settings_read_the_mode_and_the_type_lists() -> None:
    settings = load_settings(database_url="sqlite+aiosqlite:///x.db",
                             ticket_assignees={"Complaint": [" Lea@Example.com "]})
    assert settings.ticket_assignment == "least_open"
    assert settings.ticket_assignees == {"complaint": ("lea@example.com",)}
    with pytest.raises(ConfigError, match="not an e-mail address"):
        load_settings(database_url="sqlite+aiosqlite:///x.db",
                      ticket_assignees={"complaint": ["lea"]})
