"""The newest reply of a mail's text, as mail-parser-reply finds it, at a fraction of the cost.

``EmailReplyParser(languages).read(text).replies[0]`` is what the rest of mailsvc wants. The
library gets there by compiling its three patterns again for every mail, running each of them
over the whole text (at every character position) and working out signatures and disclaimers of
every quoted fragment, not only the first. Here the patterns are compiled once, the fragments stop
at the first one with content, and each pattern is tried only where a match can begin: every
alternative of the header pattern starts at a line start or a line break, of the disclaimer
pattern at a line start or one of ``\\n\\r.!?``, and of the signature pattern at a line start, a
line break or white space before a line break (from which ``\\s*`` reaches the next line start;
white space that reaches no line break can only begin a match where a line starts). Of a run of
line breaks only the first is tried: whatever matches later in the run matches there too.
Matching at those positions with ``Pattern.match`` finds what ``findall``/``search`` find, since
``match(text, pos)`` reads ``^``, ``\\A`` and look-behinds against the whole text.

One deliberate difference: a line of more than ``HEADER_LINE_LIMIT`` characters is not taken
for the start of a quote header (the library would try, at a cost that grows with the square of
the line's length).

That reasoning holds for the patterns it was checked against (``PATTERNS_CHECKED``, the digest of
their source); with any others the library's own code runs. ``tests/unit/test_newest_reply.py``
compares both ways on generated and real mail text.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable, Iterator

from mailparser_reply.parser import EmailMessage, EmailReply

LANGUAGES = ("en", "de")
PATTERNS_CHECKED = "79f22c4073bd78c1"  # mail-parser-reply 1.36, languages en and de

_TEMPLATE = EmailMessage(text="", languages=list(LANGUAGES))
_HEADER = _TEMPLATE.HEADER_REGEX
_DISCLAIMERS = _TEMPLATE.DISCLAIMERS_REGEX
_SIGNATURE = _TEMPLATE.SIGNATURE_REGEX

# Where a match of the disclaimer pattern can begin (see the module docstring; the header's and
# the signature's are worked out from the line breaks: ``_line_starts``, ``_signature_starts``).
_DISCLAIMER_STARTS = re.compile(r"[\n\r.!?]|^", re.M)
# Every alternative of the disclaimer pattern holds one of these words (as the pattern spells them,
# any case). ASCII text without any of them holds no disclaimer: most mail, skipped unscanned.
# (In other text case-insensitive matching folds more than ``str.lower`` does: it is scanned.)
_DISCLAIMER_WORDS = ("caution:", "disclaimer", "warning:", "confidential", "notice:", "note:",
                     "information:", "hinweis:", "achtung:")
# A quote header starts on a line of at most this many characters. The header pattern's nested
# lazy groups cost the square of a line's length (8,000 characters of "On On On ..." took 1.6 s,
# a whole 100 KB line would take minutes); real quote headers are a few dozen characters.
HEADER_LINE_LIMIT = 500


def patterns_digest() -> str:
    """The digest of the three patterns in use, compared with ``PATTERNS_CHECKED``."""
    source = "\0".join(p.pattern for p in (_HEADER, _DISCLAIMERS, _SIGNATURE))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


FAST = patterns_digest() == PATTERNS_CHECKED


class _EmptyMatch(Exception):
    """A pattern matched the empty string: its scan is not ``findall``'s, use the library's."""


def newest_reply(text: str) -> EmailReply:
    """``EmailReplyParser(languages=LANGUAGES).read(text).replies[0]``, the same value."""
    message = EmailMessage(text=text, languages=list(LANGUAGES))  # normalises the text
    if FAST:
        with contextlib.suppress(_EmptyMatch):  # else the library's own scan, below
            return _first_fragment(message.text)
    return message.read().replies[0]


def _first_fragment(text: str) -> EmailReply:
    """The library's ``read`` loop, ended at the first fragment with content."""
    current, previous = 0, ""
    for header in _headers(text):
        position = text.find(header, current + 1 if current > 0 else current)
        content = text[current:position]
        if content.strip():
            return _reply(previous, content)
        current, previous = (position if position >= 0 else 0), header
    return _reply(previous, text[current:])


def _headers(text: str) -> Iterator[str]:
    for match in _matches(_HEADER, _line_starts(text), text, HEADER_LINE_LIMIT):
        yield from (group for group in match.groups() if group)


def _reply(headers: str, content: str) -> EmailReply:
    disclaimers: list[str] = []
    if _may_hold_disclaimer(content):
        starts = (m.start() for m in _DISCLAIMER_STARTS.finditer(content))
        disclaimers = [m.group() for m in _matches(_DISCLAIMERS, starts, content)]
    signature = _search(_SIGNATURE, _signature_starts(content), content)
    return EmailReply(headers=headers, content=content, disclaimers=disclaimers,
                      signatures=signature.group() if signature else "")


def _may_hold_disclaimer(text: str) -> bool:
    if not text.isascii():
        return True
    lowered = text.lower()
    return any(word in lowered for word in _DISCLAIMER_WORDS)


def _breaks(text: str) -> Iterator[int]:
    position = text.find("\n")
    while position >= 0:
        yield position
        position = text.find("\n", position + 1)


def _line_starts(text: str) -> Iterator[int]:
    """Every line start and line break, in order (where ``\\n|^`` matches)."""
    last = 0
    yield 0
    for position in _breaks(text):
        if position > last:
            yield position
        yield position + 1
        last = position + 1


def _signature_starts(text: str) -> Iterator[int]:
    """Line starts that are not a line break, the first break of each run of breaks, and the
    start of white space that runs into a break, in order."""
    if not text.startswith("\n"):
        yield 0
    last = 0
    for position in _breaks(text):
        run = position
        while run > last and text[run - 1] != "\n" and text[run - 1].isspace():
            run -= 1
        if run < position:
            yield run
        if position == 0 or text[position - 1] != "\n":
            yield position
        if not text.startswith("\n", position + 1):
            yield position + 1
        last = position + 1


def _matches(pattern: re.Pattern[str], starts: Iterable[int], text: str,
             line_limit: int | None = None) -> Iterator[re.Match[str]]:
    """``pattern.finditer(text)``, trying only the positions ``starts`` gives, in order (and,
    with ``line_limit``, not where the line is longer)."""
    end = 0
    for position in starts:
        if position < end:
            continue
        if line_limit is not None and _line_length(text, position) > line_limit:
            continue
        match = pattern.match(text, position)
        if match is not None:
            if match.end() == position:
                raise _EmptyMatch
            yield match
            end = match.end()


def _line_length(text: str, position: int) -> int:
    """The length of the line at ``position`` (of the next line, at a line break)."""
    start = position + 1 if text.startswith("\n", position) else position
    end = text.find("\n", start)
    return (len(text) if end < 0 else end) - start


def _search(pattern: re.Pattern[str], starts: Iterable[int], text: str
            ) -> re.Match[str] | None:
    """``pattern.search(text)``, trying only the positions ``starts`` gives, in order."""
    for position in starts:
        match = pattern.match(text, position)
        if match is not None:
            return match
    return None
