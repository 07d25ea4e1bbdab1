"""Forwarded originals found in message/rfc822 parts and in inline blocks of the common clients."""

from __future__ import annotations

import pytest

from mailsvc.linking.forwards import find_forwarded, find_inline_forward, parse_address_list
from mailsvc.mail import Address, ParsedMail
from tests.scenarios.forwards import FORWARD_BODIES


def parsed(
    text: str = "", enclosed: tuple[ParsedMail, ...] = (), sender: str = "a@x.example"
) -> ParsedMail:
    return ParsedMail(
        message_id="m@x",
        subject="Fwd: x",
        from_=(Address("", sender),),
        to=(),
        cc=(),
        reply_to=(),
        date=None,
        in_reply_to=(),
        references=(),
        headers=(),
        text=text,
        html="",
        enclosed=enclosed,
    )


@pytest.mark.parametrize("name", sorted(FORWARD_BODIES))
def test_inline_forward_block_names_the_original_sender(name: str) -> None:
    style, body = FORWARD_BODIES[name]
    found = find_inline_forward(body)
    assert found is not None
    assert found.style == style
    assert found.sender is not None and found.sender.email == "gordon@globex.example"
    assert [a.email for a in found.to] == ["anna@ours.example"]
    assert found.subject.startswith(("Pricing", "Preise"))
    assert found.body.startswith(("Hi", "Hallo"))


def test_outlook_names_in_last_first_form_keep_their_comma() -> None:
    found = find_inline_forward(FORWARD_BODIES["outlook_de"][1])
    assert found is not None and found.from_ == (Address("Buyer, Gordon", "gordon@globex.example"),)


def test_outlook_cc_line_is_read() -> None:
    found = find_inline_forward(FORWARD_BODIES["outlook_en"][1])
    assert found is not None and [a.email for a in found.cc] == ["purchasing@globex.example"]


def test_quoted_forward_block_is_found() -> None:
    body = "> ---------- Forwarded message ---------\n> From: X <x@y.example>\n> Subject: s\n"
    found = find_inline_forward(body)
    assert found is not None and found.sender == Address("X", "x@y.example")


@pytest.mark.parametrize(
    "text",
    [
        "Just a mail.\n\nBest, Anna",
        "On Mon, 4 Mar 2024 Gordon <gordon@globex.example> wrote:\n> hi",
        "From: the desk of Anna\nno header follows",
        "---------- Forwarded message ---------\nnothing here",
    ],
)
def test_no_forward_block(text: str) -> None:
    assert find_inline_forward(text) is None


def test_enclosed_message_is_the_original_when_the_text_has_no_block() -> None:
    original = ParsedMail(
        message_id="o@x",
        subject="Pricing",
        from_=(Address("G", "gordon@globex.example"),),
        to=(Address("", "anna@ours.example"),),
        cc=(),
        reply_to=(),
        date=None,
        in_reply_to=("p@x",),
        references=(),
        headers=(),
        text="Hi",
        html="",
    )
    found = find_forwarded(parsed("see attached", (original,)))
    assert found is not None and found.style == "rfc822"
    assert found.sender == Address("G", "gordon@globex.example")
    assert found.in_reply_to == ("p@x",) and found.body == "Hi"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a@x.example; B <b@y.example>", [("", "a@x.example"), ("B", "b@y.example")]),
        ("Name [mailto:N@X.example]", [("Name", "n@x.example")]),
        ("Name <n@x.example<mailto:n@x.example>>", [("Name", "n@x.example")]),
        (
            '"Doe, Jane" <jane@x.example>, joe@x.example',
            [("Doe, Jane", "jane@x.example"), ("", "joe@x.example")],
        ),
        ("Undisclosed recipients", []),
    ],
)
def test_parse_address_list(value: str, expected: list[tuple[str, str]]) -> None:
    assert [(a.name, a.email) for a in parse_address_list(value)] == expected


def test_a_bare_address_has_a_local_part_of_at_most_64_characters() -> None:
    """RFC 5321's limit, which also keeps the scan of a long line without "@" linear."""
    assert parse_address_list("x" * 100 + "@example.com") == (
        Address("", "x" * 64 + "@example.com"),)
    assert parse_address_list("Q" * 200_000) == ()


def test_outlook_nested_mailto_is_read_and_a_run_of_at_signs_is_not_one() -> None:
    assert parse_address_list("Carla <carla@acme.example<mailto:carla@acme.example>>") == (
        Address("Carla", "carla@acme.example"),)
    assert parse_address_list("<" + "a@" * 50_000) == ()  # linear: no split of the run is tried
