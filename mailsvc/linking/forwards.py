"""Forwarded originals: the mail a user forwarded, from a message/rfc822 part or an inline block."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from mailsvc.linking.text import body_text
from mailsvc.mail import Address, ParsedMail

ForwardStyle = Literal["rfc822", "outlook", "gmail", "apple", "thunderbird"]


@dataclass(frozen=True, slots=True)
class Forwarded:
    """The original of a forward: who wrote it to whom, its subject and its text."""

    style: ForwardStyle
    from_: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    subject: str
    body: str
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()

    @property
    def sender(self) -> Address | None:
        return self.from_[0] if self.from_ else None


# Marker lines that open a forward block; the header lines of the original follow them.
_MARKERS: tuple[tuple[re.Pattern[str], ForwardStyle], ...] = (
    (re.compile(r"^-{9,}\s*(?:forwarded message|weitergeleitete nachricht)\s*-{3,}$", re.I),
     "gmail"),
    (re.compile(r"^-{3,}\s*(?:forwarded message|weitergeleitete nachricht)\s*-{3,}$", re.I),
     "thunderbird"),
    (re.compile(r"^-{5}\s*(?:original message|ursprüngliche nachricht)\s*-{5}$", re.I),
     "outlook"),
    (re.compile(r"^-{3,}\s*(?:original message|ursprüngliche nachricht)\s*-{3,}$", re.I),
     "thunderbird"),
    (re.compile(r"^(?:begin forwarded message|anfang der weitergeleiteten nachricht)\s*:$", re.I),
     "apple"),
    (re.compile(r"^_{10,}$"), "outlook"),
)

_FIELD_NAMES = {
    "from": "from", "von": "from",
    "to": "to", "an": "to",
    "cc": "cc", "kopie": "cc",
    "subject": "subject", "betreff": "subject",
    "date": "date", "datum": "date", "sent": "date", "gesendet": "date",
    "reply-to": "reply_to", "antwort an": "reply_to",
}  # fmt: skip
_FIELD = re.compile(
    r"^\*?(?P<name>" + "|".join(re.escape(n) for n in _FIELD_NAMES) + r")\s*:\*?\s*(?P<value>.*)$",
    re.I,
)
# Outlook's HTML as text. The local part has no "@": with one, a run of "@"s was tried at every
# split (quadratic).
_NESTED_MAILTO = re.compile(r"<([^<>\s@]+@[^<>\s]+)<mailto:[^<>]*>>", re.I)
_MAILTO = re.compile(r"\[\s*mailto:([^\]\s]+)\s*\]|<\s*mailto:([^>\s]+)\s*>", re.I)
_ADDRESS = re.compile(
    r"<\s*(?P<angle>[^<>\s@]+@[^<>\s@]+?)\s*>"
    # A local part is at most 64 characters (RFC 5321), which keeps the scan of a long run of
    # address characters with no "@" linear (unbounded, it was quadratic).
    r"|(?P<bare>[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"
)
_QUOTE_PREFIX = re.compile(r"^(?:>\s?)+")
# How far below a marker the header lines of the original may start (blank lines in between).
_MAX_GAP = 3


def find_forwarded(mail: ParsedMail) -> Forwarded | None:
    """The forwarded original: an inline block in the text first, else the first enclosed mail."""
    inline = find_inline_forward(body_text(mail))
    if inline is not None:
        return inline
    for enclosed in mail.enclosed:
        if enclosed.from_:
            return Forwarded(
                "rfc822", enclosed.from_, enclosed.to, enclosed.cc, enclosed.subject,
                body_text(enclosed), enclosed.in_reply_to, enclosed.references,
            )
    return None


def find_inline_forward(text: str) -> Forwarded | None:
    """The topmost forward block of Outlook, Gmail, Apple Mail or Thunderbird in ``text``."""
    lines = [_QUOTE_PREFIX.sub("", line).strip() for line in text.splitlines()]
    for index, line in enumerate(lines):
        style = _marker_style(line)
        if style is not None:
            found = _read_block(lines, index + 1, style)
        elif _is_outlook_header_start(lines, index):
            found = _read_block(lines, index, "outlook")
        else:
            continue
        if found is not None:
            return found
    return None


def _marker_style(line: str) -> ForwardStyle | None:
    for pattern, style in _MARKERS:
        if pattern.match(line):
            return style
    return None


def _is_outlook_header_start(lines: list[str], index: int) -> bool:
    """Outlook without a marker line: ``From:``/``Von:`` directly followed by ``Sent:``."""
    first = _FIELD.match(lines[index])
    if first is None or _FIELD_NAMES[first["name"].lower()] != "from":
        return False
    following = _FIELD.match(lines[index + 1]) if index + 1 < len(lines) else None
    return following is not None and following["name"].lower() in {"sent", "gesendet"}


def _read_block(lines: list[str], start: int, style: ForwardStyle) -> Forwarded | None:
    index = start
    while index < len(lines) and not lines[index] and index - start < _MAX_GAP:
        index += 1
    fields: dict[str, str] = {}
    last: str | None = None
    while index < len(lines) and lines[index]:
        match = _FIELD.match(lines[index])
        if match is not None:
            last = _FIELD_NAMES[match["name"].lower()]
            fields.setdefault(last, match["value"])
        elif last in {"to", "cc"} and "@" in lines[index]:
            fields[last] += ", " + lines[index]  # a wrapped recipient list
        elif last == "subject":
            fields[last] += " " + lines[index]
        else:
            break
        index += 1
    senders = parse_address_list(fields.get("from", ""))
    if not senders:
        return None
    body = "\n".join(lines[index:]).strip()
    return Forwarded(
        style, senders, parse_address_list(fields.get("to", "")),
        parse_address_list(fields.get("cc", "")), fields.get("subject", "").strip(), body,
    )


def parse_address_list(value: str) -> tuple[Address, ...]:
    """Addresses from a header line as mail clients print it (``;`` or ``,``, mailto links)."""
    value = _NESTED_MAILTO.sub(r"<\1>", value)
    value = _MAILTO.sub(lambda m: f"<{m[1] or m[2]}>", value)
    found: dict[str, Address] = {}
    previous_end = 0
    for match in _ADDRESS.finditer(value):
        email = (match["angle"] or match["bare"]).strip().lower()
        name = ""
        if match["angle"]:
            name = _clean_name(value[previous_end : match.start()])
        previous_end = match.end()
        if email not in found or (name and not found[email].name):
            found[email] = Address(name, email)
    return tuple(found.values())


def _clean_name(text: str) -> str:
    text = text.split("<", 1)[0]
    return text.strip().strip(",;").strip().strip("\"'*").strip()
