"""Activities: calls, e-mails, meetings, tasks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import Field

from mailsvc.api import schemas as s
from mailsvc.api import views
from mailsvc.api.deps import Caller, Session
from mailsvc.api.listing import equality_filters, page
from mailsvc.api.routes.common import PathId, mine
from mailsvc.crmstore import services
from mailsvc.crmstore.base import utcnow
from mailsvc.crmstore.models import Activity, ActivityType
from mailsvc.crmstore.services.common import get_or_404

router = APIRouter(tags=["activities"])


class ActivityQuery(s.ListQuery):
    mine: bool | None = Field(None, description="Only the caller's own records (owner = me).")
    type: ActivityType | None = None
    done: bool | None = None
    overdue: bool | None = None
    owner_id: s.Id | None = None
    opportunity_id: s.Id | None = None
    ticket_id: s.Id | None = None
    account_id: s.Id | None = None
    contact_id: s.Id | None = None
    inbox_lead_id: s.Id | None = None
    due_from: s.When | None = None
    due_to: s.When | None = None


@router.get("/activities")
async def list_activities(
    query: Annotated[ActivityQuery, Query()], session: Session, caller: Caller
) -> s.Page[s.ActivityOut]:
    now = utcnow()
    conditions = equality_filters(Activity, query, skip=("overdue",))
    conditions += mine(Activity, query, caller)
    if query.overdue is not None:
        late = Activity.done.is_(False) & (Activity.due_at < now)
        conditions.append(late if query.overdue else ~late | Activity.due_at.is_(None))
    if query.due_from:
        conditions.append(Activity.due_at >= query.due_from)
    if query.due_to:
        conditions.append(Activity.due_at < query.due_to)
    rows, total = await page(session, Activity, query, conditions=conditions,
                             search=(Activity.subject, Activity.notes),
                             sorts=("id", "due_at", "created_at", "subject"))
    return s.Page(items=[views.activity(r, now) for r in rows], total=total, limit=query.limit,
                  offset=query.offset)


@router.post("/activities", status_code=201)
async def create_activity(body: s.ActivityIn, session: Session) -> s.ActivityOut:
    data = body.model_dump()
    activity = await services.create_activity(session, data.pop("type"), data.pop("subject"),
                                              **data)
    return views.activity(activity)


@router.get("/activities/{activity_id}")
async def get_activity(activity_id: PathId, session: Session) -> s.ActivityOut:
    return views.activity(await get_or_404(session, Activity, activity_id))


@router.patch("/activities/{activity_id}")
async def update_activity(
    activity_id: PathId, body: s.ActivityPatch, session: Session
) -> s.ActivityOut:
    changes = body.model_dump(exclude_unset=True)
    return views.activity(await services.update_activity(session, activity_id, changes))


@router.delete("/activities/{activity_id}", status_code=204,
               summary="Delete an activity entered by hand")
async def delete_activity(activity_id: PathId, session: Session) -> Response:
    await services.delete_activity(session, activity_id)
    return Response(status_code=204)


@router.post("/activities/{activity_id}/complete", summary="Mark as done")
async def complete(activity_id: PathId, session: Session) -> s.ActivityOut:
    return views.activity(await services.complete_activity(session, activity_id))
