"""The triage inbox's search: a whole Message-ID finds that mail through the index; anything else
(or a Message-ID no mail has) is looked for inside senders, subjects and Message-IDs."""

from __future__ import annotations

from mailsvc.api.ui.queries import InboxFilter, as_message_id, inbox
from mailsvc.bootstrap import Services
from mailsvc.mail import Envelope, RawMail
from tests.conftest import SALES


def mail(message_id: str, subject: str) -> RawMail:
    data = (f"From: Someone <someone@outside.example>\r\nTo: {SALES}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{message_id}>\r\n\r\nHello\r\n").encode()
    return RawMail(data, Envelope("someone@outside.example", (SALES,), "sales", "smtp"))


def test_what_counts_as_a_whole_message_id() -> None:
    assert as_message_id("<Abc.1@Host.Example>") == "Abc.1@host.example"
    assert as_message_id(" abc@host.example ") == "abc@host.example"
    for not_one in ("", "host.example", "@host.example", "abc@", "two words@x.example"):
        assert as_message_id(not_one) is None, not_one


async def test_a_message_id_finds_that_mail_and_a_miss_searches_inside(
    services: Services,
) -> None:
    await services.pipeline.submit(mail("abc@host.example", "First"))
    await services.pipeline.submit(mail("other@host.example", "About abc@host.example.org"))
    async with services.sessions() as session:
        found = await inbox(session, InboxFilter(attention=False, q="<abc@HOST.example>"))
        assert [m.message_id for m in found] == ["abc@host.example"]
        # No mail has this Message-ID: the search looks inside subjects (and senders, IDs).
        inside = await inbox(session, InboxFilter(attention=False, q="abc@host.example.org"))
        assert [m.message_id for m in inside] == ["other@host.example"]
        words = await inbox(session, InboxFilter(attention=False, q="ABOUT"))
        assert [m.message_id for m in words] == ["other@host.example"]
