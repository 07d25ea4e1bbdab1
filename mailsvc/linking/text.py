"""The text of a mail: its body as plain text, the new part of a reply, names and phone numbers."""

from __future__ import annotations

import bisect
import html
import re
from dataclasses import dataclass

from mailsvc.linking.newest_reply import newest_reply
from mailsvc.mail import Address, ParsedMail

# Quote stripping is regex work over the whole body; the new part of a reply sits at its top.
MAX_REPLY_INPUT = 100_000

_TAG = re.compile(r"<[^>]*>")
_BLOCK_END = re.compile(r"</?(?:p|div|br|tr|li|h[1-6]|blockquote)\b[^>]*>", re.I)
_INVISIBLE = ("script", "style", "head")  # elements whose text a reader does not see
_INVISIBLE_OPEN = re.compile(rf"<({'|'.join(_INVISIBLE)})\b", re.I)
_INVISIBLE_CLOSE = {kind: re.compile(rf"</{kind}\s*>", re.I) for kind in _INVISIBLE}
_BLANK_RUNS = re.compile(r"\n{3,}")
_PHONE_LINE = re.compile(
    r"^\W*(?:tel(?:efon|ephone)?|phone|fon|mobil(?:e)?|mob|handy|cell|t|m)\.?\s*[:.]?\s*"
    r"(?P<number>\+?[0-9][0-9 ()/.\-]{5,}[0-9])\s*$",
    re.I,
)


@dataclass(frozen=True, slots=True)
class Reply:
    """The new part of a mail (without quoted history and signature) and its signature."""

    text: str
    signature: str


def body_text(mail: ParsedMail) -> str:
    """The plain text body, or the HTML body reduced to text when there is no plain part."""
    if mail.text.strip():
        return mail.text
    return html_to_text(mail.html)


def html_to_text(markup: str) -> str:
    """The text a reader sees in ``markup``: inscriptis lays out blocks, lists and tables and
    skips what is not shown (``display: none`` preheaders, ``<script>``, ``<style>``, ``<head>``).
    Where lxml gives up (nesting past its depth limit, say), the tags are stripped instead, so no
    text is lost."""
    if not markup.strip():
        return ""
    from inscriptis import get_text  # lxml: loaded only for mail that has no plain-text part

    try:
        text = get_text(markup)
    except (ValueError, LookupError, RecursionError):  # lxml's ParserError is a ValueError
        text = ""
    if not text.strip():
        text = html.unescape(_ended(_TAG, "", _ended(_BLOCK_END, "\n", _drop_invisible(markup))))
    return _BLANK_RUNS.sub("\n\n", "\n".join(line.strip() for line in text.splitlines())).strip()


# The fallback's patterns, applied so that hostile markup (thousands of "<" with no ">" after them,
# say) costs linear time: a regular expression tried at each of them would scan to the end each.


def _ended(pattern: re.Pattern[str], replacement: str, text: str) -> str:
    """``pattern.sub`` for a pattern whose matches end at a ``>``: none starts after the last."""
    end = text.rfind(">") + 1
    return pattern.sub(replacement, text[:end]) + text[end:]


def _drop_invisible(markup: str) -> str:
    r"""What ``re.sub(r"<(script|style|head)\b.*?</\1\s*>", "", markup, flags=re.I | re.S)``
    gives, with each element's closing tags found once instead of searched from every opening."""
    closes = {kind: [m.span() for m in close.finditer(markup)]
              for kind, close in _INVISIBLE_CLOSE.items()}
    kept: list[str] = []
    position = search = 0
    while (opening := _INVISIBLE_OPEN.search(markup, search)) is not None:
        spans = closes[opening[1].lower()]
        n = bisect.bisect_left(spans, (opening.end(), -1))
        if n == len(spans):  # never closed: not an element to drop, look on from the next char
            search = opening.start() + 1
            continue
        kept.append(markup[position:opening.start()])
        position = search = spans[n][1]
    kept.append(markup[position:])
    return "".join(kept)


def split_reply(text: str) -> Reply:
    """The newest reply in ``text`` (mail-parser-reply, German and English quote headers)."""
    if not text.strip():
        return Reply("", "")
    first = newest_reply(text[:MAX_REPLY_INPUT])
    return Reply(_drop_trailing_quotes(first.body), first.signatures or "")


def _drop_trailing_quotes(text: str) -> str:
    """Quoted lines (``>``) under the reply without a quote header are history too."""
    lines = text.splitlines()
    while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith(">")):
        lines.pop()
    return "\n".join(lines).strip()


def phone_from_signature(reply: Reply) -> str | None:
    """The phone number of a simple signature: exactly one labelled number, else nothing."""
    lines = reply.signature.splitlines() or reply.text.splitlines()[-6:]
    numbers = {
        re.sub(r"\s+", " ", match["number"]).strip()
        for line in lines
        if (match := _PHONE_LINE.match(line.strip()))
        and sum(c.isdigit() for c in match["number"]) >= 6
    }
    return numbers.pop() if len(numbers) == 1 else None


def split_name(address: Address) -> tuple[str | None, str | None]:
    """First and last name from a display name (``Last, First`` too); nothing for an address."""
    name = address.name.strip().strip("\"'")
    if not name or "@" in name:
        return None, None
    if "," in name:
        last, _, first = name.partition(",")
        return first.strip() or None, last.strip() or None
    parts = name.split()
    if len(parts) == 1:
        return None, parts[0]
    return " ".join(parts[:-1]), parts[-1]
