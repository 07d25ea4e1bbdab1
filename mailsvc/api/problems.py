"""Errors as RFC 9457 problem documents (application/problem+json): 4xx with a clear message."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mailsvc.errors import Conflict, NotFound, RuleViolation

logger = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
BASE = "https://mailsvc.example/problems/"


def problem(
    request: Request, status: int, title: str, detail: str | None = None, kind: str | None = None,
    headers: dict[str, str] | None = None, **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": BASE + kind if kind else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    return JSONResponse(jsonable_encoder(body), status_code=status, media_type=MEDIA_TYPE,
                        headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p not in ("body", "query", "path"))


def _field(loc: tuple[Any, ...]) -> str:
    """The field a validation error is about; the body or a parameter itself when it has none
    (a missing or non-object body is "body", never a tuple's repr)."""
    return _location(loc) or ".".join(str(p) for p in loc) or "request"


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": "body" if e.get("type") == "json_invalid"
               else _field(tuple(e.get("loc", ()))),
               "in": str(e.get("loc", ["body"])[0]), "message": e.get("msg", "invalid")}
              for e in exc.errors()]
    detail = "; ".join(f"{e['field'] or e['in']}: {e['message']}" for e in errors[:10])
    return problem(request, 422, "Invalid request", detail, "validation", errors=errors)


async def _rule(request: Request, exc: Exception) -> JSONResponse:
    return problem(request, 422, "Business rule violated", str(exc), "rule-violation")


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return problem(request, 404, "Not found", str(exc), "not-found")


async def _conflict(request: Request, exc: Exception) -> JSONResponse:
    existing = getattr(exc, "existing_id", None)
    if existing is not None:  # a duplicate: name the record that exists
        kind = getattr(exc, "kind", "record")
        return problem(request, 409, "Duplicate", str(exc), "duplicate", existing_id=existing,
                       existing_type=kind)
    return problem(request, 409, "Conflict", str(exc), "conflict")


async def _integrity(request: Request, exc: Exception) -> JSONResponse:
    # A constraint caught what the rules did not (usually a race): a conflict, not a crash.
    logger.info("integrity error on %s: %s", request.url.path, exc)
    return problem(request, 409, "Conflict",
                   "the change conflicts with existing data (a unique or reference constraint)",
                   "conflict")


async def _data(request: Request, exc: Exception) -> JSONResponse:
    logger.info("data error on %s: %s", request.url.path, exc)
    return problem(request, 422, "Invalid request", "a value is not accepted by the database",
                   "validation")


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    titles = {401: "Unauthorized", 403: "Forbidden", 404: "Not found",
              405: "Method not allowed"}
    return problem(request, exc.status_code, titles.get(exc.status_code, "Error"),
                   str(exc.detail), headers=dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem(request, 500, "Internal error", "the error was logged", "internal")


def register(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(RuleViolation, _rule)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    app.add_exception_handler(IntegrityError, _integrity)
    app.add_exception_handler(DataError, _data)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
