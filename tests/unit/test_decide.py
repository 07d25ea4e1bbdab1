"""The pure decision over hand-made Facts: rules, owners and notes, without a store."""

from __future__ import annotations

import pytest

from mailsvc.linking.decide import Policy, decide, wanted
from mailsvc.linking.model import (
    HUMAN,
    AccountRef,
    ContactRef,
    Facts,
    LinkDecision,
    MailKind,
    RecordRef,
    ThreadRef,
    UserRef,
)
from mailsvc.linking.references import IdPatterns, RecordId
from mailsvc.mail import Address, Envelope, ParsedMail

POLICY = Policy(
    IdPatterns(), frozenset({"bcc@crm.example", "sales@crm.example", "support@crm.example"})
)
ANNA = UserRef(1, "anna@ours.example")
ACME = AccountRef(10, 1, "Acme GmbH")
CARLA = ContactRef(20, 10, 1, "carla@acme.example")
OPP = RecordRef(RecordId("opportunity", 5), "open", 10, 20, 1)
WON = RecordRef(RecordId("opportunity", 6), "won", 10, 20, 1)
TICKET = RecordRef(RecordId("ticket", 7), "resolved", 10, 20, 2)
FACTS = Facts(
    users={"anna@ours.example": ANNA, "sam@ours.example": UserRef(2, "sam@ours.example")},
    contacts={"carla@acme.example": (CARLA,)},
    accounts_by_domain={"acme.example": (ACME,)},
    accounts={10: ACME},
    records={OPP.ref: OPP, WON.ref: WON, TICKET.ref: TICKET},
    open_opportunities={20: (5,)},
    default_owner_id=9,
)


def mail(frm: str, to: str, subject: str = "", text: str = "Hi", **kw: object) -> ParsedMail:
    values: dict[str, object] = {
        "message_id": "m@x",
        "subject": subject,
        "from_": (Address("", frm),),
        "to": (Address("", to),),
        "cc": (),
        "reply_to": (),
        "date": None,
        "in_reply_to": (),
        "references": (),
        "headers": (),
        "text": text,
        "html": "",
    }
    values.update(kw)
    return ParsedMail(**values)  # type: ignore[arg-type]


def run(
    m: ParsedMail, role: str = "bcc", facts: Facts = FACTS, kind: MailKind = HUMAN
) -> LinkDecision:
    return decide(m, Envelope(None, ("x",), role), facts, POLICY, kind)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("m", "role", "kind", "rule", "opportunity", "notes"),
    [
        (
            mail("anna@ours.example", "carla@acme.example", "OPP-5"),
            "bcc",
            "link",
            "subject_id",
            5,
            (),
        ),
        (
            mail("carla@acme.example", "sales@crm.example", "OPP-6"),
            "sales",
            "link",
            "subject_id",
            6,
            ("closed_record:OPP-6",),
        ),
        (
            mail("carla@acme.example", "sales@crm.example", "OPP-9"),
            "sales",
            "link",
            "single_open_record",
            5,
            ("unknown_id:OPP-9",),
        ),
        (
            mail("anna@ours.example", "carla@acme.example"),
            "bcc",
            "link",
            "single_open_record",
            5,
            (),
        ),
        (mail("new@acme.example", "bcc@crm.example"), "bcc", "link", "address", None, ()),
        (mail("new@gmail.com", "sales@crm.example"), "sales", "new_lead", "new_lead", None, ()),
        (
            mail("new@gmail.com", "support@crm.example"),
            "support",
            "new_ticket",
            "new_ticket",
            None,
            (),
        ),
        (
            mail("anna@ours.example", "sam@ours.example"),
            "bcc",
            "ignore",
            "internal",
            None,
            ("no_counterparty",),
        ),
    ],
)
def test_rules(
    m: ParsedMail, role: str, kind: str, rule: str, opportunity: int | None, notes: tuple[str, ...]
) -> None:
    decision = run(m, role)
    assert (decision.kind, decision.rule, decision.links.opportunity, decision.notes) == (
        kind,
        rule,
        opportunity,
        notes,
    )


def test_outgoing_owner_is_the_record_owner_and_direction_is_outgoing() -> None:
    decision = run(mail("anna@ours.example", "carla@acme.example", "OPP-5"))
    assert decision.direction == "outgoing"
    assert decision.links.as_dict() == {
        "account": 10,
        "contact": 20,
        "owner": 1,
        "opportunity": 5,
        "ticket": None,
        "inbox_lead": None,
    }


def test_incoming_mail_on_a_resolved_ticket_reopens_it() -> None:
    decision = run(
        mail(
            "carla@acme.example",
            "support@crm.example",
            "TCK-7",
            "Still broken.\n\nOn Mon, Anna wrote:\n> fixed",
        ),
        "support",
    )
    assert decision.kind == "ticket_update" and decision.ticket_update is not None
    assert decision.ticket_update.reopen and decision.ticket_update.body == "Still broken."


def test_auto_reply_on_a_ticket_is_linked_without_update() -> None:
    decision = run(
        mail("carla@acme.example", "support@crm.example", "TCK-7"),
        "support",
        kind=MailKind("auto_reply", "subject"),
    )
    assert (decision.kind, decision.rule, decision.automatic) == ("link", "subject_id", True)
    assert decision.ticket_update is None and decision.links.ticket == 7


@pytest.mark.parametrize("name", ["bounce", "list", "loop", "auto_reply"])
def test_machine_mail_never_creates_anything(name: str) -> None:
    decision = run(
        mail("new@gmail.com", "sales@crm.example"),
        "sales",
        kind=MailKind(name, "why", ("x@y.example",) if name == "bounce" else ()),
    )  # type: ignore[arg-type]
    assert decision.kind == "ignore" and decision.rule == name
    assert decision.lead is None and decision.ticket is None
    assert decision.bounced == (("x@y.example",) if name == "bounce" else ())


def test_thread_links_the_earlier_mails_record() -> None:
    facts = Facts(
        users=FACTS.users, records=FACTS.records, thread=(ThreadRef("p@x", opportunity_id=5),)
    )
    decision = run(
        mail("stranger@x.example", "sales@crm.example", in_reply_to=("p@x",)), "sales", facts
    )
    assert (decision.rule, decision.links.opportunity, decision.links.account) == ("thread", 5, 10)


def test_open_lead_takes_the_second_mail() -> None:
    facts = Facts(open_leads={"new@gmail.com": 3}, default_owner_id=9)
    decision = run(mail("new@gmail.com", "sales@crm.example"), "sales", facts)
    assert (decision.kind, decision.rule, decision.links.inbox_lead) == ("link", "open_lead", 3)


def test_lead_draft_from_a_signed_mail() -> None:
    m = mail(
        "new@gmail.com",
        "sales@crm.example",
        "Re: Anfrage",
        "Hallo,\nbitte Angebot.\n\nMit freundlichen Grüßen\nPetra Neu\nTel. 030 123456\n",
        from_=(Address("Neu, Petra", "new@gmail.com"),),
    )
    decision = run(m, "sales", Facts(default_owner_id=9))
    assert decision.lead is not None and decision.links.owner == 9
    assert (
        decision.lead.title,
        decision.lead.first_name,
        decision.lead.last_name,
        decision.lead.phone,
    ) == ("Anfrage", "Petra", "Neu", "030 123456")


def test_wanted_includes_the_forwarded_original() -> None:
    m = mail(
        "anna@ours.example",
        "bcc@crm.example",
        "Fwd: x",
        "---------- Forwarded message ---------\nFrom: G <g@globex.example>\nSubject: OPP-5\n\nhi",
    )
    want = wanted(m, POLICY)
    assert "g@globex.example" in want.emails and "globex.example" in want.domains
    assert want.record_ids == (RecordId("opportunity", 5),)
