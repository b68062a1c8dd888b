"""``GET /v1/stats`` (admin key): success rates overall, by adapter and by UTC day, and failure codes
overall, by tool, by adapter and by day (``store.stats``).

Rates use each episode's current status, so client feedback shows here. The writer's counters are
included so an operator sees at a glance whether episodes are being stored, spooled or dropped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.orm import Session
from starlette.responses import Response

from api.auth import require_admin
from api.errors import json_response
from api.state import get_state, run_db
from api.validate import utc
from store.stats import episode_stats, failure_stats

router = APIRouter(tags=["inspection"], dependencies=[Depends(require_admin)])


@router.get("/v1/stats", response_model=None, summary="Success rates by adapter and by day")
async def get_stats(
    request: Request,
    since: datetime | None = Query(None, description="created_at >= since (ISO 8601; UTC if no offset)."),
    until: datetime | None = Query(None, description="created_at < until (ISO 8601; UTC if no offset)."),
) -> Response:
    state = get_state(request)
    since, until = utc(since, "since"), utc(until, "until")

    def work(session: Session) -> dict[str, Any]:
        return {
            **episode_stats(session, since=since, until=until).to_dict(),
            "failures": failure_stats(session, since=since, until=until),
        }

    stats = await run_db(state, work)
    return json_response({"object": "stats", **stats, "writer": state.writer.stats()})
