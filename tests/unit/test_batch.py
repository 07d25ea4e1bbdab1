"""Deciding a group of mails on one facts load: merged lookups, per-mail facts, conflicts."""

from __future__ import annotations

from mailsvc.linking.batch import (
    KEYS,
    dependencies,
    effects,
    facts_for,
    may_change,
    merge_wanted,
)
from mailsvc.linking.model import (
    ContactRef,
    Fact,
    Facts,
    LeadDraft,
    LinkDecision,
    Links,
    RecordRef,
    ThreadRef,
    TicketDraft,
    TicketUpdateDraft,
    UserRef,
    Wanted,
)
from mailsvc.linking.references import RecordId

ANNA = UserRef(1, "anna@ours.example")
CARLA = ContactRef(20, 10, 1, "carla@acme.example")
TICKET = RecordRef(RecordId("ticket", 7), "resolved", 10, 21, 2)


def want(*emails: str, ids: tuple[RecordId, ...] = (), msgs: tuple[str, ...] = ()) -> Wanted:
    return Wanted(frozenset(emails), frozenset(e.rpartition("@")[2] for e in emails), ids, msgs)


def test_merge_keeps_every_key_once_in_order() -> None:
    one = want("a@x.example", ids=(RecordId("ticket", 1),), msgs=("m1", "m2"))
    two = want("b@y.example", ids=(RecordId("ticket", 1), RecordId("opportunity", 2)), msgs=("m2",))
    merged = merge_wanted([one, two])
    assert merged.emails == {"a@x.example", "b@y.example"}
    assert merged.domains == {"x.example", "y.example"}
    assert merged.record_ids == (RecordId("ticket", 1), RecordId("opportunity", 2))
    assert merged.message_ids == ("m1", "m2")


def test_facts_for_orders_the_thread_by_the_mails_own_references_newest_first() -> None:
    group = Facts(
        users={"anna@ours.example": ANNA, "sam@ours.example": UserRef(2, "sam@ours.example")},
        thread=(ThreadRef("old", opportunity_id=1), ThreadRef("new", ticket_id=2),
                ThreadRef("other", opportunity_id=3)),
    )
    mine = facts_for(group, want("anna@ours.example", msgs=("old", "new", "missing")), 9)
    assert [ref.message_id for ref in mine.thread] == ["new", "old"]
    assert dict(mine.users) == {"anna@ours.example": ANNA}
    assert mine.default_owner_id == 9


def test_a_reply_depends_on_the_mail_it_answers() -> None:
    first = LinkDecision("link", "address", Links(account=10))
    changed = effects("<first@x>", first, Facts())
    reply = dependencies(want("carla@acme.example", msgs=("<first@x>",)), Facts())
    assert changed & reply == {"msg:<first@x>"}


def test_a_new_lead_conflicts_with_the_next_mail_of_its_sender() -> None:
    lead = LinkDecision(
        "new_lead", "new_lead", lead=LeadDraft("Offer", "petra@neu.example", "Petra", None)
    )
    changed = effects("<a@x>", lead, Facts())
    assert "email:petra@neu.example" in changed
    assert changed & dependencies(want("petra@neu.example", "sales@crm.example"), Facts())


def test_bcc_mails_of_one_user_to_different_contacts_do_not_conflict() -> None:
    facts = Facts(users={"anna@ours.example": ANNA})
    linked = LinkDecision("link", "address", Links(owner=1, contact=20))
    changed = effects("<1@x>", linked, facts)
    other = dependencies(want("anna@ours.example", "gordon@globex.example"), facts)
    assert not changed & other
    # Nor does a mail that had to wait make the user's address a conflict for later mails.
    waiting = may_change("<2@x>", dependencies(want("anna@ours.example", "x@y.example"), facts),
                         facts)
    assert "email:anna@ours.example" not in waiting
    assert not waiting & other


def test_mails_of_one_outside_sender_wait_for_each_other_for_the_loop_guard() -> None:
    facts = Facts(users={"anna@ours.example": ANNA})
    ignored = LinkDecision("link", "address", Links(contact=20))
    sender = frozenset({"bot@loop.example"})
    changed = effects("<1@x>", ignored, facts, sender)
    assert "from:bot@loop.example" in changed
    later = Wanted(frozenset({"bot@loop.example"}), frozenset(), (), (), sender)
    assert changed & dependencies(later, facts, frozenset({Fact.RECENT_MAIL}))
    # Our users' mail is never counted: BCC mails of one user still decide together.
    user = frozenset({"anna@ours.example"})
    assert not effects("<2@x>", ignored, facts, user) & dependencies(
        Wanted(frozenset(user), frozenset(), (), (), user), facts
    )
    assert merge_wanted([later, Wanted(frozenset(), frozenset(), (), (), user)]).senders == (
        sender | user
    )


def test_a_new_ticket_changes_its_contacts_open_tickets() -> None:
    facts = Facts(contacts={"carla@acme.example": (CARLA,),
                            "carla.private@gmail.com": (CARLA,)})
    ticket = LinkDecision(
        "new_ticket", "new_ticket", Links(contact=20),
        ticket=TicketDraft("Bug", "It broke", "carla@acme.example", None),
    )
    changed = effects("<t@x>", ticket, facts)
    # The same person from another address reads the contact's open tickets.
    assert changed & dependencies(want("carla.private@gmail.com"), facts) == {"contact:20"}


def test_reopening_a_ticket_touches_the_ticket_and_its_contact() -> None:
    facts = Facts(records={TICKET.ref: TICKET})
    update = LinkDecision(
        "ticket_update", "subject_id", Links(ticket=7),
        ticket_update=TicketUpdateDraft(7, "again", "x@y.example", reopen=True),
    )
    assert effects(None, update, facts) == {"ticket:7", "contact:21"}
    named = dependencies(want("x@y.example", ids=(TICKET.ref,)), facts)
    assert {"ticket:7", "contact:21"} <= named
    # What a waiting mail may change covers what it would change once decided.
    assert effects("<w@x>", update, facts) <= may_change("<w@x>", named, facts)


def test_what_a_mail_waits_for_is_derived_from_the_facts_the_rules_read() -> None:
    assert set(KEYS) == set(Fact)
    facts = Facts(contacts={"carla@acme.example": (CARLA,)}, open_tickets={20: (7,)},
                  records={TICKET.ref: TICKET}, thread=(ThreadRef("<m>", opportunity_id=5),))
    mail = want("carla@acme.example", ids=(RecordId("ticket", 7),), msgs=("<m>",))
    assert dependencies(mail, facts, frozenset()) == frozenset()
    assert dependencies(mail, facts, frozenset({Fact.OPEN_LEADS})) == {"email:carla@acme.example"}
    assert dependencies(mail, facts, frozenset({Fact.THREAD})) == {"msg:<m>", "opportunity:5"}
    assert dependencies(mail, facts, frozenset({Fact.OPEN_TICKETS})) == {
        "contact:20", "ticket:7", "contact:21"
    }
    # The chain reads them all: the default is their union.
    assert dependencies(mail, facts) == frozenset().union(
        *(dependencies(mail, facts, frozenset({f})) for f in Fact)
    )
