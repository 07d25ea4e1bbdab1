"""Record IDs in subjects, reply-prefix stripping and Message-ID parsing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsvc.errors import ConfigError
from mailsvc.linking.references import (
    IdPatterns,
    RecordId,
    RecordKind,
    compile_id_pattern,
    find_record_ids,
    normalise_message_id,
    parse_message_ids,
    strip_reply_prefixes,
)

PATTERNS = IdPatterns("OPP", "TCK")
PREFIXES: dict[RecordKind, str] = {"opportunity": "OPP", "ticket": "TCK"}
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def opp(number: int) -> RecordId:
    return RecordId("opportunity", number)


def tck(number: int) -> RecordId:
    return RecordId("ticket", number)


# --------------------------------------------------------------------------- hand cases

FOUND_CASES: list[tuple[str, tuple[RecordId, ...]]] = [
    ("OPP-123", (opp(123),)),
    ("TCK-45", (tck(45),)),
    ("[OPP-12] Angebot", (opp(12),)),
    ("Angebot (OPP-12)", (opp(12),)),
    ("{TCK-9} Störung", (tck(9),)),
    ("<OPP-12>", (opp(12),)),
    ("opp-12", (opp(12),)),
    ("Opp-12", (opp(12),)),
    ("oPp-12", (opp(12),)),
    ("tck#45", (tck(45),)),
    ("OPP_12", (opp(12),)),
    ("OPP:12", (opp(12),)),
    ("OPP 12", (opp(12),)),
    ("OPP12", (opp(12),)),
    ("OPP-007", (opp(7),)),
    ("OPP-000000001", (opp(1),)),
    ("OPP-999999999", (opp(999_999_999),)),
    ("Re:OPP-12", (opp(12),)),
    ("Re: Fwd: AW: OPP-12", (opp(12),)),
    ("RE[2]: [TCK-3]", (tck(3),)),
    ("Re(3):TCK-3", (tck(3),)),
    ("WG: SV: VS: TR: RIF: R: I: Antw: Odp: Ynt: Enc: OPP-5 Angebot", (opp(5),)),
    ("AW：OPP-5", (opp(5),)),
    ('Offer "OPP-12" attached', (opp(12),)),
    ("'OPP-12'", (opp(12),)),
    ("about OPP-12.", (opp(12),)),
    ("OPP-12, as discussed", (opp(12),)),
    ("OPP-12!", (opp(12),)),
    ("OPP-12?", (opp(12),)),
    ("OPP-12: new offer", (opp(12),)),
    ("OPP-12:", (opp(12),)),
    ("OPP-12; TCK-4", (opp(12), tck(4))),
    ("OPP-12,TCK-4", (opp(12), tck(4))),
    ("TCK-4 then OPP-12", (tck(4), opp(12))),
    ("OPP-12 and opp-012 and [OPP_12]", (opp(12),)),
    ("OPP-12 TCK-12", (opp(12), tck(12))),
    ("OPP-1 OPP-2 OPP-1 OPP-3", (opp(1), opp(2), opp(3))),
    ("Angebot - OPP-12 - Firma", (opp(12),)),
    ("#OPP-12", (opp(12),)),
    ("*OPP-12*", (opp(12),)),
    ("«OPP-12»", (opp(12),)),
    ("【TCK-8】", (tck(8),)),
    ("OPP-12's status", (opp(12),)),
    ("Ticket TCK-45 und Ticket#46", (tck(45),)),
    ("OPP-12\u00a0nbsp", (opp(12),)),
    ("OPP-12\tTCK-1\n", (opp(12), tck(1))),
    ("OPP-12-", (opp(12),)),
    ("OPP-12 - 3", (opp(12),)),
    ("\u2122OPP-12", (opp(12),)),  # ™ is a symbol; its compatibility form "TM" would glue
    ("\uff2f\uff30\uff30\uff0d\uff11\uff12", (opp(12),)),  # full-width
]

NOT_FOUND_CASES: list[str] = [
    "",
    "Angebot für Müller",
    "XOPP-12",
    "\u013fOPP-12",  # Ŀ is a letter; its compatibility form "L·" would free the ID
    "xopp-12",
    "OPP-12abc",
    "OPP-12-3",
    "OPP-12_4",
    "OPP-1.5",
    "OPP-1,5",
    "ab.OPP-12",
    "foo/OPP-12",
    "mail@OPP-12",
    "OPP-12@example.com",
    "https://crm.example.com/OPP-12",
    "5-OPP-12",
    "x_OPP-12",
    "ÄOPP-12",
    "OPP-12ä",
    "OPP-12\u0301",
    "OPP-0",
    "OPP-000",
    "OPP-1234567890",
    "OPP-0001234567890",
    "OPP--12",
    "OPP - 12",
    "OPP  12",
    "OPP-",
    "OPP",
    "OPP-x12",
    "OPP-١٢",
    "OPP-12:x",
    "OPP-12!x",
    "Ticket#45",
    "Opportunity-12",
    "OPPP-12",
    "OPP-1OPP-2",
    "OPP12OPP13",
]


@pytest.mark.parametrize(("subject", "expected"), FOUND_CASES)
def test_found(subject: str, expected: tuple[RecordId, ...]) -> None:
    assert find_record_ids(subject, PATTERNS) == expected


@pytest.mark.parametrize("subject", NOT_FOUND_CASES)
def test_not_found(subject: str) -> None:
    assert find_record_ids(subject, PATTERNS) == ()


def test_hand_table_is_big_enough() -> None:
    assert len(FOUND_CASES) + len(NOT_FOUND_CASES) >= 40


def test_custom_prefixes() -> None:
    patterns = IdPatterns("Deal", "SR")
    assert find_record_ids("Re: deal-5 / SR7 (OPP-3)", patterns) == (opp(5), tck(7))
    assert find_record_ids("XSR-7", patterns) == ()


def test_prefix_that_extends_the_other_prefers_the_longer() -> None:
    patterns = IdPatterns("T", "TCK")
    assert find_record_ids("TCK-5 T-6", patterns) == (tck(5), opp(6))


def test_prefix_with_digits() -> None:
    patterns = IdPatterns("O2", "T9X")
    assert find_record_ids("o2-15 T9X7", patterns) == (opp(15), tck(7))


@pytest.mark.parametrize(
    ("opportunity", "ticket"),
    [("", "TCK"), ("1OPP", "TCK"), ("OP-P", "TCK"), ("OPP", "opp"), ("ÖPP", "TCK"), ("OPP ", "T")],
)
def test_bad_prefixes_are_config_errors(opportunity: str, ticket: str) -> None:
    with pytest.raises(ConfigError):
        IdPatterns(opportunity, ticket)
    with pytest.raises(ConfigError):
        compile_id_pattern(opportunity, ticket)


def test_pattern_is_cached() -> None:
    assert IdPatterns("OPP", "TCK").pattern is IdPatterns("OPP", "TCK").pattern
    assert compile_id_pattern("A", "B") is compile_id_pattern("A", "B")


def test_labels() -> None:
    assert opp(7).label("OPP") == "OPP-7"
    assert PATTERNS.label(tck(45)) == "TCK-45"
    assert PATTERNS.prefix_for("opportunity") == "OPP"


def test_record_id_is_frozen_and_hashable() -> None:
    record = opp(1)
    assert {record, opp(1)} == {record}
    with pytest.raises(AttributeError):
        record.number = 2  # type: ignore[misc]


# --------------------------------------------------------------------------- pathological input


@pytest.mark.parametrize(
    "subject",
    [
        "OPP-" * 5000,
        "OPP" * 5000,
        "OPP " * 5000,
        "OPP-1" * 2000,
        "OPP-" + "1" * 10_000,
        "OPP-" + "0" * 10_000,
        "a" + "." * 10_000 + "OPP-1",
        "OPP-1" + "." * 10_000 + "a",
        "OPP-1" + "-1" * 5000,
        "[(" * 5000 + "OPP-",
        "Re: " * 2500,
        "\u0301" * 10_000,
    ],
)
def test_pathological_subjects_are_fast_and_empty(subject: str) -> None:
    assert find_record_ids(subject, PATTERNS) == ()


def test_many_ids_in_long_subject() -> None:
    subject = " ".join(f"OPP-{n}" for n in range(1, 1500))
    assert len(subject) > 10_000
    assert find_record_ids(subject, PATTERNS) == tuple(opp(n) for n in range(1, 1500))
    assert find_record_ids("OPP-1 " * 2000, PATTERNS) == (opp(1),)


def test_pathological_reply_chains_and_headers() -> None:
    assert strip_reply_prefixes("Re: " * 5000 + "x") == "x"
    assert strip_reply_prefixes("Re " * 5000) == ("Re " * 5000).strip()
    assert strip_reply_prefixes("Re[1]" * 5000) == "Re[1]" * 5000
    assert parse_message_ids("<" * 10_000) == ()
    assert parse_message_ids("<a@b" * 3000) == ("a@b",)
    assert parse_message_ids("<" + "a" * 10_000) == ()


# --------------------------------------------------------------------------- properties

MARKERS = ["Re", "AW", "WG", "Fwd", "FW", "SV", "VS", "TR", "RIF", "R", "I", "Antw", "Odp", "Ynt",
           "Enc"]  # fmt: skip
SEPARATORS = ["-", "#", "_", ":", " ", ""]
BRACKETS = [("", ""), ("[", "]"), ("(", ")"), ("{", "}"), ("<", ">"), ('"', '"')]
GLUE_PUNCTUATION = ".,!?-/@:;()[]\"'#*"


def any_case(word: str) -> st.SearchStrategy[str]:
    return st.tuples(*(st.sampled_from(sorted({c.lower(), c.upper()})) for c in word)).map("".join)


@st.composite
def reply_marker(draw: st.DrawFn) -> str:
    marker = draw(st.sampled_from(MARKERS).flatmap(any_case))
    count = draw(st.integers(1, 99))
    counter = draw(st.sampled_from(["", f"[{count}]", f"({count})"]))
    colon = draw(st.sampled_from([":", "：", " :"]))
    space = draw(st.sampled_from(["", " ", "  "]))
    return f"{marker}{counter}{colon}{space}"


reply_chains = st.lists(reply_marker(), max_size=5).map("".join)

# Words without digits cannot contain an ID, so the expected ID is the only one.
words = st.lists(
    st.text(
        alphabet=st.one_of(st.characters(categories=["L"]), st.sampled_from(GLUE_PUNCTUATION)),
        min_size=1,
        max_size=8,
    ),
    max_size=4,
).map(" ".join)


@st.composite
def id_tokens(draw: st.DrawFn, prefixes: dict[RecordKind, str]) -> tuple[str, RecordId]:
    kind: RecordKind = draw(st.sampled_from(["opportunity", "ticket"]))
    number = draw(st.integers(1, 10**9 - 1))
    zeros = "0" * draw(st.integers(0, 3))
    prefix = draw(any_case(prefixes[kind]))
    separator = draw(st.sampled_from(SEPARATORS))
    return f"{prefix}{separator}{zeros}{number}", RecordId(kind, number)


def sentence(*parts: str) -> str:
    return " ".join(part for part in parts if part)


@PROPERTY
@given(token=id_tokens(PREFIXES), brackets=st.sampled_from(BRACKETS), chain=reply_chains,
       before=words, after=words)  # fmt: skip
def test_property_id_is_found(
    token: tuple[str, RecordId], brackets: tuple[str, str], chain: str, before: str, after: str
) -> None:
    text, expected = token
    opening, closing = brackets
    subject = chain + sentence(before, f"{opening}{text}{closing}", after)
    assert find_record_ids(subject, PATTERNS) == (expected,)


prefix_pairs = st.tuples(
    st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,5}", fullmatch=True),
    st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,5}", fullmatch=True),
).filter(
    lambda pair: (
        not pair[0].lower().startswith(pair[1].lower())
        and not pair[1].lower().startswith(pair[0].lower())
    )
)


@PROPERTY
@given(data=st.data(), prefixes=prefix_pairs, chain=reply_chains, before=words, after=words)
def test_property_id_is_found_with_any_prefixes(
    data: st.DataObject, prefixes: tuple[str, str], chain: str, before: str, after: str
) -> None:
    patterns = IdPatterns(*prefixes)
    text, expected = data.draw(id_tokens({"opportunity": prefixes[0], "ticket": prefixes[1]}))
    assert expected in find_record_ids(chain + sentence(before, text, after), patterns)


token_chars = st.characters(categories=["L", "N"])
digits = st.characters(categories=["Nd"])
glue_before = st.one_of(
    token_chars,
    digits.map(lambda d: f"{d}-"),
    digits.map(lambda d: f"-{d}"),
    token_chars.map(lambda c: f"{c}_"),
    digits.map(lambda d: f"{d}."),
    token_chars.map(lambda c: f"{c}/"),
    token_chars.map(lambda c: f"{c}@"),
)
glue_after = st.one_of(
    st.characters(categories=["L"]),
    digits.map(lambda d: f"-{d}"),
    token_chars.map(lambda c: f"_{c}"),
    digits.map(lambda d: f".{d}"),
    digits.map(lambda d: f",{d}"),
    token_chars.map(lambda c: f"/{c}"),
    token_chars.map(lambda c: f"@{c}"),
)


@PROPERTY
@given(token=id_tokens(PREFIXES), glue=glue_before, chain=reply_chains, before=words, after=words)
def test_property_glued_before_is_not_found(
    token: tuple[str, RecordId], glue: str, chain: str, before: str, after: str
) -> None:
    text, _ = token
    assert find_record_ids(chain + sentence(before, glue + text, after), PATTERNS) == ()


@PROPERTY
@given(token=id_tokens(PREFIXES), glue=glue_after, chain=reply_chains, before=words, after=words)
def test_property_glued_after_is_not_found(
    token: tuple[str, RecordId], glue: str, chain: str, before: str, after: str
) -> None:
    text, _ = token
    assert find_record_ids(chain + sentence(before, text + glue, after), PATTERNS) == ()


@PROPERTY
@given(token=id_tokens(PREFIXES), digit=st.characters(categories=["Nd"]))
def test_property_glued_digit_after_changes_the_number(
    token: tuple[str, RecordId], digit: str
) -> None:
    # "OPP-12" + "5" is "OPP-125": a different ID (or none), never OPP-12.
    text, expected = token
    assert expected not in find_record_ids(f"Re: {text}{digit} x", PATTERNS)


@PROPERTY
@given(subject=st.text())
def test_property_never_raises_on_any_text(subject: str) -> None:
    result = find_record_ids(subject, PATTERNS)
    assert isinstance(result, tuple)
    assert len(set(result)) == len(result)
    assert all(1 <= record.number <= 999_999_999 for record in result)


@PROPERTY
@given(subject=st.text(alphabet="OoPpTtCcKk-#_: 0123456789.,[](<>Ä@/\u0301", max_size=200))
def test_property_never_raises_on_id_like_text(subject: str) -> None:
    result = find_record_ids(subject, PATTERNS)
    # Each ID found is still found on its own, in canonical form.
    for record in result:
        label = PATTERNS.label(record)
        assert find_record_ids(label, PATTERNS) == (record,)


# --------------------------------------------------------------------------- reply prefixes


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Hello", "Hello"),
        ("  Hello  ", "Hello"),
        ("Re: Hello", "Hello"),
        ("RE: Hello", "Hello"),
        ("re:Hello", "Hello"),
        ("Re: Fwd: AW: Hello", "Hello"),
        ("RE[2]: Hello", "Hello"),
        ("Re(3): Hello", "Hello"),
        ("Re [2] : Hello", "Hello"),
        ("RE : Hello", "Hello"),
        ("AW：Hello", "Hello"),
        ("WG: SV: VS: TR: RIF: R: I: Antw: Odp: Ynt: Enc: FW: Fw: Hello", "Hello"),
        ("Re: Re: Re:", ""),
        ("Re: [OPP-12] Angebot", "[OPP-12] Angebot"),
        ("[external] Re: Hello", "[external] Re: Hello"),
        ("Hello Re: world", "Hello Re: world"),
        ("Reply: Hello", "Reply: Hello"),
        ("Re Hello", "Re Hello"),
        ("Ire: Hello", "Ire: Hello"),
        ("Fwd Hello", "Fwd Hello"),
    ],
)
def test_strip_reply_prefixes(subject: str, expected: str) -> None:
    assert strip_reply_prefixes(subject) == expected


@PROPERTY
@given(chain=reply_chains, rest=words.filter(lambda w: w.strip() != ""))
def test_property_strip_reply_chain(chain: str, rest: str) -> None:
    rest = "Angebot " + rest
    assert strip_reply_prefixes(chain + rest) == rest.strip()


@PROPERTY
@given(subject=st.text())
def test_property_strip_is_idempotent(subject: str) -> None:
    once = strip_reply_prefixes(subject)
    assert strip_reply_prefixes(once) == once


# --------------------------------------------------------------------------- message ids


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<abc@example.com>", "abc@example.com"),
        ("  <ABC.Def@Example.COM>  ", "ABC.Def@example.com"),
        ("abc@EXAMPLE.com", "abc@example.com"),
        ("<abc@\r\n example.com>", "abc@example.com"),
        ("<1234>", "1234"),
        ("<a@b@C>", "a@b@c"),
        ("", None),
        ("<>", None),
        ("   ", None),
        ("<@example.com>", None),
        ("<abc@>", None),
        ("<a<b@c>", None),
        ("<a\x00b@c>", None),
    ],
)
def test_normalise_message_id(value: str, expected: str | None) -> None:
    assert normalise_message_id(value) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", ()),
        ("<a@X.com>", ("a@x.com",)),
        ("<a@x.com> <b@y.com>", ("a@x.com", "b@y.com")),
        ("<a@x.com>\r\n\t<b@y.com>", ("a@x.com", "b@y.com")),
        ("<a@x.com><b@y.com>", ("a@x.com", "b@y.com")),
        ("<a@x.com>, <b@y.com>, <a@X.COM>", ("a@x.com", "b@y.com")),
        ("a@x.com b@y.com", ("a@x.com", "b@y.com")),
        ("a@x.com,b@y.com,a@x.com", ("a@x.com", "b@y.com")),
        ('Your message of "Mon, 1 Jan 2001" <a@x.com>', ("a@x.com",)),
        ("<a@x.com> (Peter's message)", ("a@x.com",)),
        ("just some words", ()),
        ("<> <  >", ()),
        ("<a@x.com", ("a@x.com",)),
    ],
)
def test_parse_message_ids(header: str, expected: tuple[str, ...]) -> None:
    assert parse_message_ids(header) == expected


message_ids = st.from_regex(r"[A-Za-z0-9.$_+-]{1,20}@[A-Za-z0-9.-]{1,20}", fullmatch=True)


@PROPERTY
@given(ids=st.lists(message_ids, max_size=6), separators=st.sampled_from([" ", "\r\n ", ", ", ""]))
def test_property_parse_message_ids_round_trip(ids: list[str], separators: str) -> None:
    header = separators.join(f"<{value}>" for value in ids)
    expected = tuple(dict.fromkeys(normalise_message_id(value) for value in ids))
    assert parse_message_ids(header) == expected
    for value in parse_message_ids(header):
        assert normalise_message_id(value) == value


@PROPERTY
@given(value=st.text())
def test_property_normalise_is_idempotent(value: str) -> None:
    once = normalise_message_id(value)
    if once is not None:
        assert normalise_message_id(once) == once
    parse_message_ids(value)
