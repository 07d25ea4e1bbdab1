"""An HTML-only mail's text is what its reader sees: laid out, hidden parts left out."""

from __future__ import annotations

import pytest

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
