"""Privacy: erase a person's data (an administrator's task), and the audit trail of erasures."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Response
from pydantic import Field, model_validator
from sqlalchemy import func, select

from mailsvc.api import schemas as s
from mailsvc.api.deps import LinkingConfig, Session
from mailsvc.api.routes.common import Limit, Offset
from mailsvc.crmstore import privacy
from mailsvc.crmstore.models import Erasure

router = APIRouter(prefix="/privacy", tags=["privacy"])


class ErasureIn(s.In):
    """Name the person by exactly one of ``contact_id`` and ``address``."""

    contact_id: s.Id | None = None
    address: s.Str320 | None = Field(default=None, min_length=3)
    dry_run: bool = False

    @model_validator(mode="after")
    def _one_person(self) -> ErasureIn:
        if (self.contact_id is None) == (self.address is None):
            raise ValueError("give exactly one of contact_id and address")
        return self


class ErasureResult(s.Out):
    erasure_id: int | None
    dry_run: bool
    contact_ids: list[int]
    email_ids: list[int]
    inbox_lead_ids: list[int]
    ticket_ids: list[int]
    counts: dict[str, int]


class ErasureOut(s.Out):
    id: int
    created_at: datetime
    kind: str
    actor: str
    counts: dict[str, Any]


@router.post("/erasures", status_code=201, summary="Erase a person's personal data",
             responses={200: {"model": ErasureResult, "description": "dry run: the counts"}})
async def erase(body: ErasureIn, session: Session, linking: LinkingConfig,
                response: Response) -> ErasureResult:
    """Removes the person's mail content, contact data and what pending events say about
    them; leaves an audit entry and a `privacy.erased` event (docs/privacy.md). With
    `dry_run` nothing changes and the answer is 200 with the counts."""
    report = await privacy.erase(session, contact_id=body.contact_id, address=body.address,
                                 actor="api", dry_run=body.dry_run,
                                 protected=linking.intake_roles)
    if body.dry_run:
        response.status_code = 200
    return ErasureResult(**report.to_json())


@router.get("/erasures", summary="The audit trail of erasures and retention runs")
async def erasures(session: Session, limit: Limit = 50, offset: Offset = 0) -> s.Page[ErasureOut]:
    total = await session.scalar(select(func.count()).select_from(Erasure)) or 0
    rows = await session.scalars(select(Erasure).order_by(Erasure.id.desc())
                                 .limit(limit).offset(offset))
    return s.Page(items=[ErasureOut.model_validate(r) for r in rows], total=total, limit=limit,
                  offset=offset)
