"""An HTML-only mail's text is what its reader sees: laid out, hidden parts left out."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsvc.linking import text as text_module
from mailsvc.linking.text import html_to_text


@pytest.mark.parametrize(("markup", "expected"), [
    ("", ""),
    ("   \n ", ""),
    ("<p>Hello <b>Anna</b>,</p><p>the offer stands.</p>", "Hello Anna,\n\nthe offer stands."),
    ("<p>Price:&nbsp;20&nbsp;&euro; &amp; VAT</p>", "Price: 20 € & VAT"),
    ("<p>one<br>two</p>", "one\ntwo"),
    ("plain text &amp; no tags", "plain text & no tags"),
])
def test_layout_and_entities(markup: str, expected: str) -> None:
    assert html_to_text(markup) == expected


def test_what_is_not_shown_is_left_out() -> None:
    markup = (
        "<html><head><title>Newsletter</title><style>p { color: red }</style></head><body>"
        '<div style="display:none">Preheader: 50 % off everything</div>'
        "<script>track()</script><p>Dear customer,</p><p>your ticket TCK-7 is solved.</p>"
        "</body></html>"
    )
    text = html_to_text(markup)
    assert "Dear customer," in text and "TCK-7" in text
    for hidden in ("Preheader", "Newsletter", "color", "track"):
        assert hidden not in text


def test_tables_keep_their_cells_apart() -> None:
    text = html_to_text("<table><tr><td>Order</td><td>4711</td></tr>"
                        "<tr><td>Total</td><td>99.00</td></tr></table>")
    lines = [line.split() for line in text.splitlines() if line.strip()]
    assert lines == [["Order", "4711"], ["Total", "99.00"]]


def test_markup_too_deep_for_the_parser_keeps_its_text() -> None:
    assert html_to_text("<div>" * 5000 + "the words at the bottom") == "the words at the bottom"


# The fallback's steps against the plain regular expressions they stand in for (which were
# quadratic on hostile markup: each "<" with no ">" after it scanned to the end).
_OLD_INVISIBLE = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.I | re.S)
_PIECES = ["<script>", "</script>", "<SCRIPT a=1>", "</script >", "<style>", "</style>", "<head>",
           "</head>", "</HEAD\n>", "<scripts>", "</scripts>", "x", "<", ">", "<p>", "</p>", "<div",
           "text ", "\n", "<headx>", "</script", "<br/>"]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=16).map("".join))
def test_the_fallback_strips_as_the_plain_expressions_do(markup: str) -> None:
    assert text_module._drop_invisible(markup) == _OLD_INVISIBLE.sub("", markup)
    assert text_module._ended(text_module._TAG, "", markup) == text_module._TAG.sub("", markup)
    assert (text_module._ended(text_module._BLOCK_END, "\n", markup)
            == text_module._BLOCK_END.sub("\n", markup))


def test_hostile_markup_falls_back_and_keeps_its_text() -> None:
    markup = "<p" * 50_000 + "<script" * 20_000 + "hello"
    assert html_to_text(markup).endswith("hello")
