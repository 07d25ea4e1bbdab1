"""The pure decision over hand-made Facts: rules, owners and notes, without a store."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from dataclasses import field as dc_field
from pathlib import Path

import pytest

from mailsvc.linking.decide import Policy, context, decide, wanted
from mailsvc.linking.model import (
    HUMAN,
    AccountRef,
    ContactRef,
    Fact,
    Facts,
    LinkDecision,
    MailKind,
    RecordRef,
    Rule,
    ThreadRef,
    UserRef,
)
from mailsvc.linking.references import IdPatterns, RecordId
from mailsvc.linking.rules import CHAIN_READS, RULES, Context, RuleSpec
from mailsvc.mail import Address, Envelope, ParsedMail

POLICY = Policy(
    IdPatterns(), frozenset({"bcc@crm.example", "sales@crm.example", "support@crm.example"}),
    recipient_delimiter="+",
    intake_roles=(("bcc@crm.example", "bcc"), ("sales@crm.example", "sales"),
                  ("support@crm.example", "support")),
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


# ------------------------------------------------------------------ the chain, rule by rule

DAVE = ContactRef(21, 10, None, "dave@acme.example")
FACTS_ALL = Facts(
    users=FACTS.users,
    user_domains=frozenset({"ours.example"}),
    contacts={**FACTS.contacts, "dave@acme.example": (DAVE,)},
    accounts_by_domain=FACTS.accounts_by_domain,
    accounts=FACTS.accounts,
    records=FACTS.records,
    open_opportunities=FACTS.open_opportunities,
    open_tickets={20: (7,)},
    open_leads={"lead@gmail.com": 3},
    default_owner_id=9,
)
THREAD_FACTS = replace(FACTS_ALL, thread=(ThreadRef("p@x", opportunity_id=5),))
FORWARD_BODY = "FYI\n\n---------- Forwarded message ---------\nFrom: Carla <carla@acme.example>\n" \
    "Subject: Question\nTo: anna@ours.example\n\nHello Anna\n"


@dataclass(frozen=True)
class Case:
    """One mail before one rule: what the rule decides (``None``: it passes)."""

    m: ParsedMail
    role: str = "sales"
    facts: Facts = FACTS_ALL
    kind: MailKind = HUMAN
    verified: bool = True
    decides: str | None = None  # the decision's kind
    links: dict[str, int | None] = dc_field(default_factory=dict)
    notes: tuple[str, ...] | None = None
    rcpt: tuple[str, ...] = ("x",)
    policy: Policy = POLICY


CARLA_IN = mail("carla@acme.example", "sales@crm.example", "Question")
GUARD = replace(POLICY, loop_guard_max=20, loop_guard_allow=frozenset({"friendly.example"}))


def sent(sender: str, target: str, count: int, facts: Facts = FACTS_ALL) -> Facts:
    """``facts`` with ``count`` mails from ``sender`` to ``target`` in the guard's window."""
    return replace(facts, recent_mail={(sender, target): count})

STRANGER = mail("new@gmail.com", "sales@crm.example", "Question")
PRIVATE = replace(FACTS_ALL, never_log=frozenset({"hr@acme.example", "legal.example"}))
RULE_CASES: dict[Rule, list[Case]] = {
    Rule.NEVER_LOG: [
        # From, To, Cc: any participant on the list drops the mail; domains with subdomains.
        Case(mail("hr@acme.example", "sales@crm.example", "OPP-5"), facts=PRIVATE,
             decides="drop", links={"opportunity": None}),
        Case(mail("anna@ours.example", "hr@acme.example", "Contract"), "bcc", facts=PRIVATE,
             decides="drop"),
        Case(mail("carla@acme.example", "sales@crm.example",
                  cc=(Address("", "x@eu.legal.example"),)), facts=PRIVATE, decides="drop"),
        # The original of a forwarded mail counts too.
        Case(mail("anna@ours.example", "bcc@crm.example", "Fwd: Question",
                  FORWARD_BODY.replace("carla@acme.example", "hr@acme.example")), "bcc",
             facts=PRIVATE, decides="drop"),
        # A rule for someone else, or no rules at all; intake addresses are never matched.
        Case(CARLA_IN, facts=PRIVATE),
        Case(CARLA_IN, facts=replace(FACTS_ALL, never_log=frozenset({"crm.example"}))),
        Case(mail("x@legal.example.org", "sales@crm.example"), facts=PRIVATE),
        Case(CARLA_IN),
    ],
    Rule.LOOP: [
        Case(CARLA_IN, kind=MailKind("loop", "X-Mailsvc-Loop header"), decides="ignore",
             notes=("X-Mailsvc-Loop header",)),
        Case(CARLA_IN, kind=MailKind("bounce", "x")),
    ],
    Rule.BOUNCE: [
        Case(CARLA_IN, kind=MailKind("bounce", "delivery report", ("dave@acme.example",)),
             decides="ignore", notes=("delivery report",)),
        Case(CARLA_IN),
    ],
    Rule.LIST: [
        Case(CARLA_IN, kind=MailKind("list", "List-Id header"), decides="ignore"),
        Case(CARLA_IN, kind=MailKind("auto_reply", "subject")),
    ],
    Rule.SENDER_UNVERIFIED: [
        Case(mail("anna@ours.example", "carla@acme.example", "OPP-5"), "bcc", verified=False,
             decides="ignore", links={"owner": None, "opportunity": None},
             notes=("sender_unverified",)),
        Case(mail("anna@ours.example", "carla@acme.example", "OPP-5"), "bcc"),
        Case(CARLA_IN, verified=False),
    ],
    Rule.RATE_LIMITED: [
        # The 21st mail of an unknown sender on sales: stored, nothing created, no links.
        Case(mail("new@gmail.com", "sales@crm.example"), facts=sent("new@gmail.com",
             "role:sales", 20), policy=GUARD, decides="ignore", notes=("rate_limited",),
             links={"owner": None, "inbox_lead": None}),
        Case(mail("new@gmail.com", "sales@crm.example"), facts=sent("new@gmail.com",
             "role:sales", 19), policy=GUARD),
        # An unknown sender with an open inbox lead: the held mail stays on the lead.
        Case(mail("lead@gmail.com", "sales@crm.example"), facts=sent("lead@gmail.com",
             "role:sales", 20), policy=GUARD, decides="link", links={"inbox_lead": 3}),
        # To a named record: linked to it as automatic mail; a ticket gets no log entry.
        Case(mail("carla@acme.example", "sales@crm.example", "OPP-5"),
             facts=sent("carla@acme.example", "opportunity:5", 20), policy=GUARD,
             decides="link", links={"opportunity": 5, "contact": 20, "account": 10},
             notes=("rate_limited",)),
        Case(mail("carla@acme.example", "support@crm.example", "TCK-7"), "support",
             facts=sent("carla@acme.example", "ticket:7", 25), policy=GUARD, decides="link",
             links={"ticket": 7}),
        Case(mail("carla@acme.example", "support@crm.example", "Re"), "support",
             rcpt=("support+TCK-7@crm.example",), facts=sent("carla@acme.example", "ticket:7",
             20), policy=GUARD, decides="link", links={"ticket": 7}),
        # Without a record the intake role is counted: a contact stays linked, nothing else.
        Case(mail("carla@acme.example", "support@crm.example"), "support",
             facts=sent("carla@acme.example", "role:support", 20), policy=GUARD,
             decides="link", links={"contact": 20, "account": 10, "ticket": None}),
        # A record is counted on its own: mail on the role elsewhere does not count for it.
        Case(mail("carla@acme.example", "sales@crm.example", "OPP-5"),
             facts=sent("carla@acme.example", "role:sales", 50), policy=GUARD),
        # Our users, allowed senders, and the guard turned off.
        Case(mail("anna@ours.example", "paula@gmx.de"), "bcc",
             facts=sent("anna@ours.example", "role:bcc", 500), policy=GUARD),
        Case(mail("noc@mx.friendly.example", "sales@crm.example"),
             facts=sent("noc@mx.friendly.example", "role:sales", 500), policy=GUARD),
        Case(mail("new@gmail.com", "sales@crm.example"), facts=sent("new@gmail.com",
             "role:sales", 500)),
    ],
    Rule.RECORD_ADDRESS: [
        # The address names the record: linked without an ID in the subject.
        Case(CARLA_IN, rcpt=("bcc+OPP-5@crm.example",), decides="link",
             links={"opportunity": 5, "contact": 20, "account": 10, "owner": 1}, notes=()),
        # Case-insensitive, and the address wins over another opportunity in the subject.
        Case(mail("carla@acme.example", "sales@crm.example", "Re: OPP-6"),
             rcpt=("sales+opp5@crm.example",), decides="link", links={"opportunity": 5},
             notes=("ignored_id:OPP-6",)),
        # A ticket in the subject is of the other kind: linked too.
        Case(mail("carla@acme.example", "support@crm.example", "TCK-7"), "support",
             rcpt=("support+OPP-5@crm.example",), decides="ticket_update",
             links={"opportunity": 5, "ticket": 7}),
        # A ticket's address on support: the ticket is updated.
        Case(CARLA_IN, "support", rcpt=("support+tck-7@crm.example",),
             decides="ticket_update", links={"ticket": 7}),
        # A closed record is still linked, noted as subject_id does.
        Case(CARLA_IN, rcpt=("sales+OPP-6@crm.example",), decides="link",
             links={"opportunity": 6}, notes=("closed_record:OPP-6",)),
        # IMAP: the mailbox is the recipient; a Delivered-To of its role names the record.
        Case(mail("carla@acme.example", "sales@crm.example", "Question",
                  headers=(("Delivered-To", "sales+OPP-5@crm.example"),)),
             rcpt=("sales@crm.example",), decides="link", links={"opportunity": 5}),
        # ... but not one of another role's address.
        Case(mail("carla@acme.example", "sales@crm.example", "Question",
                  headers=(("Delivered-To", "bcc+OPP-5@crm.example"),)),
             rcpt=("sales@crm.example",)),
        # An unknown record: the next rules decide, with a note.
        Case(CARLA_IN, rcpt=("sales+OPP-99@crm.example",)),
        # Another extension, or an address that is no intake address.
        Case(CARLA_IN, rcpt=("sales+newsletter@crm.example",)),
        Case(CARLA_IN, rcpt=("other+OPP-5@crm.example",)),
        Case(CARLA_IN),
    ],
    Rule.SUBJECT_ID: [
        Case(mail("carla@acme.example", "sales@crm.example", "Re: OPP-5"), decides="link",
             links={"opportunity": 5, "contact": 20, "account": 10, "owner": 1}, notes=()),
        Case(mail("carla@acme.example", "sales@crm.example", "OPP\u00a05"), decides="link",
             links={"opportunity": 5}),
        Case(mail("carla@acme.example", "sales@crm.example", "ＯＰＰ－５"), decides="link",
             links={"opportunity": 5}),
        Case(mail("dave@acme.example", "sales@crm.example", "OPP-5 OPP-6"), decides="link",
             links={"opportunity": 5, "contact": 21}, notes=("ignored_id:OPP-6",)),
        Case(mail("new.person@acme.example", "sales@crm.example", "OPP-5"), decides="link",
             links={"opportunity": 5, "contact": None, "account": 10},
             notes=("new_person",)),
        Case(mail("someone@elsewhere.example", "sales@crm.example", "OPP-5"), decides="link",
             links={"opportunity": 5, "contact": 20}, notes=()),
        Case(mail("carla@acme.example", "support@crm.example", "TCK-7"), "support",
             decides="ticket_update", links={"ticket": 7}),
        Case(mail("carla@acme.example", "sales@crm.example", "OPP-99")),
        Case(CARLA_IN),
    ],
    Rule.THREAD: [
        Case(mail("carla@acme.example", "sales@crm.example", in_reply_to=("p@x",)),
             facts=THREAD_FACTS, decides="link", links={"opportunity": 5, "contact": 20}),
        Case(mail("new.person@acme.example", "sales@crm.example", in_reply_to=("p@x",)),
             facts=THREAD_FACTS, decides="link",
             links={"opportunity": 5, "contact": None, "account": 10}, notes=("new_person",)),
        Case(mail("new@gmail.com", "sales@crm.example", in_reply_to=("l@x",)),
             facts=replace(FACTS_ALL, thread=(ThreadRef("l@x", inbox_lead_id=3),)),
             decides="link", links={"inbox_lead": 3, "owner": 9}),
        Case(CARLA_IN),
    ],
    Rule.AUTO_REPLY: [
        Case(CARLA_IN, kind=MailKind("auto_reply", "subject"), decides="ignore",
             notes=("subject",)),
        Case(CARLA_IN),
    ],
    Rule.INTERNAL: [
        Case(mail("anna@ours.example", "sam@ours.example"), "bcc", decides="ignore",
             notes=("no_counterparty",)),
        Case(mail("anna@ours.example", "carla@acme.example"), "bcc"),
    ],
    Rule.NO_COUNTERPARTY: [
        Case(mail("x", "sales@crm.example", from_=()), decides="ignore",
             notes=("no_counterparty",)),
        Case(mail("vertrieb@ours.example", "sales@crm.example"), decides="ignore",
             notes=("no_counterparty",)),
        Case(mail("vertrieb@ours.example", "sales@crm.example"), facts=replace(
            FACTS_ALL, user_domains=frozenset())),
        Case(CARLA_IN),
    ],
    Rule.SINGLE_OPEN_RECORD: [
        Case(CARLA_IN, decides="link", links={"opportunity": 5, "contact": 20}),
        Case(mail("carla@acme.example", "support@crm.example"), "support",
             decides="ticket_update", links={"ticket": 7}),
        Case(mail("dave@acme.example", "sales@crm.example")),
    ],
    Rule.NEW_TICKET: [
        Case(mail("new@gmail.com", "support@crm.example", "Re: Printer"), "support",
             decides="new_ticket", links={"owner": 9}),
        Case(mail("dave@acme.example", "support@crm.example"), "support",
             decides="new_ticket", links={"contact": 21, "account": 10}),
        Case(mail("carla@acme.example", "support@crm.example"), "support"),
        Case(STRANGER),
    ],
    Rule.OPEN_LEAD: [
        Case(mail("lead@gmail.com", "sales@crm.example"), decides="link",
             links={"inbox_lead": 3}),
        Case(mail("lead@gmail.com", "support@crm.example"), "support"),
        Case(STRANGER),
    ],
    Rule.FORWARD: [
        Case(mail("anna@ours.example", "bcc@crm.example", "Fwd: Question", FORWARD_BODY), "bcc",
             decides="link", links={"contact": 20, "owner": 1}, notes=("forwarded:gmail",)),
        Case(mail("dave@acme.example", "sales@crm.example")),
    ],
    Rule.ADDRESS: [
        Case(mail("dave@acme.example", "sales@crm.example"), decides="link",
             links={"contact": 21, "account": 10, "owner": 1}),
        Case(mail("new@acme.example", "bcc@crm.example"), "bcc", decides="link",
             links={"account": 10, "contact": None}),
        Case(mail("new@acme.example", "sales@crm.example")),
    ],
    Rule.NEW_LEAD: [
        Case(STRANGER, decides="new_lead", links={"owner": 9}),
        Case(mail("anna@ours.example", "paula@gmx.de"), "bcc", decides="new_lead",
             links={"owner": 1}),
        Case(mail("anna@ours.example", "paula@gmx.de"), "support"),
    ],
    Rule.NO_MATCH: [
        Case(mail("anna@ours.example", "paula@gmx.de"), "support", decides="ignore",
             notes=("no_match",)),
    ],
}


def _context(case: Case) -> Context:
    envelope = Envelope(None, case.rcpt, case.role)  # type: ignore[arg-type]
    return context(case.m, envelope, case.facts, case.policy, case.kind,
                   sender_verified=case.verified)


@pytest.mark.parametrize(
    ("spec", "case"),
    [(spec, case) for spec in RULES for case in RULE_CASES[spec.rule]],
    ids=[f"{spec.rule}-{n}" for spec in RULES for n, _ in enumerate(RULE_CASES[spec.rule])],
)
def test_each_rule_over_hand_made_facts(spec: RuleSpec, case: Case) -> None:
    decision = spec.check(_context(case))
    if case.decides is None:
        assert decision is None
        return
    assert decision is not None and decision.kind == case.decides
    links = decision.links.as_dict()
    assert {k: links[k] for k in case.links} == case.links
    if case.notes is not None:
        assert decision.notes == case.notes


def test_every_rule_has_a_case_where_it_decides_and_one_where_it_passes() -> None:
    for spec in RULES:
        cases = RULE_CASES[spec.rule]
        assert any(c.decides for c in cases), spec.rule
        assert spec is RULES[-1] or any(c.decides is None for c in cases), spec.rule


def test_the_chain_names_every_rule_once_and_each_explains_itself() -> None:
    assert [spec.rule for spec in RULES] == list(Rule)
    assert all(len(spec.explanation) > 30 for spec in RULES)


def test_the_chain_reads_every_fact_there_is() -> None:
    assert {f.value for f in Fact} == {f.name for f in fields(Facts)}
    assert frozenset(Fact) == CHAIN_READS


@pytest.mark.parametrize(
    "m",
    [
        mail("x", "sales@crm.example", from_=()),
        mail("carla@acme.example", "sales@crm.example", "OPP-5"),
        mail("anna@ours.example", "paula@gmx.de"),
        mail("vertrieb@ours.example", "support@crm.example"),
    ],
)
@pytest.mark.parametrize("role", ["bcc", "sales", "support"])
def test_a_decision_always_names_its_rule_and_the_rules_tried(m: ParsedMail, role: str) -> None:
    decision = run(m, role, FACTS_ALL)
    assert isinstance(decision.rule, Rule)
    assert decision.rules_tried[-1] == decision.rule
    order = [spec.rule for spec in RULES]
    assert list(decision.rules_tried) == order[: order.index(decision.rule) + 1]


def test_the_sender_trust_rule_creates_nothing_in_a_users_name() -> None:
    m = mail("anna@ours.example", "paula@gmx.de", "Offer")
    decision = decide(m, Envelope(None, ("x",), "bcc"), FACTS_ALL, POLICY, sender_verified=False)
    assert (decision.kind, decision.rule, decision.direction) == (
        "ignore", "sender_unverified", "incoming"
    )
    assert decision.lead is None and not decision.links.any
    assert decide(m, Envelope(None, ("x",), "bcc"), FACTS_ALL, POLICY).rule == "new_lead"


def test_a_team_mailbox_of_our_domain_writing_to_a_customer_is_outgoing() -> None:
    m = mail("vertrieb@ours.example", "dave@acme.example", "Offer")
    decision = run(m, "bcc", FACTS_ALL)
    assert (decision.rule, decision.direction, decision.links.contact) == (
        "address", "outgoing", 21
    )


def test_configured_internal_domains_replace_the_users_domains() -> None:
    policy = replace(POLICY, internal_domains=frozenset({"corp.example"}))
    m = mail("vertrieb@ours.example", "sales@crm.example", "Hello")
    decision = decide(m, Envelope(None, ("x",), "sales"), FACTS_ALL, policy)
    assert decision.rule == "new_lead"


def test_an_unknown_record_address_falls_through_with_a_note() -> None:
    decision = decide(CARLA_IN, Envelope(None, ("sales+OPP-99@crm.example",), "sales"),
                      FACTS_ALL, POLICY)
    assert (decision.rule, decision.links.opportunity) == ("single_open_record", 5)
    assert decision.notes == ("unknown_address:OPP-99",)


def test_a_record_address_is_no_counterparty_and_is_looked_up() -> None:
    m = mail("anna@ours.example", "bcc+OPP-5@crm.example", "Notes")
    envelope = Envelope(None, ("bcc+opp-5@crm.example",), "bcc")
    want = wanted(m, POLICY, envelope)
    assert want.record_ids == (RecordId("opportunity", 5),)
    assert "bcc+opp-5@crm.example" not in want.emails
    decision = decide(m, envelope, FACTS_ALL, POLICY)
    assert (decision.rule, decision.direction, decision.links.opportunity) == (
        "record_address", "outgoing", 5
    )


def test_plus_addressing_off_reads_no_record_address() -> None:
    policy = replace(POLICY, recipient_delimiter="")
    envelope = Envelope(None, ("sales+OPP-5@crm.example",), "sales")
    decision = decide(mail("dave@acme.example", "sales@crm.example"), envelope, FACTS_ALL, policy)
    assert decision.rule == "address"


def test_a_held_back_mail_never_creates_or_updates() -> None:
    facts = sent("carla@acme.example", "ticket:7", 20)
    m = mail("carla@acme.example", "support@crm.example", "TCK-7", "Again")
    decision = decide(m, Envelope(None, ("x",), "support"), facts, GUARD)
    assert (decision.rule, decision.kind, decision.automatic) == ("rate_limited", "link", True)
    assert decision.ticket_update is None and decision.ticket is None and decision.lead is None
    assert decide(m, Envelope(None, ("x",), "support"), facts, POLICY).rule == "subject_id"


def test_a_never_log_rule_beats_every_other_rule() -> None:
    m = mail("hr@acme.example", "support@crm.example", "TCK-7", "private")
    decision = decide(m, Envelope(None, ("support+TCK-7@crm.example",), "support"), PRIVATE,
                      POLICY, MailKind("auto_reply", "subject"))
    assert (decision.kind, decision.rule, decision.links.any, decision.notes) == (
        "drop", "never_log", False, ()
    )
    assert decision.ticket_update is None and decision.reply_text is None


def test_docs_list_the_rules_in_chain_order() -> None:
    text = (Path(__file__).parents[2] / "docs" / "linking.md").read_text("utf-8")
    section = text.split("## The rules, in order", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\d+\. \*\*`([a-z_]+)`\*\*", section, flags=re.M)
    assert listed == [spec.rule.value for spec in RULES]
