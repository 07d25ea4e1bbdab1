"""The DATA section of an SMTP or LMTP transaction: read in a few large pieces, within limits.

aiosmtpd reads DATA one line at a time (a coroutine step per line: ~70 for a 4 KB mail). Here the
stream is read up to the next line that starts with a dot (``readuntil(b"\\n.")``), so a mail
without dot lines arrives in three reads, and everything per line (dot-unstuffing, the end marker,
the line, header and size limits) is done by bytes methods over the whole piece.

Reads never pass the end marker (a pipelining client may already have sent its next command), and
the end is recognised exactly as RFC 5321 writes it: ``CRLF . CRLF``. A dot line after a bare LF is
data, not the end (no SMTP smuggling).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass

_MARKER = b"\r\n.\r\n"
TOO_MUCH_DATA = "552 5.3.4 Message too big"


@dataclass(frozen=True, slots=True)
class DataLimits:
    """What one DATA section may be: longest line (with its line end), header fields and bytes,
    total size (None: no limit)."""

    max_line_bytes: int
    max_header_count: int
    max_header_bytes: int
    max_size: int | None = None


class DataReader:
    """Takes the raw DATA stream in pieces of any size; knows when it has ended and what is wrong.

    ``feed`` may be given any split of the stream (tests give lines, the reader below gives a few
    large pieces). The first limit broken names the reply (``problem``) and from then on nothing
    more is kept, but the data is still read to its end so the session can go on.
    """

    __slots__ = (
        "_after_crlf", "_buffer", "_carry", "_header", "_header_bytes", "_header_count",
        "_hline_head", "_hline_len", "_last", "_limits", "_line", "_long_line", "_since_reset",
        "_size",
        "done", "leftover", "problem",
    )

    RESET_EVERY = 64 * 1024

    def __init__(self, limits: DataLimits) -> None:
        self._limits = limits
        self._long_line = re.compile(rb"[^\n]{%d}" % limits.max_line_bytes)
        self._buffer = bytearray()
        self._carry = b""  # "." or ".\r" at a line start: perhaps the start of the end marker
        self._after_crlf = True  # the start of DATA counts as after CRLF
        self._last = b"\n"  # the last byte taken
        self._line = 0  # bytes of the line not yet ended
        self._size = 0
        self._header = True
        self._header_count = 0
        self._header_bytes = 0
        self._hline_len = 0  # the header line not yet ended: its length and first two bytes
        self._hline_head = b""
        self._since_reset = 0
        self.done = False
        self.problem: str | None = None
        self.leftover = b""  # bytes after the end marker (a reader that read too far)

    @property
    def at_line_start(self) -> bool:
        return self._line == 0 and not self._carry

    @property
    def in_dot_line(self) -> bool:
        """A line start's dot was read; what follows it decides (end marker or stuffed dot)."""
        return bool(self._carry)

    def feed(self, piece: bytes) -> bool:
        """Take the next piece of the stream; True when the idle timer is due again."""
        data = self._carry + piece if self._carry else piece
        self._carry = b""
        at_start = self._line == 0
        end = -1
        if at_start and self._after_crlf and data.startswith(b".\r\n"):
            end = 0
        elif self._last == b"\r" and data.startswith(b"\n.\r\n"):
            end = 1  # the CR of the mail's last line end came in the piece before
        else:
            found = data.find(_MARKER)
            if found >= 0:
                end = found + 2  # the CRLF before the dot line is the mail's last line end
        if end >= 0:
            self.done = True
            self.leftover = data[end + 3:]
            data = data[:end]
        else:
            tail = data[data.rfind(b"\n") + 1:]
            at_line_start = len(tail) < len(data) or at_start
            if tail in (b".", b".\r") and at_line_start:
                self._carry = tail  # decided by the next piece: the end, or a stuffed dot
                data = data[:-len(tail)]
        if data:
            if at_start and data[:1] == b".":
                data = data[1:]
            self._take(data.replace(b"\n.", b"\n"))
        self._since_reset += len(piece)
        if self._since_reset >= self.RESET_EVERY:
            self._since_reset = 0
            return True
        return False

    def _take(self, body: bytes) -> None:
        limits = self._limits
        self._size += len(body)
        if limits.max_size and self._size > limits.max_size:
            self._fail(TOO_MUCH_DATA)
        self._check_lines(body)
        if self._header:
            self._check_header(body)
        if self.problem is None:
            self._buffer += body
        if body.endswith(b"\n"):
            self._after_crlf = body.endswith(b"\r\n") or (body == b"\n" and self._last == b"\r")
        if body:
            self._last = body[-1:]

    def _check_lines(self, body: bytes) -> None:
        limit = self._limits.max_line_bytes
        last = body.rfind(b"\n")
        if last < 0:
            self._line += len(body)
        else:
            first = body.find(b"\n")
            if self._line + first + 1 > limit or (
                last > first and last - first > limit
                and self._long_line.search(body, first + 1, last) is not None
            ):
                self._too_long()
            self._line = len(body) - last - 1
        if self._line > limit:
            self._too_long()

    def _too_long(self) -> None:
        self._fail(f"500 5.5.2 Line longer than {self._limits.max_line_bytes} bytes")

    def _check_header(self, body: bytes) -> None:
        """Count the header fields and bytes up to the blank line that ends the header."""
        limits = self._limits
        position, size = 0, len(body)
        while position < size:
            newline = body.find(b"\n", position)
            end = size if newline < 0 else newline + 1
            head = (self._hline_head + body[position:min(position + 2, end)])[:2]
            length = self._hline_len + end - position
            position = end
            if newline < 0:  # the line goes on in the next piece
                self._hline_head, self._hline_len = head, length
                return
            self._hline_head, self._hline_len = b"", 0
            if length <= 2 and head in (b"\r\n", b"\n"):
                self._header = False
                return
            self._header_bytes += length
            if head[:1] not in (b" ", b"\t"):
                self._header_count += 1
            if self._header_count > limits.max_header_count:
                self._fail(
                    f"552 5.3.4 Too many header fields (more than {limits.max_header_count})")
            if self._header_bytes > limits.max_header_bytes:
                self._fail(
                    f"552 5.3.4 Header section larger than {limits.max_header_bytes} bytes")

    def _fail(self, reply: str) -> None:
        if self.problem is None:
            self.problem = reply
            self._buffer = bytearray()  # nothing of it is kept: free the memory now

    def content(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer = bytearray()
        return data


async def _read_until(stream: asyncio.StreamReader, separator: bytes) -> bytes:
    """Up to and including ``separator``, or as much as the stream's limit allows."""
    try:
        return await stream.readuntil(separator)
    except asyncio.LimitOverrunError as exc:
        return await stream.readexactly(exc.consumed)


async def read_data(
    stream: asyncio.StreamReader, reader: DataReader, progress: Callable[[], None]
) -> None:
    """Feed ``reader`` from ``stream`` until the end marker, never reading past it.

    At a line start one byte is read to see whether a dot follows (the end marker or a stuffed
    dot: the rest of that line is read); otherwise up to the next line that starts with a dot.
    ``progress`` is called while data keeps coming (the idle timer is reset).
    Raises ``asyncio.IncompleteReadError`` when the client goes away.
    """
    while not reader.done:
        if reader.at_line_start:
            first = await stream.readexactly(1)
            if first == b".":
                piece = first + await _read_until(stream, b"\n")
            elif first == b"\n":
                piece = first
            else:
                piece = first + await _read_until(stream, b"\n.")
        elif reader.in_dot_line:  # after a dot at a line start: the rest of that line
            piece = await _read_until(stream, b"\n")
        else:
            piece = await _read_until(stream, b"\n.")
        if reader.feed(piece):
            progress()
