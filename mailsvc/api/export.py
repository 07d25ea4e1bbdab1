"""CSV export of every list and report: ``?format=csv`` or ``Accept: text/csv`` on a GET.

A small ASGI middleware: it lets the endpoint answer JSON as usual, then turns that JSON into
CSV, so every list endpoint and report exports the same fields it shows, with the same filters,
sorting, paging and access rules."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Cells a spreadsheet would run as a formula (CSV injection) get a leading apostrophe.
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def wants_csv(scope: Scope) -> bool:
    if scope.get("type") != "http" or scope.get("method") != "GET":
        return False
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("format", [""])[-1].lower() == "csv":
        return True
    headers: dict[bytes, bytes] = dict(scope.get("headers") or [])
    accept = headers.get(b"accept", b"").decode("latin-1").lower()
    if "text/csv" not in accept:
        return False
    json_at = accept.find("application/json")
    return json_at < 0 or accept.find("text/csv") < json_at


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested objects become dotted columns; lists of plain values one ``;``-joined cell."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, list):
        if all(not isinstance(v, dict | list) for v in value):
            return {prefix: ";".join("" if v is None else str(v) for v in value)}
        return {prefix: json.dumps(value, ensure_ascii=False)}
    return {prefix: value}


def _rows(payload: Any) -> list[dict[str, Any]]:
    if isinstance(payload, dict) and isinstance(payload.get("items"), list):
        payload = payload["items"]  # a page: its items
    if isinstance(payload, list):
        return [_flatten(item) if isinstance(item, dict) else {"value": item} for item in payload]
    if isinstance(payload, dict):  # a report: one row per figure
        return [{"figure": key, "value": value} for key, value in _figures(payload)]
    return [{"value": payload}]


def _figures(report: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in report.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from _figures(value, name)
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            for index, item in enumerate(value):
                yield from _figures(item if isinstance(item, dict) else {"value": item},
                                    f"{name}.{index}")
        else:
            yield name, _flatten(value).get("", value) if isinstance(value, list) else value


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    return value


def to_csv(payload: Any) -> str:
    """The JSON body of a list or report as CSV (header row, then one row per item)."""
    rows = _rows(payload)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return out.getvalue()


class CsvExport:
    """Answer a GET that asks for CSV with the endpoint's JSON converted; errors stay
    problem+json."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not wants_csv(scope) or not scope.get("path", "").startswith("/api/v1/"):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        body = bytearray()

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))

        await self.app(scope, receive, capture)
        assert start is not None
        headers = dict(start.get("headers") or [])
        try:
            payload = (json.loads(body) if start["status"] == 200
                       and headers.get(b"content-type") == b"application/json" else None)
        except ValueError:
            payload = None
        if payload is None:
            await send({**start, "headers": [(k, v) for k, v in headers.items()
                                            if k != b"content-length"]
                        + [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": bytes(body)})
            return
        data = to_csv(payload).encode("utf-8")
        name = scope["path"].removeprefix("/api/v1/").strip("/").replace("/", "-") or "export"
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/csv; charset=utf-8"),
            (b"content-disposition", f'attachment; filename="{name}.csv"'.encode()),
            (b"content-length", str(len(data)).encode()),
        ]})
        await send({"type": "http.response.body", "body": data})
