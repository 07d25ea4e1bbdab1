"""Parse raw mail bytes into a ParsedMail, tolerating the broken mail found in the wild."""

from __future__ import annotations

import binascii
import codecs
import email
import hashlib
import heapq
import quopri
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parsedate_to_datetime
from typing import Any

from mailsvc.errors import ParseError
from mailsvc.linking.references import normalise_message_id, parse_message_ids
from mailsvc.mail import Address, Attachment, ParsedMail

__all__ = ["DEFAULT_LIMITS", "MAX_DEPTH", "MimeLimitExceeded", "ParseLimits", "dedup_key",
           "mail_key", "parse_mail"]

MAX_DEPTH = 3  # message/rfc822 parts nested deeper than this stay attachments only
MAX_MESSAGE_ID = 900  # longer "ids" are dropped: not plausible, and too long for the store

_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")  # what email.feedparser takes as a header
_CONTROL_BYTES = bytes([*range(0x00, 0x09), *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])
_ENCODED_WORD = re.compile(r"=\?([^?\s]*)\?([QqBb])\?([^?]*)\?=")
# A local part is at most 64 characters (RFC 5321): unbounded, a long run of such characters with
# no "@" after it made every start position scan to its end (seconds for one 70 KB header).
_ADDR_TOKEN = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_ANGLE_ADDR = re.compile(r"<\s*([^<>@\s]+@[^<>@\s]+)\s*>")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_SPACES = re.compile(r"[ \t\r\n\f\v]+")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_FLAT_POLICY = compat32.clone(max_line_length=None)
_ENCLOSED_TYPES = frozenset({"message/rfc822", "message/global"})
_BODY_TYPES = frozenset({"text/plain", "text/html"})

# Charset labels Python does not know, and labels meaning "no idea".
_ALIASES = {"x-sjis": "cp932", "iso-8859-8-i": "iso-8859-8", "x-gbk": "gbk"}
_UNKNOWN_LABELS = frozenset({"unknown-8bit", "x-unknown", "unknown", "x-user-defined", "8bit"})
# Decode with the superset first: it agrees with the label on every byte the label defines.
_SUPERSETS = {
    "iso8859-1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "euc_kr": "cp949",
    "shift_jis": "cp932",
    "big5": "big5hkscs",
}
# Charsets that mailers mix up with the declared one (Shift_JIS labelled ISO-2022-JP, ...).
_RELATED = {
    "iso2022_jp": ("iso2022_jp_ext", "iso2022_jp_2", "iso2022_jp_2004", "cp932", "euc_jp"),
    "shift_jis": ("euc_jp",),
    "cp932": ("euc_jp",),
    "euc_jp": ("cp932",),
}


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """How much MIME structure and decoded content one mail may have (docs/trust.md)."""

    max_depth: int = 30
    max_parts: int = 1000
    max_attachments: int = 500
    max_decoded_bytes: int = 100 * 1024 * 1024


DEFAULT_LIMITS = ParseLimits()


class MimeLimitExceeded(ParseError):
    """The mail is beyond a ParseLimits bound; the message names which."""


@dataclass
class _Content:
    """What the walk over the MIME parts of one message collects."""

    text: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    enclosed: list[ParsedMail] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    charset: str | None = None  # for raw 8-bit filenames


# ---------------------------------------------------------------- public API


def parse_mail(data: bytes, limits: ParseLimits = DEFAULT_LIMITS) -> ParsedMail:
    """Parse one raw message; raise ParseError only if the bytes hold no usable mail, and
    MimeLimitExceeded (a ParseError) if it is beyond ``limits``."""
    depth, parts = mime_shape(data, limits)
    if depth > limits.max_depth:
        raise MimeLimitExceeded(f"MIME parts nested {depth} deep (at most {limits.max_depth})")
    if parts > limits.max_parts:
        raise MimeLimitExceeded(f"{parts} MIME parts (at most {limits.max_parts})")
    parsed = _parse_bytes(data, depth=0)
    if len(parsed.attachments) > limits.max_attachments:
        raise MimeLimitExceeded(
            f"{len(parsed.attachments)} attachments (at most {limits.max_attachments})"
        )
    decoded = _decoded_size(parsed)
    if decoded > limits.max_decoded_bytes:
        raise MimeLimitExceeded(
            f"{decoded} bytes of decoded content (at most {limits.max_decoded_bytes})"
        )
    return parsed


# Searched in a lower-cased copy; each starts with a literal, which keeps the scan fast.
_BOUNDARY = re.compile(rb'boundary[ \t]*=[ \t]*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))')
_DELIMITER = re.compile(rb"\n--([^\r\n]{1,210})")
_MESSAGE_TYPE = re.compile(rb"\ncontent-type:[ \t]*(?:\r?\n[ \t]+)?message/")


def mime_shape(data: bytes, stop: ParseLimits = DEFAULT_LIMITS) -> tuple[int, int]:
    """A cheap estimate of (nesting depth, number of parts) from the raw bytes, before the
    costly parse: boundary delimiters opened and closed, plus message/* parts enclosed without a
    delimiter in between. At least half the true depth, so a bound on it bounds the parse. Stops
    counting once past a limit of ``stop``."""
    lower = data.lower()  # same offsets: boundaries are read from ``data``; a first line that is
    # a delimiter or a message/* type is not seen, which only lowers the estimate by one
    declared: set[bytes] = set()
    for count, m in enumerate(_BOUNDARY.finditer(lower), 1):
        if count > stop.max_parts:  # each multipart declares one: too many already
            return 0, count
        group = 1 if m.start(1) >= 0 else 2
        declared.add(data[m.start(group) : m.end(group)])
    if not declared and _MESSAGE_TYPE.search(lower) is None:
        return 0, 0
    events = heapq.merge(  # in order of position, lazily: the loop may stop early
        (
            (m.start(), data[m.start(1) : m.end(1)].rstrip(b" \t\r"))
            for m in _DELIMITER.finditer(lower)
        ),
        ((m.start(), None) for m in _MESSAGE_TYPE.finditer(lower)),
        key=lambda event: event[0],
    )
    stack: list[bytes] = []
    level: dict[bytes, int] = {}  # boundary -> its index in stack
    chain = depth = parts = 0
    for _, token in events:
        if token is None:  # a message/* part: one level more until the next delimiter
            chain += 1
            parts += 1
        else:
            closing = token.endswith(b"--") and token[:-2] in declared
            name = token[:-2] if closing else token
            if name not in declared:
                continue
            chain = 0
            if name in level:
                _unwind(stack, level, level[name] + (0 if closing else 1))
            elif not closing:
                level[name] = len(stack)
                stack.append(name)
            parts += 0 if closing else 1
        depth = max(depth, len(stack) + chain)
        if depth > stop.max_depth or parts > stop.max_parts:
            break
    return depth, parts


def _unwind(stack: list[bytes], level: dict[bytes, int], keep: int) -> None:
    while len(stack) > keep:
        del level[stack.pop()]


def _decoded_size(mail: ParsedMail) -> int:
    size = len(mail.text) + len(mail.html) + sum(len(a.content) for a in mail.attachments)
    return size + sum(_decoded_size(inner) for inner in mail.enclosed)


def mail_key(data: bytes) -> str:
    """The idempotency key of a mail, the only place it is made: the normalised Message-ID,
    else a hash of the raw bytes.

    Only the header block is read (repaired as ``parse_mail`` repairs it, so the Message-ID is
    the one the full parse finds): cheap enough for the SMTP accept path, and the same key for
    the same bytes on every path (SMTP, IMAP, files, pipe, quarantine retry).
    """
    message_id = _header_message_id(data)
    if message_id and len(message_id) <= MAX_MESSAGE_ID:
        local, _, domain = message_id.rpartition("@")
        if local and domain:
            return f"mid:{local}@{domain.lower()}"
    normalised = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return "sha256:" + hashlib.sha256(normalised).hexdigest()


def dedup_key(parsed: ParsedMail | None, data: bytes) -> str:
    """The idempotency key (kept for callers of the old signature): ``mail_key(data)``."""
    return mail_key(data)


_HEAD_PREFIX = 64 * 1024


# A header block that needs no repair: header lines and folds of printable ASCII up to the blank
# line. Its one Message-ID line is then read directly (the SMTP accept path's common case).
_PLAIN_HEADER = re.compile(
    rb"(?:[\x21-\x39\x3b-\x7e]+:[\t\x20-\x7e]*\r?\n(?:[ \t][\t\x20-\x7e]*\r?\n)*)+\r?\n")
_MESSAGE_ID_LINE = re.compile(rb"^message-id:[ \t]*([^\r\n]*)\r?\n(?![ \t])", re.I | re.M)
_MESSAGE_ID_NAME = re.compile(rb"^message-id:", re.I | re.M)
_NOT_PLAIN = object()


def _plain_message_id(head: bytes) -> object:
    """The Message-ID of a plain header block (see ``_PLAIN_HEADER``) with one unfolded
    Message-ID line, else ``_NOT_PLAIN``: the full reading decides. A test checks that both
    agree on every mail of the corpus."""
    block = _PLAIN_HEADER.match(head)
    if block is None:
        return _NOT_PLAIN
    text = block.group()
    lines = _MESSAGE_ID_LINE.findall(text)
    if len(lines) != 1 or len(_MESSAGE_ID_NAME.findall(text)) != 1:
        return _NOT_PLAIN
    return _first_id([lines[0].decode("ascii")])


def _header_message_id(data: bytes) -> str | None:
    """The first Message-ID of the header block, as ``parse_mail`` would report it."""
    head = data[:_HEAD_PREFIX]
    plain = _plain_message_id(head)
    if plain is not _NOT_PLAIN:
        return plain  # type: ignore[return-value]
    end = head.find(b"\n\n") if b"\n" in head else -1
    if end < 0 and b"\r\n\r\n" not in head:
        head = data  # the header block is longer than the prefix (or CR-only): take it all
    try:
        repaired, _ = _prepare(head)
    except ParseError:
        return None
    block = repaired.partition(b"\n\n")[0] + b"\n\n"
    try:
        message = BytesHeaderParser(policy=compat32).parsebytes(block)
    except Exception:  # the stdlib parser does not fail on bytes, but a key must never raise
        return None
    raw = [(str(name), str(value)) for name, value in message.raw_items()]
    return _first_id(_values(raw, "message-id", _part_charset(message)))


# ---------------------------------------------------------------- bytes -> message


def _parse_bytes(data: bytes, depth: int) -> ParsedMail:
    prepared, notes = _prepare(data)
    parser, message = _load(prepared, notes)
    if not message.keys():
        raise ParseError("no header found")
    return _build(message, parser, depth, notes)


def _prepare(data: bytes) -> tuple[bytes, list[str]]:
    """Normalise line ends, check that a header is there and repair the header block."""
    text = data.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")
    if b"\n" not in text:
        text = text.replace(b"\r", b"\n")  # CR-only line ends (classic Mac OS)
    text = text.lstrip(b" \t\n")
    if not text:
        raise ParseError("empty input")
    head, separator, body = text.partition(b"\n\n")
    if _looks_binary(head):
        raise ParseError("binary data, not a mail")
    lines = head.split(b"\n")
    starts = [i for i, line in enumerate(lines) if _HEADER_LINE.match(line)]
    if not starts:
        raise ParseError("no header found before the first blank line")
    notes: list[str] = []
    first = starts[0]
    if first > 1 or (first == 1 and not lines[0].startswith(b"From ")):
        notes.append(f"LeadingJunkDefect: {first} line(s) before the first header dropped")
        lines, starts = lines[first:], [i - first for i in starts]
    broken = {i for i in range(1, starts[-1]) if not _is_header_or_fold(lines[i])}
    if broken:
        notes.append(f"BrokenFoldingDefect: {len(broken)} header line(s) taken as folded")
        lines = [b" " + line if i in broken else line for i, line in enumerate(lines)]
    return b"\n".join(lines) + separator + body, notes


def _is_header_or_fold(line: bytes) -> bool:
    return line[:1] in (b" ", b"\t") or bool(_HEADER_LINE.match(line))


def _looks_binary(head: bytes) -> bool:
    if b"\x00" in head:
        return True
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    return controls * 100 > len(head)


def _load(data: bytes, notes: list[str]) -> tuple[Any, Message]:
    """Parse with mail-parser; fall back to the bare stdlib parser if mail-parser fails."""
    import mailparser  # here, not above: accepting (``mail_key``) must not load it

    try:
        parser = mailparser.parse_from_bytes(data)
    except Exception as exc:
        notes.append(f"MailParserError: {type(exc).__name__}")
    else:
        if isinstance(parser.message, Message):
            return parser, parser.message
    try:
        return None, email.message_from_bytes(data)
    except RecursionError:
        notes.append("MimeNestingDefect: MIME parts nested too deeply, body kept unparsed")
        return None, BytesHeaderParser().parsebytes(data)


# ---------------------------------------------------------------- message -> ParsedMail


def _build(message: Message, parser: Any, depth: int, notes: list[str]) -> ParsedMail:
    fallback = _fallback_charset(message)
    raw = [(str(name), str(value)) for name, value in message.raw_items()]
    headers = tuple((_clean(name), _decode_header(value, fallback)) for name, value in raw)
    content = _walk(message, depth, fallback)
    return ParsedMail(
        message_id=_first_id(_values(raw, "message-id", fallback)),
        subject=_collapse(_first(headers, "subject")),
        from_=_addresses(_values(raw, "from", fallback), fallback),
        to=_addresses(_values(raw, "to", fallback), fallback),
        cc=_addresses(_values(raw, "cc", fallback), fallback),
        reply_to=_addresses(_values(raw, "reply-to", fallback), fallback),
        date=_date(parser, _first(headers, "date")),
        in_reply_to=_ids(_values(raw, "in-reply-to", fallback)),
        references=_ids(_values(raw, "references", fallback)),
        headers=headers,
        text="\n".join(part for part in content.text if part),
        html="\n".join(part for part in content.html if part),
        attachments=tuple(content.attachments),
        content_type=message.get_content_type(),
        defects=_defects(parser, notes + content.notes),
        enclosed=tuple(content.enclosed),
    )


def _first(headers: Iterable[tuple[str, str]], name: str) -> str:
    return next((value for key, value in headers if key.lower() == name), "")


def _values(raw: Iterable[tuple[str, str]], name: str, fallback: str | None) -> list[str]:
    """Every value of one header: 8-bit decoded and unfolded, but not RFC 2047 decoded."""
    return [_unfold(_decode_8bit(value, fallback)) for key, value in raw if key.lower() == name]


def _defects(parser: Any, notes: list[str]) -> tuple[str, ...]:
    categories: list[str] = []
    if parser is not None:
        categories = sorted(str(category) for category in parser.defects_categories)
    return tuple(dict.fromkeys(categories + notes))


def _fallback_charset(message: Message) -> str | None:
    """The charset to try on raw 8-bit headers: the top part's, else the first text part's."""
    for part in _leaves(message):
        charset = _part_charset(part)
        if charset:
            return charset
    return None


def _part_charset(part: Message) -> str | None:
    try:
        charset = part.get_content_charset()
    except (LookupError, UnicodeError, ValueError, TypeError):
        return None
    return str(charset) if charset else None


# ---------------------------------------------------------------- MIME parts


def _leaves(message: Message) -> Iterator[Message]:
    """Leaf parts in order, without descending into message/* parts (nor recursion)."""
    stack = [message]
    while stack:
        part = stack.pop()
        if part.is_multipart() and part.get_content_maintype() != "message":
            payload = part.get_payload()
            stack.extend(reversed([sub for sub in payload if isinstance(sub, Message)]))
        else:
            yield part


def _walk(message: Message, depth: int, charset: str | None) -> _Content:
    content = _Content(charset=charset)
    for index, part in enumerate(_leaves(message)):
        try:
            _take(part, depth, content)
        except Exception as exc:  # a broken part never fails the whole mail
            content.notes.append(
                f"BrokenPart: part {index} ({_safe_type(part)}) skipped: {type(exc).__name__}"
            )
    return content


def _safe_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:
        return "unknown"


def _take(part: Message, depth: int, content: _Content) -> None:
    ctype = part.get_content_type()
    if ctype in _ENCLOSED_TYPES:
        _take_enclosed(part, depth, content)
    elif part.get_content_maintype() == "message":
        content.attachments.append(_attachment(part, _message_bytes(part), content.charset))
    elif _is_body(part, ctype, content.charset):
        text = _decode_text(_payload_bytes(part), _part_charset(part))
        (content.html if ctype == "text/html" else content.text).append(text)
    else:
        content.attachments.append(_attachment(part, _payload_bytes(part), content.charset))


def _is_body(part: Message, ctype: str, charset: str | None) -> bool:
    """Unnamed, not-attached text; a multipart without usable boundary counts as text."""
    if ctype not in _BODY_TYPES and part.get_content_maintype() != "multipart":
        return False
    return part.get_content_disposition() != "attachment" and _filename(part, charset) is None


def _take_enclosed(part: Message, depth: int, content: _Content) -> None:
    data = _message_bytes(part)
    content.attachments.append(_attachment(part, data, content.charset))
    if depth >= MAX_DEPTH:
        content.notes.append(f"EnclosedDepthLimit: message/rfc822 below depth {MAX_DEPTH}")
        return
    try:
        content.enclosed.append(_parse_bytes(data, depth + 1))
    except ParseError as exc:
        content.notes.append(f"BrokenEnclosed: {exc}")


def _attachment(part: Message, data: bytes, charset: str | None) -> Attachment:
    return Attachment(
        filename=_filename(part, charset),
        content_type=part.get_content_type(),
        content=data,
        content_id=_content_id(part),
        inline=part.get_content_disposition() == "inline",
    )


def _filename(part: Message, charset: str | None) -> str | None:
    raw = _mime_view(part, _part_charset(part) or charset).get_filename()
    if not raw:
        return None
    name = _collapse(_decode_words(str(raw), charset))
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()  # drop a sender's directory
    return name or None


def _mime_view(part: Message, charset: str | None) -> Message:
    """The part itself, or a copy of its MIME headers with raw 8-bit octets decoded."""
    raw = [(str(name), str(value)) for name, value in part.raw_items()]
    if all(value.isascii() for _, value in raw):
        return part
    view = Message()
    for name, value in raw:
        if name.lower() in {"content-type", "content-disposition"}:
            view[name] = _decode_8bit(value, charset)
    return view


def _content_id(part: Message) -> str | None:
    value = part.get("content-id")
    if value is None:
        return None
    cid = "".join(_decode_8bit(str(value), None).split()).strip("<>")
    return cid or None


def _cte(part: Message) -> str:
    value = _decode_8bit(str(part.get("content-transfer-encoding", "")), None)
    return value.split(";", 1)[0].strip(" \t\r\n\"'").lower()


def _payload_bytes(part: Message) -> bytes:
    """The part's content with the transfer encoding undone, also for sloppy CTE values."""
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return b""
    cte = _cte(part)
    stdlib_cte = str(part.get("content-transfer-encoding", "")).lower()
    if cte == stdlib_cte or cte not in {"base64", "quoted-printable"}:
        return data  # the stdlib already decoded it, or there is nothing to decode
    return _undo_transfer_encoding(data, cte)


def _undo_transfer_encoding(data: bytes, cte: str) -> bytes:
    if cte == "quoted-printable":
        return quopri.decodestring(data)
    return _lenient_base64(data)


def _lenient_base64(data: bytes) -> bytes:
    clean = _NOT_BASE64.sub(b"", data)
    clean = clean[: len(clean) - len(clean) % 4] if len(clean) % 4 == 1 else clean
    try:
        return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))
    except binascii.Error:
        return b""


def _message_bytes(part: Message) -> bytes:
    """The raw bytes of a message/* part, with a (non-conforming) transfer encoding undone."""
    if not part.is_multipart():
        return _payload_bytes(part)  # the stdlib did not see a message in it
    payload = part.get_payload()
    data = b"".join(_flatten(sub) for sub in payload if isinstance(sub, Message))
    cte = _cte(part)
    return _undo_transfer_encoding(data, cte) if cte in {"base64", "quoted-printable"} else data


def _flatten(message: Message) -> bytes:
    try:
        return message.as_bytes(policy=_FLAT_POLICY)
    except Exception:
        from mailparser.utils import as_string_safe

        return _to_bytes(str(as_string_safe(message)))


def _to_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------- charsets and text


def _codec(label: str | None) -> str | None:
    """Python's codec name for a charset label, or None if unknown or meaningless."""
    if not label:
        return None
    name = label.strip(" \t\"'").lower()
    name = _ALIASES.get(name, name)
    if not name or name in _UNKNOWN_LABELS:
        return None
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return None
    return info.name if getattr(info, "_is_text_encoding", True) else None


def _candidates(label: str | None) -> list[str]:
    """Codecs to try strictly, in order, for bytes labelled with this charset."""
    codec = _codec(label)
    if codec is None:
        return ["utf-8", "cp1252"]
    superset = _SUPERSETS.get(codec)
    ordered = [superset] if superset else []
    ordered += [codec, *_RELATED.get(codec, ()), "utf-8"]
    return list(dict.fromkeys(ordered))


def _decode_bytes(data: bytes, label: str | None) -> str:
    """Decode whatever the charset: strict candidates first, then with replacement."""
    for codec in _candidates(label):
        try:
            text = data.decode(codec)
        except (LookupError, UnicodeError, ValueError):
            continue
        if "\x1b" not in text or b"\x1b" not in data:  # ISO-2022 escapes left undecoded
            return _clean(text)
    known = _codec(label)
    if known is None:
        return _clean(data.decode("latin-1"))
    try:
        return _clean(data.decode(known, "replace"))
    except (LookupError, UnicodeError, ValueError):
        return _clean(data.decode("utf-8", "replace"))


def _decode_text(data: bytes, label: str | None) -> str:
    return _decode_bytes(data, label) if data else ""


def _clean(text: str) -> str:
    """No lone surrogates and no NUL: the text must survive UTF-8 and PostgreSQL."""
    text = text.replace("\x00", "\ufffd")
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


# ---------------------------------------------------------------- header values


def _decode_8bit(value: str, fallback: str | None) -> str:
    """Raw 8-bit header octets: UTF-8, else the part's charset, else Latin-1."""
    if value.isascii():
        return value
    data = _to_bytes(value)
    try:
        return _clean(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    if _codec(fallback):
        for codec in _candidates(fallback):
            try:
                return _clean(data.decode(codec))
            except (LookupError, UnicodeError, ValueError):
                continue
    return _clean(data.decode("latin-1"))


def _unfold(value: str) -> str:
    return _FOLD.sub("", value).strip()


def _collapse(value: str) -> str:
    return _SPACES.sub(" ", value).strip()


def _decode_header(value: str, fallback: str | None) -> str:
    return _decode_words(_unfold(value), fallback)


def _decode_words(text: str, fallback: str | None) -> str:
    """Decode RFC 2047 encoded words, and raw 8-bit text between them.

    Adjacent words share their bytes before decoding, so a character split over two words
    survives. Raw octets inside a word (surrogate-escaped) are taken as the word's charset.
    """
    if "=?" not in text:
        return _decode_8bit(text, fallback)
    out: list[str] = []
    pending: list[tuple[str, bytes]] = []
    position = 0
    for match in _ENCODED_WORD.finditer(text):
        gap = text[position : match.start()]
        if gap.strip(" \t\r\n") or not pending:
            out.append(_flush(pending, fallback))
            out.append(_decode_8bit(gap, fallback))
        pending.append((match.group(1).split("*", 1)[0], _word_bytes(match)))
        position = match.end()
    out.append(_flush(pending, fallback))
    out.append(_decode_8bit(text[position:], fallback))
    return _clean("".join(out))


def _word_bytes(match: re.Match[str]) -> bytes:
    encoded = _to_bytes(match.group(3))
    if match.group(2) in "Bb":
        return _lenient_base64(encoded)
    return _QP_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), encoded.replace(b"_", b" "))


def _flush(pending: list[tuple[str, bytes]], fallback: str | None) -> str:
    """Decode (and empty) the collected words, joining the bytes of neighbours in one charset."""
    parts: list[str] = []
    while pending:
        charset, data = pending.pop(0)
        while pending and pending[0][0].lower() == charset.lower():
            data += pending.pop(0)[1]
        parts.append(_decode_bytes(data, charset or fallback))
    return "".join(parts)


def _first_id(values: list[str]) -> str | None:
    """The first id of the first Message-ID header, normalised as the linking core does."""
    if not values:
        return None
    ids = parse_message_ids(values[0]) or (normalise_message_id(values[0]),)
    return next((item for item in ids if item and len(item) <= MAX_MESSAGE_ID), None)


def _ids(values: Iterable[str]) -> tuple[str, ...]:
    """Message ids in order and de-duplicated: brackets and whitespace removed."""
    found = (item for value in values for item in parse_message_ids(value))
    return tuple(dict.fromkeys(item for item in found if len(item) <= MAX_MESSAGE_ID))


def _addresses(values: Iterable[str], fallback: str | None) -> tuple[Address, ...]:
    found: dict[str, Address] = {}
    for value in values:
        for address in _parse_addresses(value, fallback):
            found.setdefault(address.email, address)
    return tuple(found.values())


def _parse_addresses(value: str, fallback: str | None) -> list[Address]:
    """mail-parser's careful address parser; if it finds nothing, a cautious recovery."""
    from mailparser.utils import get_addresses

    try:
        pairs: list[tuple[str, str]] = get_addresses(value, decode_names=False)
    except Exception:
        pairs = []
    found = [_address(str(name), str(addr), fallback) for name, addr in pairs if "@" in str(addr)]
    return found or _recover_addresses(value, fallback)


def _recover_addresses(value: str, fallback: str | None) -> list[Address]:
    """Every <angle-addr> with the text before it as name, else one lone bare address."""
    found: list[Address] = []
    position = 0
    for match in _ANGLE_ADDR.finditer(value):
        name = value[position : match.start()].strip(" \t,;\"'")
        found.append(_address(name, match.group(1), fallback))
        position = match.end()
    if found:
        return found
    tokens = set(_ADDR_TOKEN.findall(value))
    return [_address("", tokens.pop(), fallback)] if len(tokens) == 1 else []


def _address(name: str, addr: str, fallback: str | None) -> Address:
    return Address(_collapse(_decode_words(name, fallback)), "".join(addr.split()).lower())


def _date(parser: Any, raw: str) -> datetime | None:
    """The Date header as an aware datetime in the sender's offset, or None."""
    value = parser.date if parser is not None else None
    if isinstance(value, datetime):
        return _with_offset(value, parser.timezone)
    if not raw:
        return None
    try:
        parsed = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _with_offset(value: datetime, offset_hours: object) -> datetime:
    moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        zone = timezone(timedelta(minutes=round(float(str(offset_hours)) * 60)))
        return moment.astimezone(zone)
    except (ValueError, OverflowError):
        return moment
