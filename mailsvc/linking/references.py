"""Record IDs in subjects (OPP-123, TCK-45), reply-prefix stripping and Message-ID parsing."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from mailsvc.errors import ConfigError

RecordKind = Literal["opportunity", "ticket"]

MAX_NUMBER = 999_999_999
"""The largest record number recognised (nine digits)."""

_PREFIX_SYNTAX = re.compile(r"[A-Za-z][A-Za-z0-9]*")

# Characters that glue word characters into one longer token (paths, URLs, addresses,
# decimals, ranges). An ID touching a run of these that touches a word character is
# part of that token and is not an ID.
_LEFT_JOINERS = frozenset(".-/\\@+#=&%~")
_RIGHT_JOINERS = _LEFT_JOINERS | frozenset(":!?")
# List separators: glue only when a digit follows directly (decimal comma: OPP-1,5).
_LIST_SEPARATORS = frozenset(",;")

# Reply / forward markers of common mail clients, longest first so that the regex
# alternation prefers e.g. "Fwd" over "Fw" and "RIF" over "R".
_REPLY_MARKERS = (
    "antw", "rif", "fwd", "odp", "ynt", "enc",
    "re", "aw", "wg", "fw", "sv", "vs", "tr",
    "r", "i",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RecordId:
    """A CRM record named in a subject: its kind and its positive number."""

    kind: RecordKind
    number: int

    def label(self, prefix: str) -> str:
        """The canonical display form, e.g. ``OPP-123`` for prefix ``OPP``."""
        return f"{prefix}-{self.number}"


@dataclass(frozen=True, slots=True)
class IdPatterns:
    """The configured ID prefixes; ``pattern`` is the compiled (and cached) candidate regex."""

    opportunity_prefix: str = "OPP"
    ticket_prefix: str = "TCK"

    def __post_init__(self) -> None:
        _check_prefixes(self.opportunity_prefix, self.ticket_prefix)

    @property
    def pattern(self) -> re.Pattern[str]:
        return compile_id_pattern(self.opportunity_prefix, self.ticket_prefix)

    def prefix_for(self, kind: RecordKind) -> str:
        return self.opportunity_prefix if kind == "opportunity" else self.ticket_prefix

    def label(self, record: RecordId) -> str:
        """``record`` in its canonical display form, e.g. ``TCK-45``."""
        return record.label(self.prefix_for(record.kind))


def _check_prefixes(opportunity_prefix: str, ticket_prefix: str) -> None:
    for prefix in (opportunity_prefix, ticket_prefix):
        if not _PREFIX_SYNTAX.fullmatch(prefix):
            raise ConfigError(
                f"ID prefix {prefix!r} must be ASCII letters and digits, starting with a letter"
            )
    if opportunity_prefix.lower() == ticket_prefix.lower():
        raise ConfigError(
            f"opportunity and ticket ID prefixes must differ, both are {ticket_prefix!r}"
        )


def _case_insensitive(word: str) -> str:
    """A regex matching ``word`` (ASCII) in any letter case, and nothing else."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


@lru_cache(maxsize=32)
def compile_id_pattern(opportunity_prefix: str, ticket_prefix: str) -> re.Pattern[str]:
    """The regex for ID candidates: prefix (any case), optional separator, digits.

    Groups: ``opportunity`` or ``ticket`` (the prefix as written) and ``number``. Token
    boundaries are not part of the regex; ``find_record_ids`` checks them.
    """
    _check_prefixes(opportunity_prefix, ticket_prefix)
    alternatives = sorted(
        [("opportunity", opportunity_prefix), ("ticket", ticket_prefix)],
        key=lambda item: len(item[1]),
        reverse=True,
    )
    prefixes = "|".join(f"(?P<{name}>{_case_insensitive(p)})" for name, p in alternatives)
    # Possessive digits: a run of digits is taken whole, never backtracked into.
    return re.compile(rf"(?:{prefixes})[-#_: ]?(?P<number>[0-9]++)")


def _is_token_char(char: str) -> bool:
    """Letters, numbers (any script), combining marks and the underscore make up words."""
    return char == "_" or unicodedata.category(char)[0] in "LNM"


def _glued_before(text: str, start: int) -> bool:
    """Whether the candidate at ``start`` continues a token to its left."""
    index = start - 1
    if index < 0:
        return False
    if _is_token_char(text[index]):
        return True
    while index >= 0 and text[index] in _LEFT_JOINERS:
        index -= 1
    return index < start - 1 and index >= 0 and _is_token_char(text[index])


def _glued_after(text: str, end: int) -> bool:
    """Whether the candidate ending at ``end`` continues into a token on its right."""
    if end >= len(text):
        return False
    char = text[end]
    if _is_token_char(char):
        return True
    if char in _LIST_SEPARATORS:
        return end + 1 < len(text) and text[end + 1].isdigit()
    index = end
    while index < len(text) and text[index] in _RIGHT_JOINERS:
        index += 1
    return index > end and index < len(text) and _is_token_char(text[index])


def _parse_number(digits: str) -> int | None:
    significant = digits.lstrip("0")
    if not significant or len(significant) > len(str(MAX_NUMBER)):
        return None
    return int(significant)


# Dashes and minus signs that NFKC leaves alone but people (and word processors) type for "-".
_DASHES = dict.fromkeys(
    (ord(c) for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63"), ord("-")
)


@lru_cache(maxsize=4096)
def _compatible(char: str) -> str:
    """``char`` in compatibility form, unless that would join or split a word.

    A letter or digit whose compatibility form holds a separator (``Ŀ`` is ``L·``), or a
    separator whose form holds a letter (``™`` is ``TM``), stays as written: normalising the
    subject must never glue an ID to its neighbour or free it from one.
    """
    folded = unicodedata.normalize("NFKC", char).translate(_DASHES)
    word = _is_token_char(char)
    if all(_is_token_char(c) == word for c in folded):
        return folded
    return char


def normalise_subject(subject: str) -> str:
    """``subject`` in Unicode compatibility form (NFKC), character by character: a no-break
    space is a space, full-width letters and digits are ASCII; dashes and minus signs are
    ``-``; invisible format characters (zero-width space, soft hyphen, direction marks) are
    dropped. Word boundaries stay where they were (see ``_compatible``)."""
    if subject.isascii():
        return subject
    return "".join(_compatible(c) for c in subject if unicodedata.category(c) != "Cf")


def find_record_ids(subject: str, patterns: IdPatterns) -> tuple[RecordId, ...]:
    """All record IDs in ``subject`` (NFKC-normalised first), in order of first appearance,
    without duplicates."""
    subject = normalise_subject(subject)
    found: dict[RecordId, None] = {}
    for match in patterns.pattern.finditer(subject):
        if _glued_before(subject, match.start()) or _glued_after(subject, match.end()):
            continue
        number = _parse_number(match["number"])
        if number is None:
            continue
        kind: RecordKind = "opportunity" if match["opportunity"] is not None else "ticket"
        found.setdefault(RecordId(kind, number), None)
    return tuple(found)


_REPLY_CHAIN = re.compile(
    r"\s*+(?:(?:"
    + "|".join(_case_insensitive(marker) for marker in _REPLY_MARKERS)
    + r")\s*+(?:\[\s*+[0-9]++\s*+\]|\(\s*+[0-9]++\s*+\))?\s*+[:：]\s*+)*+"
)


def strip_reply_prefixes(subject: str) -> str:
    """``subject`` without its leading chain of reply/forward markers, whitespace-stripped.

    Markers: Re, AW, WG, Fwd, FW, SV, VS, TR, RIF, R, I, Antw, Odp, Ynt, Enc in any case,
    each with an optional ``[n]`` or ``(n)`` counter and a ``:`` or ``：`` after it.
    """
    match = _REPLY_CHAIN.match(subject)
    return subject[match.end() if match else 0 :].strip()


_ID_TOKEN = re.compile(r"<(?P<bracketed>[^<>]*)>|(?P<bare>[^\s,<>]+)")


def normalise_message_id(value: str) -> str | None:
    """A Message-ID without angle brackets and whitespace, its domain part lower-cased.

    ``None`` when nothing usable is left: empty, angle brackets or control characters
    inside, or an ``@`` with an empty side.
    """
    text = "".join(value.split()).strip("<>")
    if not text or "<" in text or ">" in text or not text.isprintable():
        return None
    if "@" not in text:
        return text
    local, _, domain = text.rpartition("@")
    if not local or not domain:
        return None
    return f"{local}@{domain.lower()}"


def parse_message_ids(header: str) -> tuple[str, ...]:
    """The Message-IDs of a References / In-Reply-To value, in order, without duplicates.

    Ids in angle brackets are taken; if there are none, bare whitespace- or
    comma-separated tokens containing an ``@`` are taken instead (so the prose of
    old-style In-Reply-To values is ignored).
    """
    bracketed: dict[str, None] = {}
    bare: dict[str, None] = {}
    for match in _ID_TOKEN.finditer(header):
        if match["bracketed"] is not None:
            target, raw = bracketed, match["bracketed"]
        else:
            target, raw = bare, match["bare"]
            if "@" not in raw:
                continue
        normalised = normalise_message_id(raw)
        if normalised is not None:
            target.setdefault(normalised, None)
    return tuple(bracketed or bare)
