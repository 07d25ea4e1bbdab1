"""The newest reply is the one mail-parser-reply finds: the same fragment, headers, signature and
disclaimers, on real mail text and on generated text full of quote headers and signatures."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailparser_reply import EmailReplyParser
from mailparser_reply.parser import EmailReply

from mailsvc.errors import ParseError
from mailsvc.ingest.parse import parse_mail
from mailsvc.linking import newest_reply as module
from mailsvc.linking.newest_reply import LANGUAGES, newest_reply
from mailsvc.linking.text import body_text
from tests.conftest import CORPUS, corpus_messages

LIBRARY = EmailReplyParser(languages=list(LANGUAGES))


def fields(reply: EmailReply) -> tuple[object, ...]:
    return reply.content, reply.headers, reply.signatures, reply.disclaimers, reply.body


def assert_same(text: str) -> None:
    assert fields(newest_reply(text)) == fields(LIBRARY.read(text).replies[0])


def test_the_installed_patterns_are_the_ones_the_fast_path_was_checked_for() -> None:
    # Another mail-parser-reply changes its patterns: check this module against them, then
    # update PATTERNS_CHECKED (until then the library's own, slower code runs).
    assert module.FAST, module.patterns_digest()


def _texts(path: Path) -> list[str]:
    data = path.read_bytes()
    texts = [data.decode("utf-8", "replace")]
    try:
        mail = parse_mail(data)
    except ParseError:
        return texts
    return [*texts, body_text(mail), *(body_text(m) for m in mail.enclosed)]


@pytest.mark.parametrize("path", corpus_messages(), ids=lambda p: str(p.relative_to(CORPUS)))
def test_real_mail_text(path: Path) -> None:
    for text in _texts(path):
        assert_same(text)


LINES = [
    "On Mon, 30 Nov 2026 at 10:00, Carla <carla@acme.example> wrote:",
    "On Mon, 30 Nov 2026 Carla wrote:", "> On Tue, Bob wrote:", "On", "wrote:",
    "Am 30.11.2026 um 10:00 schrieb Carla Acme <carla@acme.example>:",
    "Am Montag schrieb Carla:", "-----Original Message-----", "----- Original Message -----",
    "From: Carla Acme", "Sent: Monday", "To: support", "Subject: Re: [TCK-7]", "Date: today",
    "Cc: bob", "*From:* Carla", "Von: Carla", "Gesendet: Montag", "An: Support", "Betreff: Drucker",
    "> From: Carla", "> Sent: Monday", ">> quoted twice", "> quoted", ">", "",
    "--", "-- ", "- item", "-Carla", "__", "_" * 32, "-" * 40, "Best regards", "Kind Regards,",
    "Thanks,", "Thank you, Bob", "Best,", "regards,", "Mit freundlichen Grüßen", "Viele Grüße",
    "Gruß", "Beste Grüsse", "Sent from my iPhone", "Get Outlook for iOS",
    "Gesendet von meinem iPad",
    "CAUTION: external mail", "Disclaimer: this mail is confidential", "*** Disclaimer ***",
    "Confidential Notice: this mail", "Wichtiger Hinweis: Diese E-Mail", "Achtung: mail",
    "CONFIDENTIALITY: this e-mail", "warning: mail", "Important Information: mail",
    "Privileged Note: mail", "Private notice: mail", "dIsClAiMeR mail",
    "Hello, the printer stops. Please advise! Why? Thanks.", "Carla", "Tel: +49 30 1234567",
    "   indented line", "\tTabbed", "mixed \u00a0 spaces \u200b here", "line with trailing   ",
]


@st.composite
def mail_texts(draw: st.DrawFn) -> str:
    lines = draw(st.lists(st.one_of(st.sampled_from(LINES), st.text(max_size=30)), max_size=40))
    breaks = draw(st.sampled_from(["\n", "\r\n", "\n\n"]))
    return draw(st.sampled_from(["", " ", "\n"])) + breaks.join(lines)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mail_texts())
def test_generated_text(text: str) -> None:
    assert_same(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("\n\r\t .!?>-_:OnFromSent wrote\u00a0\x0bA"), max_size=80))
def test_generated_punctuation_and_white_space(text: str) -> None:
    assert_same(text)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mail_texts())
def test_each_pattern_matches_where_the_library_scan_does(text: str) -> None:
    """Below the reply's fields (which are stripped): every match at the same span."""
    spans = [(m.span(), m.groups()) for m in module._HEADER.finditer(text)]
    assert [(m.span(), m.groups()) for m in module._matches(
        module._HEADER, module._line_starts(text), text)] == spans
    starts = (m.start() for m in module._DISCLAIMER_STARTS.finditer(text))
    assert [m.span() for m in module._matches(module._DISCLAIMERS, starts, text)] == [
        m.span() for m in module._DISCLAIMERS.finditer(text)]
    found = module._search(module._SIGNATURE, module._signature_starts(text), text)
    expected = module._SIGNATURE.search(text)
    assert (found and found.span()) == (expected and expected.span())


DISCLAIMERS = [line for line in LINES if module._DISCLAIMERS.search(line)]


@pytest.mark.parametrize("line", DISCLAIMERS)
def test_a_disclaimer_of_each_kind_is_looked_for(line: str) -> None:
    assert module._may_hold_disclaimer(line)
    assert newest_reply(f"Hello.\n{line}").disclaimers


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mail_texts())
def test_text_that_the_disclaimer_pattern_matches_is_never_skipped(text: str) -> None:
    if module._DISCLAIMERS.search(text):
        assert module._may_hold_disclaimer(text)


def test_hostile_text_is_split_without_trying_every_split() -> None:
    """mail-parser-reply took 33 s for 20 KB of blank lines and 1.9 s for a 9 KB line of "On On
    ...", growing with the square of the size. Here a run of line breaks is tried once, and a line
    longer than HEADER_LINE_LIMIT is not taken for a quote header."""
    blank = "Hello" + "\n" * 100_000 + "Bye"
    assert newest_reply(blank).content == "Hello" + "\n" * 100_000 + "Bye"
    long_line = "On " * 33_000 + "wrote:"
    assert module._line_length(long_line, 0) > module.HEADER_LINE_LIMIT
    assert newest_reply(long_line).headers == ""  # not a quote header: the whole text is new
    short = "Thanks!\n\nOn Mon, 30 Nov 2026 Carla wrote:\n> old"
    assert newest_reply(short).body == LIBRARY.read(short).replies[0].body == "Thanks!"
