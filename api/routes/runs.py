"""Training runs (admin key): list and read what the learner did (its metrics and gate decisions).

Runs are created by the learner (a separate process, never imported here; `rrr learn run` starts
one now). The API does not start, stop or watch training.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.orm import Session
from starlette.responses import Response

from api.auth import require_admin
from api.errors import bad_request, json_response, not_found
from api.state import get_state, run_db
from api.validate import is_valid_id
from api.views import run_view
from store.models import RUN_STATUSES
from store.runs import get_training_run, list_training_runs

router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)])


@router.get("/v1/training-runs", response_model=None, summary="List training runs, newest first")
async def list_runs(
    request: Request,
    status: str | None = Query(None, description=f"One of {', '.join(RUN_STATUSES)}."),
    limit: int = Query(50, ge=1, le=1000),
) -> Response:
    if status is not None and status not in RUN_STATUSES:
        raise bad_request(f"status must be one of {', '.join(RUN_STATUSES)}.", "status")

    def work(session: Session) -> list[dict[str, Any]]:
        return [run_view(run) for run in list_training_runs(session, status=status, limit=limit)]

    return json_response({"object": "list", "data": await run_db(get_state(request), work)})


@router.get("/v1/training-runs/{run_id}", response_model=None, summary="One training run")
async def get_run(request: Request, run_id: str) -> Response:
    def work(session: Session) -> dict[str, Any] | None:
        run = get_training_run(session, run_id) if is_valid_id(run_id) else None
        return run_view(run) if run is not None else None

    view = await run_db(get_state(request), work)
    if view is None:
        raise not_found(f"No training run {run_id[:36]!r}.", "run_id")
    return json_response(view)
