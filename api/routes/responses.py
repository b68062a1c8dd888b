"""``POST /v1/responses``: OpenAI's Responses API with function tools, on the chat route's one request path.

The body is checked and translated by ``api.validate.parse_responses`` into the same chat input
(``ChatRequest`` + ``TaskOptions``) that ``/v1/chat/completions`` runs: ``instructions`` become a system
message, ``input`` items (messages with text parts, ``function_call``, ``function_call_output``) chat
messages, flat function tools chat tools. Every other field is honoured or refused with a 400 naming it.
The episode then runs through ``api.routes.chat.start_episode`` (verify → reflect → retry → record) and
the answer comes back as a ``response`` object (``api.wire.response_body``) whose id is ``resp_`` + the
episode id: ``previous_response_id`` loads that stored episode (the same key's only) and prepends its
messages and answer to the new input. ``store: false`` records nothing, so no later request can refer to
it. Streaming sends the Responses events after verification, as chat streaming does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from agent.loop import Outcome
from api.auth import Principal, require_inference
from api.errors import ApiError, error_body, json_response
from api.routes.chat import (
    SSE_HEADERS,
    Started,
    answered,
    checked,
    ensure_open,
    keepalive_until_done,
    read_request,
    rrr_info,
    start_episode,
    upstream_error,
    verdict_headers,
)
from api.state import AppState, get_state, run_db
from api.validate import (
    ResponsesInput,
    episode_of_response,
    parse_responses,
    previous_response_id,
)
from api.wire import response_body, response_error_event, response_events, response_id, wire_tool_calls
from engines.base import EngineError
from store.episodes import get_episode

router = APIRouter(tags=["inference"], dependencies=[Depends(require_inference)])
FLUSH_WAIT_S = 5.0

RESPONSES_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["input"],
                    "description": "OpenAI's Responses request with function tools (see README, API).",
                }
            }
        },
    },
    "responses": {"200": {"description": "A `response` object (or its SSE events with `stream: true`)."}},
}


def _not_found(response: str) -> ApiError:
    return ApiError(
        400,
        f"Previous response with id {response[:100]!r} not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


def _episode_messages(episode: Any) -> list[dict[str, Any]] | None:
    """The stored episode's messages followed by its answer (the last answer or retry), as chat messages."""
    answers = [a for a in episode.attempts if a.kind in ("answer", "retry")]
    if episode.request_messages is None or not answers:
        return None
    last = answers[-1]
    message: dict[str, Any] = {"role": "assistant", "content": last.text}
    calls = wire_tool_calls(last.tool_calls)
    if calls:
        message["tool_calls"] = calls
    return [*episode.request_messages, message]


async def _previous(state: AppState, principal: Principal, response: str) -> list[dict[str, Any]]:
    """The conversation a ``previous_response_id`` names; another key's response is as unknown as a missing one."""
    episode_id = episode_of_response(response)
    if episode_id is None:
        raise _not_found(response)

    def work(session: Session) -> list[dict[str, Any]] | None:
        episode = get_episode(session, episode_id)
        if episode is None or episode.client_key_id != principal.key_id:
            return None
        return _episode_messages(episode)

    messages = await run_db(state, work)
    if messages is None and episode_id in state.recent:
        await run_in_threadpool(state.writer.flush, FLUSH_WAIT_S)  # answered, maybe still in the writer's queue
        messages = await run_db(state, work)
    if messages is None:
        raise _not_found(response)
    return messages


def _echo(ri: ResponsesInput) -> dict[str, Any]:
    request = ri.chat.request
    return {
        "instructions": ri.instructions,
        "tools": ri.tools,
        "tool_choice": ri.tool_choice,
        "parallel_tool_calls": request.parallel_tool_calls if request.parallel_tool_calls is not None else True,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_output_tokens": request.max_tokens,
        "previous_response_id": ri.previous_response_id,
        "store": ri.store,
        "metadata": ri.metadata,
        "truncation": "disabled",
        "text": {"format": {"type": "text"}},
    }


@router.post(
    "/v1/responses", openapi_extra=RESPONSES_OPENAPI, response_model=None, summary="Create a verified response"
)
async def create_response(request: Request) -> Response:
    """OpenAI's Responses API; function calls are verified, reflected on and retried before the answer."""
    state = get_state(request)
    principal: Principal = request.state.principal
    ensure_open(state)
    body = await read_request(request, state, principal)
    previous_id = checked(state, principal, lambda: previous_response_id(body))
    previous = await _previous(state, principal, previous_id) if previous_id is not None else None
    ri = checked(state, principal, lambda: parse_responses(body, state.settings, state.policy, previous))
    started = await start_episode(state, principal, ri.chat, record=ri.store)
    echo = _echo(ri)
    if ri.chat.stream:
        return await _stream(state, started, ri, echo)
    outcome = await answered(state, started)
    return json_response(_body(outcome, started, ri, echo), headers=verdict_headers(outcome))


def _body(outcome: Outcome, started: Started, ri: ResponsesInput, echo: dict[str, Any]) -> dict[str, Any]:
    rrr = rrr_info(outcome, started.resolved, trace=ri.chat.include_attempts)
    rid = response_id(started.episode_id)
    return response_body(outcome, model=started.model, created=started.created, rrr=rrr, echo=echo, response=rid)


def _skeleton(started: Started, echo: dict[str, Any]) -> dict[str, Any]:
    """The response before its answer (the first two events of a stream that starts before the loop ends)."""
    return {
        "id": response_id(started.episode_id),
        "object": "response",
        "created_at": started.created,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "model": started.model,
        "output": [],
        **echo,
        "usage": None,
    }


async def _stream(state: AppState, started: Started, ri: ResponsesInput, echo: dict[str, Any]) -> Response:
    task = started.task
    done, _ = await asyncio.wait({task}, timeout=state.settings.stream_start_s)
    if done:  # decided before anything was sent: errors keep their HTTP status
        outcome = await answered(state, started)
        frames = response_events(_body(outcome, started, ri, echo))
        return StreamingResponse(
            _frames(frames), media_type="text/event-stream", headers={**SSE_HEADERS, **verdict_headers(outcome)}
        )
    skeleton = _skeleton(started, echo)

    async def late() -> AsyncIterator[bytes]:
        head = response_events(skeleton)[:2]  # response.created, response.in_progress
        for frame in head:
            yield frame
        async for comment in keepalive_until_done(task, state.settings.stream_keepalive_s):
            yield comment
        try:
            outcome = task.result()
        except Exception:  # logged by the task's done callback
            state.metrics.stream_errors.inc()
            error = error_body(500, "Internal error; it has been logged.", code="internal_error")
            yield response_error_event(skeleton, error, len(head))
            return
        if outcome.answer is None:
            failure = upstream_error(
                outcome.error or EngineError(), model=started.model, deadline_s=state.loop_config.deadline_s
            )
            state.metrics.stream_errors.inc()
            yield response_error_event(skeleton, failure.body(), len(head))
            return
        for frame in response_events(_body(outcome, started, ri, echo))[len(head) :]:
            yield frame

    headers = {**SSE_HEADERS, "x-rrr-episode-id": started.episode_id}
    return StreamingResponse(late(), media_type="text/event-stream", headers=headers)


async def _frames(frames: list[bytes]) -> AsyncIterator[bytes]:
    for frame in frames:
        yield frame
