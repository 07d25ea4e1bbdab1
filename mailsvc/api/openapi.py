"""The OpenAPI document as a client generator needs it: readable operation ids, tags with
descriptions, a server, and every error answered as what the server sends
(``application/problem+json`` with the Problem schema).

FastAPI documents declared error responses as ``application/json``; ``with_problem_errors``
rewrites the finished document once (the document is cached by FastAPI, so this costs nothing per
request).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from mailsvc.api.problems import MEDIA_TYPE

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}

# One tag per area, in the order a reader meets them.
TAGS: list[dict[str, str]] = [
    {"name": "accounts", "description": "Companies: create, change, archive and restore."},
    {"name": "contacts", "description": "People at accounts."},
    {"name": "users", "description": "Users of the CRM and their API keys."},
    {"name": "inbox", "description": "Inbox leads: mail from unknown senders, to be qualified."},
    {"name": "opportunities", "description": "Leads and deals through the pipeline's stages."},
    {"name": "tickets", "description": "Support tickets and their progress entries."},
    {"name": "activities", "description": "Calls, meetings, tasks, planned and done."},
    {"name": "emails", "description": "Stored mail, its links to records, attachments, raw."},
    {"name": "outbound", "description": "Replies and mail written from a record (queued)."},
    {"name": "quotes", "description": "Quotes and their line items."},
    {"name": "orders", "description": "Orders and their line items."},
    {"name": "invoices", "description": "Invoices, payments and cancellations."},
    {"name": "products", "description": "The product catalogue."},
    {"name": "pipelines", "description": "Sales pipelines, their stages and activity plans."},
    {"name": "budgets", "description": "Revenue targets per year and month."},
    {"name": "settings", "description": "Lists, territories, teams, campaigns, loss reasons."},
    {"name": "reports", "description": "Dashboard figures."},
    {"name": "privacy", "description": "Erasure of personal data and its audit trail."},
    {"name": "webhooks", "description": "Events POSTed to your URLs, signed; the delivery log."},
    {"name": "never-log", "description": "Addresses and domains whose mail is never stored "
     "(private contacts, HR, legal): dropped at the decide step, only a counter moves."},
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics."},
]

# What the gate in front of every /api/v1 route answers besides the routes' own errors.
GATE_ERRORS = {
    "429": "Too many failed authentications from this client (see Retry-After)",
}
BODY_TOO_LARGE = {"413": "The request body is over MAILSVC_API_MAX_BODY_BYTES (not read)"}


def operation_id(route: APIRoute) -> str:
    """The route function's name (``list_users``): readable, stable, and unique (the tests check
    that no two routes share one)."""
    return route.name


def _is_error(status: str) -> bool:
    return status[:1] in ("4", "5") or status == "default"


def with_problem_errors(schema: dict[str, Any], api_prefix: str) -> dict[str, Any]:
    """Every error response of ``schema`` as ``application/problem+json`` with the Problem
    schema; the gate's 429 (and 413 where a body is sent) added to the API's operations."""
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses: dict[str, Any] = operation["responses"]
            if path.startswith(api_prefix):
                extra = {**GATE_ERRORS, **(BODY_TOO_LARGE if "requestBody" in operation else {})}
                for status, description in extra.items():
                    responses.setdefault(status, {"description": description})
            for status, response in responses.items():
                if _is_error(status):
                    response["content"] = {MEDIA_TYPE: {"schema": dict(PROBLEM_REF)}}
    return schema


def install(app: FastAPI, api_prefix: str) -> None:
    """Make ``app.openapi()`` return the document with problem+json errors (built once)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_problem_errors(build(), api_prefix)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
