"""Real-world machine mail from tests/corpus never creates a lead or a ticket, on any address."""

from __future__ import annotations

import re
from collections.abc import Callable

from sqlalchemy import func, select

from mailsvc.bootstrap import open_services
from mailsvc.config import Settings
from mailsvc.crmstore.models import Email, InboxLead, Ticket
from mailsvc.ingest.classify import classify
from mailsvc.ingest.parse import parse_mail
from mailsvc.mail import Envelope, RawMail
from tests.conftest import CORPUS, SALES, SUPPORT

# The files this test relies on (see tests/corpus/MANIFEST.md for their sources).
MACHINE_MAIL = {
    "auto_reply": [
        "sisimai-set-of-emails/bsd/rfc3834-01.eml",
        "sisimai-set-of-emails/bsd/rfc3834-03.eml",
        "sisimai-set-of-emails/bsd/rfc3834-05.eml",
        "mimekit/messages/disposition-notification.txt",
        "zammad/mail089.box",
    ],
    "bounce": [
        *(
            f"sisimai-set-of-emails/bsd/{name}.eml"
            for name in (
                "lhost-amazonses-01",
                "lhost-courier-01",
                "lhost-domino-01",
                "lhost-einsundeins-03",
                "lhost-exchange2003-01",
                "lhost-exchange2007-01",
                "lhost-exim-01",
                "lhost-gmail-01",
                "lhost-gmx-01",
                "lhost-notes-01",
                "lhost-office365-04",
                "lhost-postfix-01",
                "lhost-qmail-01",
                "lhost-sendmail-01",
                "lhost-yahoo-01",
                "rfc3464-01",
                "arf-01",
            )
        ),
        "sisimai-set-of-emails/dos/lhost-amavis-01.eml",
        "sisimai-set-of-emails/mac/lhost-activehunter-01.eml",
        "enmime/dsn/testdata/delayed_dsn.raw",
        "enmime/dsn/testdata/multi_recipient_dsn.raw",
        "mailgun-flanker/bounce/gmail-no-dns.eml",
        "mailgun-flanker/complaints/aol.eml",
        "mikel-mail/multipart_report_emails/multi_address_bounce1.eml",
        "mimekit/messages/bounce.txt",
        "mimekit/messages/delivery-status.txt",
        "nodemailer-mailparser/delivery-status.eml",
        "postal-mime/bounce.eml",
        "zammad/mail052.box",
        "zammad/mail078.box",
    ],
    "list": [
        "mimekit/openpgp/[Announce] GnuPG 2.1.20 released.eml",
        "bestpractical-rt/emails/8859-15-message-series/dir",
        "spamscope-mail-parser/mail_test_6",
    ],
}
_MESSAGE_ID = re.compile(rb"^message-id:", re.I | re.M)


def test_the_files_are_classified_as_named() -> None:
    for kind, names in MACHINE_MAIL.items():
        for name in names:
            assert classify(parse_mail((CORPUS / name).read_bytes())).name == kind, name


async def test_machine_mail_creates_no_lead_and_no_ticket(
    make_settings: Callable[..., Settings],
) -> None:
    names = [n for names in MACHINE_MAIL.values() for n in names]
    async with open_services(make_settings(), migrate=False) as svc:
        for role, address in (("sales", SALES), ("support", SUPPORT)):
            for name in names:
                data = (CORPUS / name).read_bytes()
                # A distinct copy per address, so the second one is not a duplicate of the first.
                # Some corpus files share a Message-ID: key them by their bytes instead.
                data = f"X-Test-Copy: {role}\n".encode() + _MESSAGE_ID.sub(b"X-Old-Id:", data)
                envelope = Envelope("", (address,), role, "file")  # type: ignore[arg-type]
                outcome = await svc.pipeline.submit(RawMail(data, envelope))
                assert outcome.kind == "ignored", (role, name, outcome)
                assert outcome.rule in {"auto_reply", "bounce", "list"}, (role, name)
        async with svc.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(InboxLead)) == 0
            assert await session.scalar(select(func.count()).select_from(Ticket)) == 0
            stored = await session.scalar(select(func.count()).select_from(Email))
            assert stored == 2 * len(names)
