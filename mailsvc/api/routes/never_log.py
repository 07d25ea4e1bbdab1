"""Never-log rules: addresses and domains whose mail is dropped unstored (docs/linking.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import Field

from mailsvc.api import schemas as s
from mailsvc.api.deps import Session
from mailsvc.api.routes.common import PathId
from mailsvc.crmstore.models import NeverLogRule
from mailsvc.crmstore.services import never_log

router = APIRouter(prefix="/never-log", tags=["never-log"])


class NeverLogIn(s.In):
    pattern: s.Str320 = Field(min_length=1, examples=["hr@example.com", "example.com"])


class NeverLogOut(s.Out):
    id: int
    pattern: str
    kind: Literal["address", "domain"]
    created_by_id: int | None
    created_at: datetime


def _out(rule: NeverLogRule) -> NeverLogOut:
    return NeverLogOut(id=rule.id, pattern=rule.pattern,
                       kind="address" if "@" in rule.pattern else "domain",
                       created_by_id=rule.created_by_id, created_at=rule.created_at)


@router.get("", summary="The never-log list")
async def list_never_log(session: Session) -> list[NeverLogOut]:
    return [_out(rule) for rule in await never_log.list_rules(session)]


@router.post("", status_code=201, summary="Never store mail to or from an address or domain")
async def add_never_log(body: NeverLogIn, session: Session) -> NeverLogOut:
    """`hr@example.com` (one address) or `example.com` (the domain and its subdomains); stored
    lower-case. Mail from or to it is dropped unstored from now on (mail stored before stays).
    `409` when it is listed already, `422` when it is neither an address nor a domain."""
    return _out(await never_log.add_rule(session, body.pattern))


@router.delete("/{rule_id}", status_code=204, summary="Remove a never-log rule")
async def delete_never_log(rule_id: PathId, session: Session) -> Response:
    await never_log.delete_rule(session, rule_id)
    return Response(status_code=204)
