"""The fast DATA reader against the line-by-line reader it replaced, over real StreamReaders."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from mailsvc.ingest.smtpdata import TOO_MUCH_DATA, DataLimits, DataReader, read_data


# The line-by-line reader mailsvc used before (the reference model of the behaviour).
class LineReader:
    """The DATA section line by line: dot-unstuffing, the end marker, the limits.

    Lines end at LF, so mail with bare LF line ends is read as lines, not as one over-long line
    (clients such as smtplib send such bytes unchanged). Only ``.`` CRLF after a CRLF ends the
    data; a dot line after a bare LF stays part of the message (no SMTP smuggling).
    """

    __slots__ = (
        "_after_crlf",
        "_buffer",
        "_continues",
        "_header",
        "_header_bytes",
        "_header_count",
        "_limits",
        "_max_size",
        "_since_reset",
        "_size",
        "done",
        "problem",
    )

    RESET_EVERY = 64 * 1024

    def __init__(self, limits: DataLimits, max_size: int | None) -> None:
        self._limits = limits
        self._max_size = max_size
        self._buffer = bytearray()
        self._size = 0
        self._after_crlf = True  # the start of DATA counts as after CRLF
        self._continues = False  # the line read is the tail of an over-long line
        self._header = True
        self._header_count = 0
        self._header_bytes = 0
        self._since_reset = 0
        self.done = False
        self.problem: str | None = None

    def feed(self, line: bytes) -> bool:
        """Take one line (or a piece of an over-long one); True when the idle timer is due."""
        complete = line.endswith(b"\n")
        fresh = not self._continues
        self._continues = not complete
        if fresh and complete and line == b".\r\n" and self._after_crlf:
            self.done = True
            return False
        if complete:
            self._after_crlf = line.endswith(b"\r\n")
        if fresh and line.startswith(b"."):
            line = line[1:]
        self._check(line, fresh, complete)
        if self.problem is None:
            self._buffer += line
        self._since_reset += len(line)
        if self._since_reset >= self.RESET_EVERY:
            self._since_reset = 0
            return True
        return False

    def _check(self, line: bytes, fresh: bool, complete: bool) -> None:
        limits = self._limits
        self._size += len(line)
        if not complete or len(line) > limits.max_line_bytes:
            self._fail(f"500 5.5.2 Line longer than {limits.max_line_bytes} bytes")
        if self._max_size and self._size > self._max_size:
            self._fail(TOO_MUCH_DATA)
        if not self._header:
            return
        if fresh and line in (b"\r\n", b"\n"):
            self._header = False
            return
        self._header_bytes += len(line)
        if fresh and line[:1] not in (b" ", b"\t"):
            self._header_count += 1
        if self._header_count > limits.max_header_count:
            self._fail(f"552 5.3.4 Too many header fields (more than {limits.max_header_count})")
        if self._header_bytes > limits.max_header_bytes:
            self._fail(f"552 5.3.4 Header section larger than {limits.max_header_bytes} bytes")

    def _fail(self, reply: str) -> None:
        if self.problem is None:
            self.problem = reply
            self._buffer = bytearray()  # nothing of it is kept: free the memory now

    def content(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer = bytearray()
        return data




async def _old(stream: asyncio.StreamReader, limits: DataLimits) -> LineReader:
    reader = LineReader(limits, limits.max_size)
    while not reader.done:
        try:
            line = await stream.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            line = await stream.read(exc.consumed)
        reader.feed(line)
    return reader


def _stream(data: bytes, limit: int) -> asyncio.StreamReader:
    stream = asyncio.StreamReader(limit=limit)
    stream.feed_data(data)
    stream.feed_eof()
    return stream


TOKENS = st.sampled_from([
    b"\r\n", b"\n", b".", b"\r", b"a", b" ", b"\t", b"H: v", b"x" * 7, b"\r\n.\r\n", b"..",
    b"\r\n\r\n", b"\n.\r\n",
])


async def _both(data: bytes, limits: DataLimits) -> tuple[object, object]:
    results: list[tuple[object, ...]] = []
    for run in ("old", "new"):
        # Whole lines for the old reader (with aiosmtpd's limit it cut over-long lines at odd
        # places, and a dot line after such a cut was not an end: the new reader is exact).
        stream = _stream(data + b"NEXT\r\n", 1 << 20)
        try:
            if run == "old":
                reader: LineReader | DataReader = await _old(stream, limits)
            else:
                reader = DataReader(limits)
                await read_data(stream, reader, lambda: None)
        except asyncio.IncompleteReadError:
            results.append(("eof",))
            continue
        rest = await stream.read()
        results.append((reader.done, reader.problem is None,
                        reader.content() if reader.problem is None else b"", rest))
    return results[0], results[1]


@settings(max_examples=1500, deadline=None)
@given(st.lists(TOKENS, max_size=60), st.integers(4, 40), st.integers(1, 8),
       st.integers(8, 200), st.one_of(st.none(), st.integers(1, 300)))
def test_same_as_the_line_reader(tokens: list[bytes], line: int, count: int, header: int,
                                 size: int | None) -> None:
    limits = DataLimits(max_line_bytes=line, max_header_count=count, max_header_bytes=header,
                        max_size=size)
    old, new = asyncio.run(_both(b"".join(tokens), limits))
    assert new == old


async def _new(data: bytes, limits: DataLimits, stream_limit: int) -> tuple[object, ...]:
    stream = _stream(data + b"NEXT\r\n", stream_limit)
    reader = DataReader(limits)
    try:
        await read_data(stream, reader, lambda: None)
    except asyncio.IncompleteReadError:
        return ("eof",)
    return (reader.done, reader.problem, reader.content(), await stream.read())


@settings(max_examples=300, deadline=None)
@given(st.lists(TOKENS, max_size=80), st.integers(4, 40))
def test_long_lines_are_cut_where_aiosmtpd_cuts_them_and_the_end_is_still_exact(
    tokens: list[bytes], line: int
) -> None:
    """The service reads with aiosmtpd's stream limit (the longest line): over-long lines come
    in pieces, yet the reply and where the data ends are as if whole lines were read."""
    limits = DataLimits(max_line_bytes=line, max_header_count=100, max_header_bytes=10_000)
    data = b"".join(tokens)
    assert asyncio.run(_new(data, limits, line)) == asyncio.run(_new(data, limits, 1 << 20))


async def test_a_mail_without_dot_lines_is_read_in_three_pieces() -> None:
    pieces: list[bytes] = []

    class Counting(DataReader):
        def feed(self, piece: bytes) -> bool:
            pieces.append(piece)
            return super().feed(piece)

    mail = b"Subject: x\r\n\r\n" + b"body line\r\n" * 100
    limits = DataLimits(max_line_bytes=1000, max_header_count=10, max_header_bytes=1000)
    reader = Counting(limits)
    await read_data(_stream(mail + b".\r\nQUIT\r\n", 1000), reader, lambda: None)
    assert reader.done and reader.content() == mail
    assert len(pieces) == 3


async def test_too_much_data_is_named_and_nothing_is_kept() -> None:
    limits = DataLimits(max_line_bytes=1000, max_header_count=10, max_header_bytes=1000,
                        max_size=100)
    reader = DataReader(limits)
    await read_data(_stream(b"S: v\r\n\r\n" + b"z" * 50 + b"\r\n" * 60 + b".\r\n", 1000),
                    reader, lambda: None)
    assert reader.done and reader.problem == TOO_MUCH_DATA and reader.content() == b""


def test_a_bare_lf_blank_line_ends_the_header_when_more_follows_in_the_same_piece() -> None:
    reader = DataReader(DataLimits(max_line_bytes=100, max_header_count=1, max_header_bytes=100))
    reader.feed(b"S: v\r\n\n\r\nbody\r\n.\r\n")
    assert reader.done and reader.problem is None
    assert reader.content() == b"S: v\r\n\n\r\nbody\r\n"
