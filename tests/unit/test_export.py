"""CSV export of lists and reports (pure conversion and the choice of format)."""

from __future__ import annotations

import csv
import io

from mailsvc.api.export import to_csv, wants_csv


def parse(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_a_page_becomes_one_row_per_item_with_flattened_columns() -> None:
    page = {"items": [
        {"id": 1, "title": "A", "tags": ["x", "y"], "amount": "10.00", "owner": {"id": 3},
         "done": True, "due": None},
        {"id": 2, "title": "=HYPERLINK(\"evil\")", "tags": [], "amount": "20.00",
         "owner": {"id": 4}, "done": False, "due": "2030-01-01"},
    ], "total": 2, "limit": 50, "offset": 0}
    assert parse(to_csv(page)) == [
        ["id", "title", "tags", "amount", "owner.id", "done", "due"],
        ["1", "A", "x;y", "10.00", "3", "true", ""],
        ["2", "'=HYPERLINK(\"evil\")", "", "20.00", "4", "false", "2030-01-01"],
    ]


def test_a_report_becomes_one_row_per_figure() -> None:
    report = {"sales": {"revenue": "5.00", "won": 1},
              "deals": {"forecast_by_stage": [{"stage": "P", "count": 2}], "rate": None}}
    assert parse(to_csv(report)) == [
        ["figure", "value"], ["sales.revenue", "5.00"], ["sales.won", "1"],
        ["deals.forecast_by_stage.0.stage", "P"], ["deals.forecast_by_stage.0.count", "2"],
        ["deals.rate", ""]]
    assert parse(to_csv(["question", "incident"])) == [["value"], ["question"], ["incident"]]


def test_csv_is_asked_for_by_query_or_accept_header() -> None:
    def scope(query: bytes = b"", accept: bytes = b"", method: str = "GET") -> dict[str, object]:
        return {"type": "http", "method": method, "query_string": query,
                "headers": [(b"accept", accept)] if accept else []}

    assert wants_csv(scope(b"format=csv"))
    assert wants_csv(scope(b"limit=5&format=CSV"))
    assert wants_csv(scope(accept=b"text/csv"))
    assert wants_csv(scope(accept=b"text/csv, application/json;q=0.5"))
    assert not wants_csv(scope(accept=b"application/json, text/csv"))
    assert not wants_csv(scope())
    assert not wants_csv(scope(b"format=csv", method="POST"))
    assert not wants_csv(scope(b"format=csv", method="HEAD"))
