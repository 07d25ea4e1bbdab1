"""MAIL FROM / RCPT TO paths: the fast reading of <local@domain> agrees with aiosmtpd's parser."""

from __future__ import annotations

from types import SimpleNamespace

from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsvc.ingest.smtp import IntakeSMTP

PIECES = st.sampled_from([
    "a", "Z", "0", ".", "@", "<", ">", " ", "\t", "(c)", '"q"', "+", "-", "_", "=", "SIZE=10",
    "BODY=8BITMIME", "[1.2.3.4]", ",", ":", "ä", "\\", "example.com", "x.y", "!", "~",
])


def _slow(arg: str) -> tuple[str | None, str | None]:
    return SMTP._getaddr(SimpleNamespace(local_part_limit=0), arg)


def _fast(arg: str) -> tuple[str | None, str | None]:
    return IntakeSMTP._getaddr(SimpleNamespace(local_part_limit=0), arg)  # type: ignore[arg-type]


@settings(max_examples=2000, deadline=None)
@given(st.lists(PIECES, max_size=14))
def test_the_fast_path_reads_what_the_parser_reads(pieces: list[str]) -> None:
    arg = "".join(pieces)
    try:
        fast = _fast(arg)
    except TypeError:  # super() without an IntakeSMTP: the fast path did not apply
        return
    assert fast == _slow(arg)


def test_common_paths_take_the_fast_path() -> None:
    for arg in ("<anna@example.com>", "<a.b+c@x-y.example> SIZE=4096 BODY=8BITMIME",
                "  <bcc@crm.example>"):
        assert _fast(arg) == _slow(arg)


@settings(max_examples=2000, deadline=None)
@given(st.text(st.sampled_from(list(" \t")), max_size=2), st.lists(PIECES, max_size=5),
       st.lists(PIECES, max_size=5), st.lists(PIECES, max_size=4))
def test_paths_shaped_like_addresses_agree(lead: str, local: list[str], domain: list[str],
                                           tail: list[str]) -> None:
    arg = f"{lead}<{''.join(local)}@{''.join(domain)}>{''.join(tail)}"
    try:
        fast = _fast(arg)
    except TypeError:
        return
    assert fast == _slow(arg)
