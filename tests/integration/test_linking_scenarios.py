"""The linking rules end to end: each scenario sends one mail through the real pipeline and checks
the whole outcome (links, created records, outbox events) on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.bootstrap import Services, open_services
from mailsvc.config import Settings
from mailsvc.crmstore.models import (
    Account,
    AccountDomain,
    Activity,
    Contact,
    ContactEmail,
    Email,
    InboxLead,
    Opportunity,
    OpportunityStatus,
    OutboxEvent,
    Ticket,
    TicketStatus,
    TicketUpdate,
    User,
    UserEmail,
    UserRole,
)
from mailsvc.ingest.outcome import Outcome
from mailsvc.mail import Envelope, RawMail
from tests.conftest import BCC, SALES, SUPPORT, _truncate_postgres, base_settings
from tests.scenarios.forwards import FORWARD_BODIES

ROLE_ADDRESS = {"bcc": BCC, "sales": SALES, "support": SUPPORT}
OWNERS = {
    "sales_owner": "sally@ours.example",
    "support_owner": "sam@ours.example",
    "default_owner_email": "olga@ours.example",
}
_ids = itertools.count(1)

ANNA = "Anna Seller <anna@ours.example>"
CARLA = "Carla Customer <carla@acme.example>"
GORDON = "Gordon Buyer <gordon@globex.example>"


# ------------------------------------------------------------------ the world every scenario sees


async def build_world(session: AsyncSession) -> dict[str, int]:
    """Users, accounts, contacts, opportunities and tickets; returns symbolic name -> id."""
    ids: dict[str, int] = {}

    async def add(name: str, row: Any) -> Any:
        session.add(row)
        await session.flush()
        ids[name] = row.id
        return row

    for name, email, role, aliases in [
        ("anna", "anna@ours.example", UserRole.SALES, ["anna.alias@ours.example"]),
        ("sam", "sam@ours.example", UserRole.SUPPORT, []),
        ("sally", "sally@ours.example", UserRole.SALES, []),
        ("olga", "olga@ours.example", UserRole.ADMIN, []),
    ]:
        await add(
            name,
            User(
                email=email,
                name=name.title(),
                role=role,
                addresses=[UserEmail(email=a) for a in [email, *aliases]],
            ),
        )
    for name, title, domains in [
        ("acme", "Acme GmbH", ["acme.example"]),
        ("globex", "Globex Ltd", ["globex.example"]),
        ("initech_east", "Initech East", ["initech.example"]),
        ("initech_west", "Initech West", ["initech.example"]),
    ]:
        await add(
            name,
            Account(
                name=title, owner_id=ids["anna"], domains=[AccountDomain(domain=d) for d in domains]
            ),
        )
    for name, emails, account, owner in [
        ("carla", ["carla@acme.example", "carla.private@gmail.com"], "acme", "anna"),
        ("dave", ["dave@acme.example"], "acme", None),
        ("gordon", ["gordon@globex.example"], "globex", "anna"),
        ("tess", ["tess@globex.example"], "globex", None),
        ("frank", ["frank@gmail.com"], None, "anna"),
        ("mo", ["mo@multi.example"], None, "anna"),
    ]:
        await add(
            name,
            Contact(
                first_name=name.title(),
                last_name="Example",
                email=emails[0],
                account_id=ids.get(account or ""),
                owner_id=ids.get(owner or ""),
                addresses=[ContactEmail(email=e) for e in emails],
            ),
        )
    for name, contact, account, status in [
        ("opp_open", "carla", "acme", OpportunityStatus.OPEN),
        ("opp_won", "dave", "acme", OpportunityStatus.WON),
        ("opp_lost", "dave", "acme", OpportunityStatus.LOST),
        ("opp_mo_1", "mo", None, OpportunityStatus.OPEN),
        ("opp_mo_2", "mo", None, OpportunityStatus.OPEN),
        ("opp_globex", None, "globex", OpportunityStatus.OPEN),
    ]:
        await add(
            name,
            Opportunity(
                title=name,
                status=status,
                contact_id=ids.get(contact or ""),
                account_id=ids.get(account or ""),
                owner_id=ids["anna"],
            ),
        )
    for name, contact, status in [
        ("t_open", "gordon", TicketStatus.OPEN),
        ("t_resolved", "dave", TicketStatus.RESOLVED),
        ("t_closed", "dave", TicketStatus.CLOSED),
        ("t_tess_1", "tess", TicketStatus.OPEN),
        ("t_tess_2", "tess", TicketStatus.IN_PROGRESS),
    ]:
        contact_row = await session.get(Contact, ids[contact])
        assert contact_row is not None
        await add(
            name,
            Ticket(
                subject=name,
                status=status,
                contact_id=contact_row.id,
                account_id=contact_row.account_id,
                owner_id=ids["sam"],
            ),
        )
    return ids


# ------------------------------------------------------------------ mails


def mail(
    frm: str,
    to: str | list[str],
    subject: str,
    body: str = "Hello.\n",
    *,
    cc: list[str] | None = None,
    reply_to: str | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
    headers: dict[str, str] | None = None,
    message_id: str | None = None,
    enclosed: bytes | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = ", ".join([to] if isinstance(to, str) else to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or f"<s{next(_ids)}@mail.example>"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    if enclosed is not None:
        from email import message_from_bytes

        msg.add_attachment(message_from_bytes(enclosed))
    return bytes(msg)


def dsn(recipient: str, action: str = "failed") -> bytes:
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.acme.example>\n"
        f"To: {BCC}\nSubject: Undelivered Mail Returned to Sender\n"
        f"Message-ID: <dsn{next(_ids)}@mx.acme.example>\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nYour message could not be delivered.\n"
        "--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.acme.example\n\n"
        f"Final-Recipient: rfc822; {recipient}\nAction: {action}\nStatus: 5.1.1\n"
        "--B\nContent-Type: text/rfc822-headers\n\n"
        f"From: anna@ours.example\nTo: {recipient}\nSubject: Offer\n--B--\n"
    ).encode()


SIGNED = """Hello,

we would like an offer for 20 seats.

Best regards
Petra Neu
Tel.: +49 30 1234567
"""

QUOTED_DE = """Der Drucker geht wieder nicht.

Am 01.03.2024 um 10:00 schrieb Sam Support <sam@ours.example>:
> Bitte starten Sie den Drucker neu.
"""


# ------------------------------------------------------------------ scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    role: str
    data: bytes | Callable[[dict[str, int]], bytes]
    outcome: str
    rule: str | None
    links: dict[str, str | None]  # symbolic; "new" = the record this mail created
    notes: tuple[str, ...] = ()
    automatic: bool = False
    events: tuple[str, ...] | None = None  # default: derived from the outcome
    created: dict[str, int] = field(default_factory=dict)  # model name -> new rows
    before: tuple[tuple[str, bytes], ...] = ()
    direction: str = "incoming"
    kind: str = "human"
    check: Callable[[AsyncSession, dict[str, int], Outcome], Awaitable[None]] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def expected_events(self) -> list[str]:
        if self.events is not None:
            return list(self.events)
        first = {
            "lead_created": ["inbox_lead.created"],
            "ticket_created": ["ticket.created"],
            "ticket_updated": ["ticket.updated"],
        }.get(self.outcome, [])
        if self.outcome == "duplicate":
            return []
        tail = ["email.received"] + (["email.linked"] if self.outcome != "ignored" else [])
        return first + tail

    def expected_created(self) -> dict[str, int]:
        human_link = (
            self.outcome in {"linked", "lead_created", "ticket_created", "ticket_updated"}
            and not self.automatic
        )
        counts = {
            "InboxLead": int(self.outcome == "lead_created"),
            "Ticket": int(self.outcome == "ticket_created"),
            "TicketUpdate": int(self.outcome == "ticket_updated"),
            "Activity": int(human_link),
        }
        counts.update(self.created)
        return counts


def L(**links: str | None) -> dict[str, str | None]:
    return links


def fwd(name: str, subject: str = "Fwd: Pricing", to: str = BCC) -> bytes:
    return mail(ANNA, to, subject, FORWARD_BODIES[name][1])


FORWARD_LINKS = L(account="globex", contact="gordon", owner="anna")
PRIOR_BCC = (
    "bcc",
    mail(ANNA, CARLA, "Offer [OPP-{opp_open}]", message_id="<prior-opp@ours.example>"),
)


def with_ids(template: str) -> Callable[[dict[str, int]], bytes]:
    """A mail whose text names records by symbol, e.g. ``{opp_open}``."""

    def build(ids: dict[str, int]) -> bytes:
        return template.format(**ids).encode()

    return build


def raw(
    frm: str, to: str, subject: str, body: str = "Hello.\n", **kw: Any
) -> Callable[[dict[str, int]], bytes]:
    def build(ids: dict[str, int]) -> bytes:
        return mail(
            frm,
            to,
            subject.format(**ids),
            body.format(**ids),
            **{k: (v.format(**ids) if isinstance(v, str) else v) for k, v in kw.items()},
        )

    return build


async def _ticket_status(session: AsyncSession, ids: dict[str, int], name: str) -> str:
    ticket = await session.get(Ticket, ids[name])
    assert ticket is not None
    return str(ticket.status)


def ticket_status_is(name: str, status: str) -> Callable[..., Awaitable[None]]:
    async def check(session: AsyncSession, ids: dict[str, int], outcome: Outcome) -> None:
        assert await _ticket_status(session, ids, name) == status

    return check


def lead_is(**expected: Any) -> Callable[..., Awaitable[None]]:
    async def check(session: AsyncSession, ids: dict[str, int], outcome: Outcome) -> None:
        lead = await session.get(InboxLead, outcome.links["inbox_lead"])
        assert lead is not None
        assert lead.source == "e-mail" and str(lead.status) == "new"
        assert lead.open_key == lead.email
        for key, value in expected.items():
            assert getattr(lead, key) == value, key

    return check


def new_ticket_is(**expected: Any) -> Callable[..., Awaitable[None]]:
    async def check(session: AsyncSession, ids: dict[str, int], outcome: Outcome) -> None:
        ticket = await session.get(Ticket, outcome.links["ticket"])
        assert ticket is not None and ticket.type == "question" and str(ticket.status) == "open"
        for key, value in expected.items():
            assert getattr(ticket, key) == value, key

    return check


def bouncing(address: str, expected: bool = True) -> Callable[..., Awaitable[None]]:
    async def check(session: AsyncSession, ids: dict[str, int], outcome: Outcome) -> None:
        row = await session.scalar(select(ContactEmail).where(ContactEmail.email == address))
        assert row is not None and row.bouncing is expected

    return check


SCENARIOS: list[Scenario] = [
    # ---- outgoing mail, BCC'd by a user
    Scenario(
        "bcc_outgoing_with_opportunity_id",
        "bcc",
        raw(ANNA, CARLA, "Your offer OPP-{opp_open}"),
        "linked",
        "subject_id",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
        direction="outgoing",
    ),
    Scenario(
        "bcc_outgoing_with_id_to_a_colleague_of_the_contact",
        "bcc",
        raw(ANNA, "Dave <dave@acme.example>", "Your offer OPP-{opp_open}"),
        "linked",
        "subject_id",
        L(account="acme", contact="dave", owner="anna", opportunity="opp_open"),
        direction="outgoing",
    ),
    Scenario(
        "bcc_outgoing_with_id_to_someone_of_another_customer",
        "bcc",
        raw(ANNA, GORDON, "Fwd: offer OPP-{opp_open} for your reference"),
        "linked",
        "subject_id",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
        direction="outgoing",
    ),
    Scenario(
        "bcc_outgoing_from_user_alias",
        "bcc",
        raw("Anna <Anna.Alias@ours.example>", CARLA, "Re: [OPP-{opp_open}]"),
        "linked",
        "subject_id",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
        direction="outgoing",
    ),
    Scenario(
        "bcc_outgoing_no_id_single_open_opportunity",
        "bcc",
        mail(ANNA, CARLA, "Next steps"),
        "linked",
        "single_open_record",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
        direction="outgoing",
    ),
    Scenario(
        "bcc_outgoing_several_open_opportunities",
        "bcc",
        mail(ANNA, "Mo <mo@multi.example>", "Next steps"),
        "linked",
        "address",
        L(contact="mo", owner="anna"),
        notes=("several_open_records",),
        direction="outgoing",
    ),
    Scenario(
        "bcc_outgoing_unknown_person_known_company",
        "bcc",
        mail(ANNA, "New Person <new.person@acme.example>", "Hello"),
        "linked",
        "address",
        L(account="acme", owner="anna"),
        direction="outgoing",
    ),
    Scenario(
        "bcc_outgoing_unknown_freemail_person_becomes_lead",
        "bcc",
        mail(ANNA, "Paula Prospect <paula@gmx.de>", "Our call today"),
        "lead_created",
        "new_lead",
        L(owner="anna", inbox_lead="new"),
        direction="outgoing",
        check=lead_is(
            email="paula@gmx.de",
            first_name="Paula",
            last_name="Prospect",
            title="Our call today",
            phone=None,
        ),
    ),
    Scenario(
        "bcc_outgoing_unknown_company_becomes_lead",
        "bcc",
        mail(ANNA, "ceo@startup.example", "Intro"),
        "lead_created",
        "new_lead",
        L(owner="anna", inbox_lead="new"),
        direction="outgoing",
        check=lead_is(email="ceo@startup.example", first_name=None, last_name=None),
    ),
    Scenario(
        "bcc_outgoing_internal_only_is_ignored",
        "bcc",
        mail(ANNA, "Sam <sam@ours.example>", "Lunch?"),
        "ignored",
        "internal",
        L(),
        notes=("no_counterparty",),
        direction="outgoing",
    ),
    Scenario(
        "bcc_outgoing_to_two_companies_links_the_first",
        "bcc",
        mail(ANNA, [CARLA, GORDON], "Joint meeting"),
        "linked",
        "single_open_record",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
        notes=("ambiguous:several_accounts",),
        direction="outgoing",
    ),
    Scenario(
        "bcc_outgoing_with_ticket_id_logs_an_update",
        "bcc",
        raw(ANNA, GORDON, "Re: your issue TCK-{t_open}"),
        "ticket_updated",
        "subject_id",
        L(account="globex", contact="gordon", owner="sam", ticket="t_open"),
        direction="outgoing",
        check=ticket_status_is("t_open", "open"),
    ),
    Scenario(
        "bcc_outgoing_freemail_contact_without_company",
        "bcc",
        mail(ANNA, "Frank <frank@gmail.com>", "Hi Frank"),
        "linked",
        "address",
        L(contact="frank", owner="anna"),
        direction="outgoing",
    ),
    Scenario(
        "bcc_outgoing_shared_domain_is_ambiguous",
        "bcc",
        mail(ANNA, "x@initech.example", "Hello"),
        "lead_created",
        "new_lead",
        L(owner="anna", inbox_lead="new"),
        notes=("ambiguous:domain",),
        direction="outgoing",
    ),
    Scenario(
        "bcc_outgoing_cc_counts_as_recipient",
        "bcc",
        mail(ANNA, "Sam <sam@ours.example>", "Update", cc=[GORDON]),
        "linked",
        "address",
        L(account="globex", contact="gordon", owner="anna"),
        direction="outgoing",
    ),
    # ---- incoming mail
    Scenario(
        "incoming_reply_with_opportunity_id_on_sales",
        "sales",
        raw(CARLA, SALES, "AW: Angebot OPP-{opp_open}"),
        "linked",
        "subject_id",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
    ),
    Scenario(
        "incoming_on_bcc_single_open_opportunity",
        "bcc",
        mail(CARLA, [ANNA, BCC], "Question"),
        "linked",
        "single_open_record",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
    ),
    Scenario(
        "incoming_from_contact_second_address",
        "sales",
        mail("Carla <carla.private@gmail.com>", SALES, "From home"),
        "linked",
        "single_open_record",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
    ),
    Scenario(
        "incoming_address_matches_case_insensitively",
        "sales",
        mail("CARLA@ACME.EXAMPLE", SALES, "Caps"),
        "linked",
        "single_open_record",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
    ),
    Scenario(
        "incoming_reply_to_is_the_counterparty",
        "sales",
        mail(
            "Web form <noreply@forms.example>", SALES, "Contact form", reply_to="carla@acme.example"
        ),
        "linked",
        "single_open_record",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
    ),
    Scenario(
        "incoming_known_contact_without_open_records",
        "sales",
        mail("Dave <dave@acme.example>", SALES, "Hello"),
        "linked",
        "address",
        L(account="acme", contact="dave", owner="anna"),
    ),
    Scenario(
        "incoming_unknown_sender_on_sales_becomes_lead",
        "sales",
        mail("Petra Neu <petra@neu.example>", SALES, "Re: Anfrage 20 Lizenzen", SIGNED),
        "lead_created",
        "new_lead",
        L(owner="sally", inbox_lead="new"),
        check=lead_is(
            title="Anfrage 20 Lizenzen",
            first_name="Petra",
            last_name="Neu",
            email="petra@neu.example",
            phone="+49 30 1234567",
            company=None,
        ),
    ),
    Scenario(
        "incoming_unknown_sender_on_bcc_becomes_lead_for_default_owner",
        "bcc",
        mail("Petra Neu <petra@neu.example>", BCC, "Anfrage"),
        "lead_created",
        "new_lead",
        L(owner="olga", inbox_lead="new"),
    ),
    Scenario(
        "incoming_unknown_sender_on_support_becomes_ticket",
        "support",
        mail("Nina Newcomer <nina@gmail.com>", SUPPORT, "Printer broken", QUOTED_DE),
        "ticket_created",
        "new_ticket",
        L(owner="sam", ticket="new"),
        check=new_ticket_is(
            subject="Printer broken",
            requester_email="nina@gmail.com",
            description="Der Drucker geht wieder nicht.",
            requester_name="Nina Newcomer",
            contact_id=None,
        ),
    ),
    Scenario(
        "incoming_contact_single_open_ticket_on_support",
        "support",
        mail(GORDON, SUPPORT, "Still broken"),
        "ticket_updated",
        "single_open_record",
        L(account="globex", contact="gordon", owner="sam", ticket="t_open"),
    ),
    Scenario(
        "incoming_contact_without_open_ticket_gets_new_ticket",
        "support",
        mail("Dave <dave@acme.example>", SUPPORT, "New problem"),
        "ticket_created",
        "new_ticket",
        L(account="acme", contact="dave", owner="sam", ticket="new"),
    ),
    Scenario(
        "incoming_contact_several_open_tickets",
        "support",
        mail("Tess <tess@globex.example>", SUPPORT, "Another thing"),
        "linked",
        "address",
        L(account="globex", contact="tess", owner="anna"),
        notes=("several_open_records",),
    ),
    Scenario(
        "incoming_resolved_ticket_id_reopens_it",
        "support",
        raw("Dave <dave@acme.example>", SUPPORT, "Re: [TCK-{t_resolved}] not fixed"),
        "ticket_updated",
        "subject_id",
        L(account="acme", contact="dave", owner="sam", ticket="t_resolved"),
        check=ticket_status_is("t_resolved", "open"),
    ),
    Scenario(
        "incoming_closed_ticket_id_is_logged_not_reopened",
        "support",
        raw("Dave <dave@acme.example>", SUPPORT, "Re: TCK-{t_closed}"),
        "ticket_updated",
        "subject_id",
        L(account="acme", contact="dave", owner="sam", ticket="t_closed"),
        notes=("closed_record:TCK-{t_closed}",),
        check=ticket_status_is("t_closed", "closed"),
    ),
    Scenario(
        "incoming_won_opportunity_id_still_links",
        "sales",
        raw("Dave <dave@acme.example>", SALES, "Thanks OPP-{opp_won}"),
        "linked",
        "subject_id",
        L(account="acme", contact="dave", owner="anna", opportunity="opp_won"),
        notes=("closed_record:OPP-{opp_won}",),
    ),
    Scenario(
        "incoming_lost_opportunity_id_still_links",
        "sales",
        raw("Dave <dave@acme.example>", SALES, "OPP-{opp_lost} revisited"),
        "linked",
        "subject_id",
        L(account="acme", contact="dave", owner="anna", opportunity="opp_lost"),
        notes=("closed_record:OPP-{opp_lost}",),
    ),
    Scenario(
        "incoming_unknown_id_falls_back_to_addresses",
        "sales",
        mail(CARLA, SALES, "About OPP-999999"),
        "linked",
        "single_open_record",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
        notes=("unknown_id:OPP-999999",),
    ),
    Scenario(
        "incoming_unknown_ticket_id_from_stranger_opens_ticket",
        "support",
        mail("x@stranger.example", SUPPORT, "TCK-999999 help"),
        "ticket_created",
        "new_ticket",
        L(owner="sam", ticket="new"),
        notes=("unknown_id:TCK-999999",),
    ),
    Scenario(
        "two_ids_opportunity_and_ticket_link_both",
        "sales",
        raw(GORDON, SALES, "OPP-{opp_globex} and TCK-{t_open}"),
        "ticket_updated",
        "subject_id",
        L(
            account="globex",
            contact="gordon",
            owner="anna",
            opportunity="opp_globex",
            ticket="t_open",
        ),
    ),
    Scenario(
        "two_opportunity_ids_link_the_first",
        "sales",
        raw(CARLA, SALES, "OPP-{opp_open} / OPP-{opp_won}"),
        "linked",
        "subject_id",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
        notes=("ignored_id:OPP-{opp_won}",),
    ),
    Scenario(
        "two_ids_first_unknown_second_known",
        "sales",
        raw(CARLA, SALES, "OPP-999999 OPP-{opp_open}"),
        "linked",
        "subject_id",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
        notes=("unknown_id:OPP-999999",),
    ),
    Scenario(
        "id_in_lower_case_with_hash",
        "sales",
        raw(GORDON, SALES, "re: [opp#{opp_globex}]"),
        "linked",
        "subject_id",
        L(account="globex", contact="gordon", owner="anna", opportunity="opp_globex"),
    ),
    Scenario(
        "unknown_sender_with_known_id_links_the_record",
        "sales",
        raw("Someone <someone@elsewhere.example>", SALES, "OPP-{opp_globex}"),
        "linked",
        "subject_id",
        L(account="globex", owner="anna", opportunity="opp_globex"),
    ),
    # ---- threads
    Scenario(
        "reply_in_thread_without_id",
        "sales",
        mail(CARLA, SALES, "Re: Offer", in_reply_to="<prior-opp@ours.example>"),
        "linked",
        "thread",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
        before=(PRIOR_BCC,),
    ),
    Scenario(
        "reply_in_thread_by_references_only",
        "bcc",
        mail(
            ANNA,
            "Dave <dave@acme.example>",
            "Re: Offer",
            references="<other@x.example> <prior-opp@ours.example>",
        ),
        "linked",
        "thread",
        L(account="acme", contact="dave", owner="anna", opportunity="opp_open"),
        before=(PRIOR_BCC,),
        direction="outgoing",
    ),
    Scenario(
        "reply_in_ticket_thread_appends_update",
        "support",
        mail(
            "Nina <nina@gmail.com>",
            SUPPORT,
            "Re: Printer",
            "It works now.\n",
            in_reply_to="<first-ticket@gmail.com>",
        ),
        "ticket_updated",
        "thread",
        L(owner="sam", ticket="new"),
        created={"Ticket": 0},
        before=(
            (
                "support",
                mail(
                    "Nina <nina@gmail.com>",
                    SUPPORT,
                    "Printer",
                    message_id="<first-ticket@gmail.com>",
                ),
            ),
        ),
    ),
    Scenario(
        "second_mail_of_unknown_sender_goes_to_open_lead",
        "sales",
        mail("Petra <petra@neu.example>", SALES, "One more thing"),
        "linked",
        "open_lead",
        L(owner="sally", inbox_lead="new"),
        created={"InboxLead": 0},
        before=(("sales", mail("Petra <petra@neu.example>", SALES, "Anfrage")),),
    ),
    Scenario(
        "reply_in_lead_thread_from_other_address",
        "sales",
        mail("Petra <petra.home@web.de>", SALES, "Re: Anfrage", in_reply_to="<lead-1@neu.example>"),
        "linked",
        "thread",
        L(owner="sally", inbox_lead="new"),
        created={"InboxLead": 0},
        before=(
            (
                "sales",
                mail(
                    "Petra <petra@neu.example>", SALES, "Anfrage", message_id="<lead-1@neu.example>"
                ),
            ),
        ),
    ),
    Scenario(
        "unknown_sender_at_known_company_becomes_lead_with_company",
        "sales",
        mail("New <new@acme.example>", SALES, "Inquiry"),
        "lead_created",
        "new_lead",
        L(account="acme", owner="sally", inbox_lead="new"),
        check=lead_is(company="Acme GmbH"),
    ),
    Scenario(
        "unknown_freemail_sender_gets_no_company",
        "sales",
        mail("Max <max@gmail.com>", SALES, "Inquiry"),
        "lead_created",
        "new_lead",
        L(owner="sally", inbox_lead="new"),
        check=lead_is(company=None, account_id=None),
    ),
    Scenario(
        "unknown_sender_at_shared_domain_is_ambiguous",
        "sales",
        mail("x@initech.example", SALES, "Inquiry"),
        "lead_created",
        "new_lead",
        L(owner="sally", inbox_lead="new"),
        notes=("ambiguous:domain",),
    ),
    Scenario(
        "unknown_person_at_known_company_on_bcc_links_company",
        "bcc",
        mail("New <new@acme.example>", BCC, "Hi"),
        "linked",
        "address",
        L(account="acme", owner="anna"),
    ),
    Scenario(
        "empty_subject_lead_title_names_the_sender",
        "sales",
        mail("Petra Neu <petra@neu.example>", SALES, ""),
        "lead_created",
        "new_lead",
        L(owner="sally", inbox_lead="new"),
        check=lead_is(title="E-mail from Petra Neu"),
    ),
    # ---- forwards by a user to the Smart BCC address
    *[
        Scenario(
            f"forward_{name}",
            "bcc",
            fwd(name),
            "linked",
            "forward",
            FORWARD_LINKS,
            notes=(f"forwarded:{FORWARD_BODIES[name][0]}",),
        )
        for name in sorted(FORWARD_BODIES)
    ],
    Scenario(
        "forward_as_rfc822_attachment",
        "bcc",
        mail(
            ANNA,
            BCC,
            "FW: Pricing",
            "See attached.\n",
            enclosed=mail(GORDON, ANNA, "Pricing", "Hi Anna"),
        ),
        "linked",
        "forward",
        FORWARD_LINKS,
        notes=("forwarded:rfc822",),
    ),
    Scenario(
        "forward_of_unknown_sender_becomes_lead",
        "bcc",
        mail(
            ANNA,
            BCC,
            "Fwd: Anfrage",
            "FYI\n\n---------- Forwarded message ---------\n"
            "From: Petra Neu <petra@neu.example>\nSubject: Anfrage\nTo: anna@ours.example"
            "\n\nHallo,\nbitte ein Angebot.\n\nGruß\nPetra Neu\nTel: 030 9876543\n",
        ),
        "lead_created",
        "new_lead",
        L(owner="anna", inbox_lead="new"),
        notes=("forwarded:gmail",),
        check=lead_is(email="petra@neu.example", title="Anfrage", phone="030 9876543"),
    ),
    Scenario(
        "forward_with_id_in_original_subject",
        "bcc",
        raw(
            ANNA,
            BCC,
            "Fwd: mail",
            "x\n\nBegin forwarded message:\n\nFrom: "
            "gordon@globex.example\nSubject: Re: OPP-{opp_globex}\n\nok\n",
        ),
        "linked",
        "subject_id",
        L(account="globex", contact="gordon", owner="anna", opportunity="opp_globex"),
        notes=("forwarded:apple",),
    ),
    Scenario(
        "forward_to_support_opens_ticket_for_the_customer",
        "support",
        mail(
            "Sam <sam@ours.example>",
            SUPPORT,
            "WG: Fehler",
            "bitte Ticket\n\nVon: Nina <nina@gmail.com>\nGesendet: Montag\nAn: sam@ours."
            "example\nBetreff: Fehler im Export\n\nDer Export bricht ab.\n",
        ),
        "ticket_created",
        "new_ticket",
        L(owner="sam", ticket="new"),
        notes=("forwarded:outlook",),
        check=new_ticket_is(
            subject="Fehler im Export",
            requester_email="nina@gmail.com",
            description="Der Export bricht ab.",
        ),
    ),
    Scenario(
        "forward_by_a_customer_is_their_own_mail",
        "sales",
        mail("Max <max@gmail.com>", SALES, "Fwd: offer", FORWARD_BODIES["gmail_en"][1]),
        "lead_created",
        "new_lead",
        L(owner="sally", inbox_lead="new"),
        check=lead_is(email="max@gmail.com"),
    ),
    Scenario(
        "forward_of_own_sent_mail_links_its_recipient",
        "bcc",
        mail(
            ANNA,
            BCC,
            "Fwd: offer",
            "for the CRM\n\n-------- Forwarded Message --------\n"
            "Subject: Offer\nFrom: Anna <anna@ours.example>\nTo: Gordon <gordon@globex"
            ".example>\n\nHi Gordon\n",
        ),
        "linked",
        "forward",
        FORWARD_LINKS,
        notes=("forwarded:thunderbird",),
        direction="outgoing",
    ),
    Scenario(
        "user_reply_with_quoted_header_block_is_not_a_forward",
        "bcc",
        mail(ANNA, CARLA, "AW: Frage", "Antwort.\n\n" + FORWARD_BODIES["outlook_de"][1]),
        "linked",
        "single_open_record",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
        direction="outgoing",
    ),
    # ---- machine mail
    Scenario(
        "auto_reply_with_id_is_linked_as_automatic",
        "sales",
        raw(
            CARLA,
            SALES,
            "Automatische Antwort: OPP-{opp_open}",
            headers={"Auto-Submitted": "auto-replied"},
        ),
        "linked",
        "subject_id",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
        automatic=True,
        kind="auto_reply",
    ),
    Scenario(
        "auto_reply_without_id_is_ignored",
        "sales",
        mail(
            "Stranger <s@stranger.example>",
            SALES,
            "Out of Office",
            headers={"Auto-Submitted": "auto-replied"},
        ),
        "ignored",
        "auto_reply",
        L(),
        notes=("Auto-Submitted: auto-replied",),
        automatic=True,
        kind="auto_reply",
    ),
    Scenario(
        "auto_reply_with_ticket_id_adds_no_update",
        "support",
        raw("Dave <dave@acme.example>", SUPPORT, "Abwesenheitsnotiz: TCK-{t_resolved}"),
        "linked",
        "subject_id",
        L(account="acme", contact="dave", owner="sam", ticket="t_resolved"),
        automatic=True,
        kind="auto_reply",
        check=ticket_status_is("t_resolved", "resolved"),
    ),
    Scenario(
        "german_out_of_office_subject_is_ignored",
        "support",
        mail("x@stranger.example", SUPPORT, "Abwesenheitsnotiz: Ihre Anfrage"),
        "ignored",
        "auto_reply",
        L(),
        notes=("subject",),
        automatic=True,
        kind="auto_reply",
    ),
    Scenario(
        "x_autoreply_header_is_ignored",
        "sales",
        mail("x@stranger.example", SALES, "Thanks", headers={"X-Autoreply": "yes"}),
        "ignored",
        "auto_reply",
        L(),
        notes=("X-Autoreply header",),
        automatic=True,
        kind="auto_reply",
    ),
    Scenario(
        "auto_reply_in_thread_is_linked_as_automatic",
        "bcc",
        mail(
            CARLA,
            BCC,
            "Re: Offer",
            in_reply_to="<prior-opp@ours.example>",
            headers={"X-Auto-Response-Suppress": "All"},
        ),
        "linked",
        "thread",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
        automatic=True,
        kind="auto_reply",
        before=(PRIOR_BCC,),
    ),
    Scenario(
        "read_receipt_is_ignored",
        "sales",
        b"From: carla@acme.example\nTo: sales@crm.example\nSubject: Read: Offer\n"
        b"Message-ID: <mdn1@acme.example>\nMIME-Version: 1.0\nContent-Type: multipart/report;"
        b" report-type=disposition-notification; boundary=B\n\n--B\nContent-Type: text/plain"
        b"\n\nread\n--B--\n",
        "ignored",
        "auto_reply",
        L(),
        notes=("read receipt",),
        automatic=True,
        kind="auto_reply",
    ),
    Scenario(
        "bounce_marks_the_contact_address_bouncing",
        "bcc",
        dsn("dave@acme.example"),
        "ignored",
        "bounce",
        L(),
        notes=("delivery report",),
        automatic=True,
        kind="bounce",
        events=("contact.bouncing", "email.received"),
        check=bouncing("dave@acme.example"),
    ),
    Scenario(
        "bounce_of_unknown_address_marks_nothing",
        "sales",
        dsn("who@nowhere.example"),
        "ignored",
        "bounce",
        L(),
        notes=("delivery report",),
        automatic=True,
        kind="bounce",
    ),
    Scenario(
        "delayed_delivery_report_marks_nothing",
        "bcc",
        dsn("dave@acme.example", "delayed"),
        "ignored",
        "bounce",
        L(),
        notes=("delivery report",),
        automatic=True,
        kind="bounce",
        check=bouncing("dave@acme.example", False),
    ),
    Scenario(
        "bounce_without_report_uses_the_enclosed_original",
        "support",
        mail(
            "MAILER-DAEMON@mx.example",
            SUPPORT,
            "failure notice",
            "Sorry.\n",
            enclosed=mail(ANNA, "Tess <tess@globex.example>", "Offer"),
        ),
        "ignored",
        "bounce",
        L(),
        notes=("bounce from mailer-daemon@mx.example",),
        automatic=True,
        kind="bounce",
        events=("contact.bouncing", "email.received"),
        check=bouncing("tess@globex.example"),
    ),
    Scenario(
        "list_mail_is_ignored",
        "sales",
        mail(
            "News <news@vendor.example>",
            SALES,
            "Newsletter",
            headers={"List-Unsubscribe": "<mailto:u@vendor.example>"},
        ),
        "ignored",
        "list",
        L(),
        notes=("List-Unsubscribe header",),
        automatic=True,
        kind="list",
    ),
    Scenario(
        "list_mail_from_contact_with_id_is_still_ignored",
        "support",
        raw(GORDON, SUPPORT, "[users] TCK-{t_open}", headers={"List-Id": "<u.x.example>"}),
        "ignored",
        "list",
        L(),
        notes=("List-Id header",),
        automatic=True,
        kind="list",
    ),
    Scenario(
        "bulk_precedence_is_ignored",
        "support",
        mail("x@stranger.example", SUPPORT, "Offer", headers={"Precedence": "bulk"}),
        "ignored",
        "auto_reply",
        L(),
        notes=("Precedence: bulk",),
        automatic=True,
        kind="auto_reply",
    ),
    Scenario(
        "loop_marker_is_ignored",
        "sales",
        mail("x@stranger.example", SALES, "Hi", headers={"X-Mailsvc-Loop": "crm.example"}),
        "ignored",
        "loop",
        L(),
        notes=("X-Mailsvc-Loop header",),
        automatic=True,
        kind="loop",
    ),
    Scenario(
        "too_many_received_headers_is_a_loop",
        "support",
        b"".join(b"Received: from a by b; Mon, 4 Mar 2024 10:00:00 +0000\n" for _ in range(31))
        + b"From: x@stranger.example\nTo: support@crm.example\nSubject: Hi\n"
        b"Message-ID: <loop2@stranger.example>\n\nHi\n",
        "ignored",
        "loop",
        L(),
        notes=("31 Received headers",),
        automatic=True,
        kind="loop",
    ),
    # ---- the same mail twice
    Scenario(
        "same_message_twice_is_a_duplicate",
        "sales",
        mail("Petra <petra@neu.example>", SALES, "Anfrage", message_id="<dup@neu.example>"),
        "duplicate",
        None,
        L(),
        created={"Activity": 0},
        before=(
            (
                "sales",
                mail("Petra <petra@neu.example>", SALES, "Anfrage", message_id="<dup@neu.example>"),
            ),
        ),
    ),
]


def fullwidth(text: str) -> str:
    """``text`` in full-width characters (ASCII letters, digits, ``-``), as CJK input gives."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


NEW_PERSON = "Neu Kollege <neu.kollege@acme.example>"
TEAM_MAILBOX = "Vertrieb <vertrieb@ours.example>"

# The gaps of issue 17: Unicode IDs, a new person at the customer, a team mailbox of our domain.
GAP_SCENARIOS: list[Scenario] = [
    Scenario(
        "id_typed_with_a_no_break_space_is_found",
        "sales",
        raw(CARLA, SALES, "AW: Angebot OPP\u00a0{opp_open}"),
        "linked",
        "subject_id",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
    ),
    Scenario(
        "id_in_full_width_characters_is_found",
        "support",
        lambda ids: mail(GORDON, SUPPORT, "Re: " + fullwidth(f"TCK-{ids['t_open']}")),
        "ticket_updated",
        "subject_id",
        L(account="globex", contact="gordon", owner="sam", ticket="t_open"),
    ),
    Scenario(
        "id_with_a_typographic_dash_is_found",
        "sales",
        raw(GORDON, SALES, "Angebot OPP\u2013{opp_globex}"),
        "linked",
        "subject_id",
        L(account="globex", contact="gordon", owner="anna", opportunity="opp_globex"),
    ),
    Scenario(
        "unknown_person_at_the_customer_replies_with_the_id",
        "sales",
        raw(NEW_PERSON, SALES, "Re: Angebot OPP-{opp_open}"),
        "linked",
        "subject_id",
        L(account="acme", owner="anna", opportunity="opp_open"),
        notes=("new_person",),
    ),
    Scenario(
        "unknown_person_at_the_customer_replies_in_the_thread",
        "sales",
        mail(NEW_PERSON, SALES, "Re: Offer", in_reply_to="<prior-opp@ours.example>"),
        "linked",
        "thread",
        L(account="acme", owner="anna", opportunity="opp_open"),
        notes=("new_person",),
        before=(PRIOR_BCC,),
    ),
    Scenario(
        "unknown_person_at_the_customer_on_a_ticket_is_logged_without_contact",
        "support",
        raw("someone@globex.example", SUPPORT, "Re: TCK-{t_open}"),
        "ticket_updated",
        "subject_id",
        L(account="globex", owner="sam", ticket="t_open"),
        notes=("new_person",),
    ),
    Scenario(
        "user_bccs_an_unknown_person_at_the_customer_with_the_id",
        "bcc",
        raw(ANNA, NEW_PERSON, "Ihr Angebot OPP-{opp_open}"),
        "linked",
        "subject_id",
        L(account="acme", owner="anna", opportunity="opp_open"),
        notes=("new_person",),
        direction="outgoing",
    ),
    Scenario(
        "stranger_of_another_domain_with_the_id_keeps_the_records_contact",
        "sales",
        raw("Someone <someone@elsewhere.example>", SALES, "OPP-{opp_open}"),
        "linked",
        "subject_id",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
    ),
    Scenario(
        "team_mailbox_of_our_domain_on_sales_is_no_lead",
        "sales",
        mail(TEAM_MAILBOX, SALES, "Anfrage weitergeleitet"),
        "ignored",
        "no_counterparty",
        L(),
        notes=("no_counterparty",),
    ),
    Scenario(
        "team_mailbox_of_our_domain_on_support_opens_no_ticket",
        "support",
        mail(TEAM_MAILBOX, SUPPORT, "Drucker"),
        "ignored",
        "no_counterparty",
        L(),
        notes=("no_counterparty",),
    ),
    Scenario(
        "team_mailbox_of_our_domain_writing_to_a_customer_links_the_customer",
        "bcc",
        mail(TEAM_MAILBOX, [CARLA, BCC], "Ihr Angebot"),
        "linked",
        "single_open_record",
        L(account="acme", contact="carla", owner="anna", opportunity="opp_open"),
        direction="outgoing",
    ),
    Scenario(
        "configured_internal_domains_replace_the_users_domains",
        "sales",
        mail(TEAM_MAILBOX, SALES, "Anfrage"),
        "lead_created",
        "new_lead",
        L(owner="sally", inbox_lead="new"),
        settings={"internal_domains": ("corp.example",)},
    ),
    Scenario(
        "mail_without_from_is_ignored_with_a_rule",
        "sales",
        b"To: sales@crm.example\nSubject: Hi\nMessage-ID: <nofrom@x.example>\n\nHi\n",
        "ignored",
        "no_counterparty",
        L(),
        notes=("no_counterparty",),
    ),
    Scenario(
        "user_mail_on_support_to_an_unknown_address_is_no_match",
        "support",
        mail(ANNA, "Paula <paula@gmx.de>", "Hello"),
        "ignored",
        "no_match",
        L(),
        notes=("no_match",),
        direction="outgoing",
    ),
]
SCENARIOS += GAP_SCENARIOS


def test_there_are_at_least_sixty_scenarios() -> None:
    names = [s.name for s in SCENARIOS]
    assert len(names) == len(set(names))
    assert len(names) >= 60


# ------------------------------------------------------------------ running them

MODELS = {
    "InboxLead": InboxLead,
    "Ticket": Ticket,
    "TicketUpdate": TicketUpdate,
    "Activity": Activity,
}


async def counts(session: AsyncSession) -> dict[str, int]:
    return {
        name: int(await session.scalar(select(func.count()).select_from(model)) or 0)
        for name, model in MODELS.items()
    }


async def submit(services: Services, role: str, data: bytes) -> Outcome:
    envelope = Envelope("sender@mail.example", (ROLE_ADDRESS[role],), role, "file")  # type: ignore[arg-type]
    return await services.pipeline.submit(RawMail(data, envelope))


def resolve(ids: dict[str, int], outcome: Outcome, links: dict[str, str | None]) -> dict[str, Any]:
    expected: dict[str, Any] = dict.fromkeys(
        ("account", "contact", "owner", "opportunity", "ticket", "inbox_lead")
    )
    for key, symbol in links.items():
        if symbol == "new":
            assert outcome.links[key] is not None
            expected[key] = outcome.links[key]
        elif symbol is not None:
            expected[key] = ids[symbol]
    return expected


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
async def test_scenario(scenario: Scenario, make_settings: Callable[..., Settings]) -> None:
    async with open_services(make_settings(**OWNERS, **scenario.settings), migrate=False) as svc:
        async with svc.sessions() as session, session.begin():
            ids = await build_world(session)
        for role, data in scenario.before:
            await submit(svc, role, data.replace(b"{opp_open}", str(ids["opp_open"]).encode()))
        async with svc.sessions() as session:
            before = await counts(session)
            seq = int(await session.scalar(select(func.max(OutboxEvent.seq))) or 0)
        data = scenario.data(ids) if callable(scenario.data) else scenario.data
        outcome = await submit(svc, scenario.role, data)

        assert outcome.kind == scenario.outcome
        assert outcome.rule == scenario.rule
        assert outcome.notes == tuple(n.format(**ids) for n in scenario.notes)
        assert outcome.automatic is scenario.automatic
        assert outcome.links == resolve(ids, outcome, scenario.links) or (
            scenario.outcome == "duplicate" and outcome.links == {}
        )
        async with svc.sessions() as session:
            after = await counts(session)
            assert {k: after[k] - before[k] for k in after} == scenario.expected_created()
            events = list(
                await session.scalars(
                    select(OutboxEvent).where(OutboxEvent.seq > seq).order_by(OutboxEvent.seq)
                )
            )
            assert [e.type for e in events] == scenario.expected_events()
            for event in events:
                if event.type.startswith("email."):
                    assert event.data["rule"] == scenario.rule
                    assert event.data["links"] == outcome.to_json()["links"]
                    assert event.data["notes"] == list(outcome.notes)
            if outcome.email_id is not None and scenario.outcome != "duplicate":
                email = await session.get(Email, outcome.email_id)
                assert email is not None
                assert (email.kind, email.direction) == (scenario.kind, scenario.direction)
                assert email.rule == scenario.rule and email.automatic is scenario.automatic
            if scenario.check is not None:
                await scenario.check(session, ids, outcome)


async def test_lead_and_ticket_events_carry_the_created_records(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_services(make_settings(**OWNERS), migrate=False) as svc:
        async with svc.sessions() as session, session.begin():
            ids = await build_world(session)
        lead = await submit(svc, "sales", mail("Petra Neu <petra@neu.example>", SALES, "Offer"))
        ticket = await submit(svc, "support", mail("Nina <nina@gmail.com>", SUPPORT, "Bug"))
        async with svc.sessions() as session:
            rows = {e.type: e.data for e in await session.scalars(select(OutboxEvent))}
        assert rows["inbox_lead.created"]["id"] == lead.links["inbox_lead"]
        assert rows["inbox_lead.created"]["owner_id"] == ids["sally"]
        assert rows["ticket.created"]["id"] == ticket.links["ticket"]
        assert rows["ticket.created"]["requester_email"] == "nina@gmail.com"


async def test_reply_text_is_stored_without_quote_and_signature(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_services(make_settings(**OWNERS), migrate=False) as svc:
        outcome = await submit(
            svc,
            "sales",
            mail(
                "Petra <petra@neu.example>",
                SALES,
                "x",
                SIGNED + "\nOn Mon, 4 Mar 2024 Anna wrote:\n> old\n",
            ),
        )
        async with svc.sessions() as session:
            email = await session.get(Email, outcome.email_id)
        assert email is not None
        assert email.reply_text == "Hello,\n\nwe would like an offer for 20 seats."
        assert "> old" in email.text_body


async def test_concurrent_mail_of_one_unknown_sender_opens_one_lead(postgres_database: str) -> None:
    """Two writers (two pipelines, two engines) race on the same new sender: one lead, two mails."""
    await _truncate_postgres(postgres_database)
    settings = base_settings(postgres_database, **OWNERS)
    async with (
        open_services(settings, migrate=False) as one,
        open_services(settings, migrate=False) as two,
    ):
        outcomes = await asyncio.gather(
            *[
                submit(
                    svc,
                    "sales",
                    mail(
                        "Racer <racer@race.example>",
                        SALES,
                        "Offer",
                        message_id=f"<race-{n}@race.example>",
                    ),
                )
                for n, svc in enumerate([one, two, one, two])
            ]
        )
        assert sorted(o.kind for o in outcomes).count("lead_created") == 1
        assert {o.links["inbox_lead"] for o in outcomes} == {outcomes[0].links["inbox_lead"]}
        assert {o.rule for o in outcomes} == {"new_lead", "open_lead"}
        async with one.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(InboxLead)) == 1
            assert await session.scalar(select(func.count()).select_from(Email)) == 4
            created = await session.scalar(
                select(func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.type == "inbox_lead.created")
            )
            assert created == 1


# ------------------------------------------------------------------ issue 17: beyond the table


async def test_a_forged_user_sender_creates_nothing_in_the_users_name(
    make_settings: Callable[..., Settings],
) -> None:
    """The receiving server could not verify a mail in a user's name (``sender_verified``): it is
    stored and ignored, with no lead, no ticket update and no owner."""
    async with open_services(make_settings(**OWNERS), migrate=False) as svc:
        async with svc.sessions() as session, session.begin():
            ids = await build_world(session)
        for to, subject in [("Paula <paula@gmx.de>", "Offer"),
                            (GORDON, f"Re: TCK-{ids['t_open']}")]:
            envelope = Envelope("anna@ours.example", (BCC,), "bcc", "smtp")
            item = await svc.pipeline.prepare(RawMail(mail(ANNA, to, subject), envelope))
            async with svc.sessions() as session:
                before = await counts(session)
            outcome = (await svc.pipeline.process([replace(item, sender_verified=False)]))[0]
            assert (outcome.kind, outcome.rule, outcome.notes) == (
                "ignored", "sender_unverified", ("sender_unverified",)
            )
            assert not any(outcome.links.values())
            async with svc.sessions() as session:
                assert await counts(session) == before
                email = await session.get(Email, outcome.email_id)
                assert email is not None and email.direction == "incoming"


async def test_a_lead_entered_by_hand_takes_the_next_mail_of_its_address(
    make_settings: Callable[..., Settings],
) -> None:
    """One way to make an inbox lead: the API's lead claims its address like the intake's, so the
    next mail goes to it instead of opening a second lead; one event shape for both."""
    from mailsvc.crmstore import services as crm

    async with open_services(make_settings(**OWNERS), migrate=False) as svc:
        async with svc.sessions() as session, session.begin():
            await build_world(session)
            lead = await crm.create_inbox_lead(session, "Fair contact", email="Petra@Neu.example")
            second = await crm.create_inbox_lead(session, "Again", email="petra@neu.example")
        assert (lead.open_key, second.open_key) == ("petra@neu.example", None)
        outcome = await submit(svc, "sales", mail("Petra <petra@neu.example>", SALES, "Hallo"))
        assert (outcome.rule, outcome.links["inbox_lead"]) == ("open_lead", lead.id)
        typed = await submit(svc, "sales", mail("Max <max@lead.example>", SALES, "Anfrage"))
        async with svc.sessions() as session:
            shapes = {
                frozenset(e.data) for e in await session.scalars(
                    select(OutboxEvent).where(OutboxEvent.type == "inbox_lead.created")
                )
            }
        assert typed.kind == "lead_created" and len(shapes) == 1


async def test_csv_import_gives_no_company_a_freemail_domain(
    make_settings: Callable[..., Settings],
) -> None:
    """posteo.de is freemail (one list for linking, CRM and CSV import): importing a contact there
    gives the company no domain, so the next posteo.de person is no employee of it."""
    from mailsvc.contacts_import import import_contacts

    settings = make_settings(**OWNERS)
    async with (
        open_services(settings, migrate=False) as svc,
        svc.sessions() as session,
        session.begin(),
    ):
        await build_world(session)
    report = await import_contacts(
        settings, "company,first_name,last_name,email\nKlein GmbH,Kai,Klein,kai@posteo.de\n"
    )
    assert report.contacts_created == 1
    async with open_services(settings, migrate=False) as svc:
        async with svc.sessions() as session:
            domains = list(await session.scalars(
                select(AccountDomain.domain).where(AccountDomain.domain == "posteo.de")
            ))
        assert domains == []
        outcome = await submit(svc, "sales", mail("Pia <pia@posteo.de>", SALES, "Anfrage"))
        assert outcome.kind == "lead_created" and outcome.links["account"] is None


async def test_intake_and_reprocess_apply_a_decision_alike(
    make_settings: Callable[..., Settings],
) -> None:
    """One applier: links are labelled with the deciding rule and the timeline entry gets the time
    the mail was sent, else received, whether the intake or reprocessing put it there."""
    from mailsvc.crmstore.models import EmailLink
    from mailsvc.ingest.reprocess import Selection, reprocess

    async with open_services(make_settings(**OWNERS), migrate=False) as svc:
        async with svc.sessions() as session, session.begin():
            ids = await build_world(session)
        undated = mail("Zoe <zoe@acme.example>", SALES, "Hallo")  # no Date header
        assert b"\nDate:" not in undated
        first = await submit(svc, "bcc", undated)
        assert first.rule == "address"
        async with svc.sessions() as session, session.begin():
            session.add(Contact(first_name="Zoe", last_name="Z", email="zoe@acme.example",
                                account_id=ids["acme"], owner_id=ids["sally"],
                                addresses=[ContactEmail(email="zoe@acme.example")]))
        counted = await reprocess(svc.pipeline, svc.sessions, Selection(ids=(first.email_id,)))
        assert counted["relinked"] == 1
        async with svc.sessions() as session:
            email = await session.get(Email, first.email_id)
            assert email is not None and email.sent_at is None
            activities = list(await session.scalars(
                select(Activity).where(Activity.email_id == email.id)
            ))
            assert [a.done_at for a in activities] == [email.received_at]
            assert activities[0].contact_id is not None
            rules = set(await session.scalars(
                select(EmailLink.rule).where(EmailLink.email_id == email.id)
            ))
        assert rules == {"address"}
