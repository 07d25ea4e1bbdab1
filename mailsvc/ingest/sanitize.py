"""Values made safe for the store: cleaned of what no database takes, and fitted to their column.

PostgreSQL refuses NUL in text and JSON, and any text that is not valid UTF-8 (lone surrogates,
which ``surrogateescape`` leaves for undecodable bytes); a ``VARCHAR(n)`` refuses longer values.
One such value used to fail a whole group of mails. Lengths are read from the SQLAlchemy columns,
so the models stay the one place that names them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import FromClause

REPLACEMENT = "\ufffd"
_SURROGATES = re.compile("[\ud800-\udfff]")
# C0 controls but TAB, LF, CR; and DEL: they make no sense in mail text and confuse viewers.
_CONTROL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_CONTROLS = re.compile(f"[{re.escape(_CONTROL_BYTES.decode('ascii'))}]")
# ASCII text (most of it) is checked and cleaned with ``bytes.translate`` on those bytes, some ten
# times faster than the pattern over a mail body.
# In one-line values (names, addresses, ids) line breaks and tabs are spaces.
_LINE_BREAKS = re.compile("[\t\r\n]+")
# What an SMTP address may not contain: controls, DEL, undecodable bytes (surrogate-escaped).
_BAD_ADDRESS = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def clean_text(value: str) -> str:
    """No NUL or other control characters (TAB, LF, CR stay), no lone surrogates."""
    if value.isascii():
        data = value.encode("ascii")
        kept = data.translate(None, _CONTROL_BYTES)
        return value if len(kept) == len(data) else kept.decode("ascii")
    value = _SURROGATES.sub(REPLACEMENT, value)
    return _CONTROLS.sub("", value)


def clean_line(value: str) -> str:
    """``clean_text`` for one-line values: line breaks and tabs become single spaces."""
    return _LINE_BREAKS.sub(" ", clean_text(value))


def clean_json(value: Any) -> Any:
    """Every string inside lists and dicts cleaned (keys too); other values as they are."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, Mapping):
        return {clean_json(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(item) for item in value]
    return value


def column_length(table: FromClause, name: str) -> int | None:
    """The declared length of a string column (``String(n)``), None for unbounded text."""
    return column_lengths(table)[name]


@functools.cache
def column_lengths(table: FromClause) -> dict[str, int | None]:
    """Every column of ``table`` with its declared length (None: unbounded or not a string)."""
    lengths: dict[str, int | None] = {}
    for column in table.c:
        length = getattr(column.type, "length", None)
        lengths[column.key] = int(length) if isinstance(length, int) else None
    return lengths


def fit(value: str | None, length: int | None) -> str | None:
    """A cleaned one-line value, cut to ``length`` characters."""
    if value is None:
        return None
    value = clean_line(value)
    return value[:length] if length is not None and len(value) > length else value


def fit_row(
    table: FromClause, row: Mapping[str, Any], keep: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """A row for ``table`` with every text value cleaned and fitted to its column (see
    ``fit_values``)."""
    return fit_values(column_lengths(table), row, keep)


def fit_values(
    columns: Mapping[str, int | None], row: Mapping[str, Any], keep: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """A row with every text value cleaned and fitted to its column (``columns``: name ->
    length, see ``column_lengths``): bounded strings as one line, unbounded text keeps its
    lines, JSON cleaned inside. Columns in ``keep`` (keys that must stay exactly as looked up)
    and non-columns are left alone."""
    fitted: dict[str, Any] = {}
    for key, value in row.items():
        if key in keep or key not in columns:
            fitted[key] = value
        elif isinstance(value, str):
            length = columns[key]
            fitted[key] = fit(value, length) if length is not None else clean_text(value)
        elif isinstance(value, list | dict | tuple):
            fitted[key] = clean_json(value)
        else:
            fitted[key] = value
    return fitted


def bad_address(address: str) -> bool:
    """An SMTP envelope address with control characters, NUL or undecodable bytes."""
    return bool(_BAD_ADDRESS.search(address))
