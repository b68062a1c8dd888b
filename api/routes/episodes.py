"""Episodes: listing and detail (admin key), late feedback (inference key).

``GET /v1/episodes`` filters by status, tool, adapter, task, failure code and a ``since``/``until`` window and
pages with an opaque ``next_cursor`` (keyset pagination in ``store.episodes``: no row repeated or
skipped while new episodes arrive). ``GET /v1/episodes/{id}`` adds the request, attempts,
reflections and verdicts. ``POST /v1/episodes/{id}/feedback`` records a client's late verdict: only
the key that created the episode (or an admin key) may give it, and an episode still in the
writer's queue is waited for briefly, so feedback sent right after the answer is not lost.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from api.auth import Principal, require_admin, require_inference
from api.errors import bad_request, json_response, not_found
from api.state import get_state, run_db
from api.validate import is_valid_id, parse_model, read_body, utc
from api.views import episode_detail, episode_summary
from store.episodes import InvalidCursor, get_episode, list_episodes, set_feedback
from store.models import Episode
from store.records import EPISODE_STATUSES
from tools.verify import FAILURE_CODES, normalize_expected

router = APIRouter(tags=["inspection"], dependencies=[Depends(require_admin)])
feedback_router = APIRouter(tags=["inference"], dependencies=[Depends(require_inference)])

MAX_ID_CHARS = 36
FLUSH_WAIT_S = 5.0


@router.get("/v1/episodes", response_model=None, summary="List episodes, newest first")
async def list_episodes_route(
    request: Request,
    status: str | None = Query(None, description=f"One of {', '.join(EPISODE_STATUSES)}."),
    tool: str | None = Query(None, description="Episodes that offered, called or expected this tool."),
    adapter: str | None = Query(None, description="Episodes served by this adapter."),
    task: str | None = Query(None, description="Episodes with this rrr.task tag."),
    failure: str | None = Query(
        None, description=f"Episodes whose first failed attempt has this failure code: {', '.join(FAILURE_CODES)}."
    ),
    since: datetime | None = Query(None, description="created_at >= since (ISO 8601; UTC if no offset)."),
    until: datetime | None = Query(None, description="created_at < until (ISO 8601; UTC if no offset)."),
    limit: int = Query(50, ge=1, le=1000),
    cursor: str | None = Query(None, description="next_cursor of the previous page."),
) -> Response:
    if status is not None and status not in EPISODE_STATUSES:
        raise bad_request(f"status must be one of {', '.join(EPISODE_STATUSES)}.", "status")
    if failure is not None and failure not in FAILURE_CODES:
        raise bad_request(f"failure must be one of {', '.join(FAILURE_CODES)}.", "failure")
    since, until = utc(since, "since"), utc(until, "until")

    def work(session: Session) -> dict[str, Any]:
        try:
            page = list_episodes(
                session,
                status=status,
                tool=tool,
                adapter=adapter,
                task=task,
                failure=failure,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
        except InvalidCursor as exc:
            raise bad_request(str(exc), "cursor") from None
        return {"object": "list", "data": [episode_summary(e) for e in page.items], "next_cursor": page.next_cursor}

    return json_response(await run_db(get_state(request), work))


@router.get("/v1/episodes/{episode_id}", response_model=None, summary="One episode with attempts and verdicts")
async def get_episode_route(request: Request, episode_id: str) -> Response:
    def work(session: Session) -> dict[str, Any] | None:
        episode = get_episode(session, episode_id) if is_valid_id(episode_id, MAX_ID_CHARS) else None
        return episode_detail(episode) if episode is not None else None

    detail = await run_db(get_state(request), work)
    if detail is None:
        raise not_found(f"No episode {episode_id[:MAX_ID_CHARS]!r}.", "episode_id")
    return json_response(detail)


class FeedbackIn(BaseModel):
    """A client's late verdict on an episode."""

    model_config = ConfigDict(extra="forbid")

    ok: bool = Field(description="Whether the answer turned out right.")
    reason: str | None = Field(None, max_length=2000, description="What was wrong (or right).")
    expected_tool_calls: list[Any] | None = Field(
        None, description="The correct calls; they become the episode's reference answer and make it trainable."
    )


FEEDBACK_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": FeedbackIn.model_json_schema()}}}
}


@feedback_router.post(
    "/v1/episodes/{episode_id}/feedback",
    openapi_extra=FEEDBACK_OPENAPI,
    response_model=None,
    summary="Give late feedback on an episode",
)
async def give_feedback(request: Request, episode_id: str) -> Response:
    state = get_state(request)
    principal: Principal = request.state.principal
    feedback: FeedbackIn = parse_model(await read_body(request, state.settings.max_admin_body_bytes), FeedbackIn)
    if feedback.expected_tool_calls is not None:
        try:
            normalize_expected(feedback.expected_tool_calls)
        except (ValueError, TypeError) as exc:
            raise bad_request(f"expected_tool_calls: {exc}.", "expected_tool_calls") from None
    expected = feedback.expected_tool_calls

    def work(session: Session) -> dict[str, Any] | None:
        episode = session.get(Episode, episode_id)
        if episode is None or (not principal.admin and episode.client_key_id != principal.key_id):
            return None  # someone else's episode is as unknown as a missing one
        updated = set_feedback(session, episode_id, ok=feedback.ok, reason=feedback.reason, expected_calls=expected)
        return episode_summary(updated) if updated is not None else None

    if not is_valid_id(episode_id, MAX_ID_CHARS):
        raise not_found("No such episode.", "episode_id")
    result = await run_db(state, work)
    if result is None and episode_id in state.recent:
        await run_in_threadpool(state.writer.flush, FLUSH_WAIT_S)  # the episode may still be queued
        result = await run_db(state, work)
    if result is None:
        raise not_found(f"No episode {episode_id!r} that this key may judge.", "episode_id")
    return json_response(result)
