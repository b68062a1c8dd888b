"""Training runs (admin key): list, read, and queue one for the learner.

``POST /v1/training-runs`` only writes a ``queued`` row; the learner (a separate process, never
imported here) picks it up. The API does not start, stop or watch training.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.responses import Response

from api.auth import require_admin
from api.errors import bad_request, json_response, not_found
from api.state import get_state, run_db
from api.validate import parse_model, read_body
from api.views import run_view
from store.models import RUN_STATUSES
from store.runs import create_training_run, get_training_run, list_training_runs

router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)])


class RunIn(BaseModel):
    """A training run to queue; ``config`` is passed to the learner as is."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] | None = Field(None, description="Learner options for this run (its defaults if absent).")


RUN_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": False, "content": {"application/json": {"schema": RunIn.model_json_schema()}}}
}


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


@router.post("/v1/training-runs", openapi_extra=RUN_OPENAPI, response_model=None, status_code=201,
             summary="Queue a training run for the learner")
async def create_run(request: Request) -> Response:
    state = get_state(request)
    body: RunIn = parse_model(await read_body(request, state.settings.max_admin_body_bytes), RunIn)

    def work(session: Session) -> dict[str, Any]:
        return run_view(create_training_run(session, config=body.config))

    return json_response(await run_db(state, work), status=201)


@router.get("/v1/training-runs/{run_id}", response_model=None, summary="One training run")
async def get_run(request: Request, run_id: str) -> Response:
    def work(session: Session) -> dict[str, Any] | None:
        run = get_training_run(session, run_id) if len(run_id) <= 36 else None
        return run_view(run) if run is not None else None

    view = await run_db(get_state(request), work)
    if view is None:
        raise not_found(f"No training run {run_id[:36]!r}.", "run_id")
    return json_response(view)
