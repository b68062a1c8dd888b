"""``POST /v1/chat/completions``: the request path of docs/design.md, steps 1-7, for one client request.

Order: key (router dependency) → body read with a cap → strict JSON → shape, limits and tool
schemas (``api.validate``) → model name resolved (unknown: 404) → the reflect/retry loop
(``agent.loop.run_episode``) on the engine pool → the episode handed to the writer and fsync'd to its
journal (R5: awaited, so no answered episode is lost to a crash) → the answer.
A rejection makes no model call; it is counted and, when cheap, stored as a ``rejected`` episode.

The loop runs as its own task, so an episode is completed and recorded even if the client goes
away, and shutdown can drain it. Non-streaming answers are ``chat.completion`` bodies with the
``x-rrr-verified`` header; with no answer at all (the engine failed before one), R1's statuses:
503 + ``Retry-After``, 504, 502; an engine 400/413/422 keeps its status with rrr's own message
(``engine_rejection``: never the engine's text, hosts, paths or ``param``). Streaming: if the loop
ends within ``stream_start_s`` the response is decided then (an error keeps its HTTP status, the
verdict header is set); otherwise the 200 and the role chunk go out at once, SSE comments keep the
connection alive, and the answer follows after verification — or an error frame and no ``[DONE]``
when the engine failed. The verdict of a stream always rides in the ``rrr`` object of its finish chunk. With
``rrr.include_attempts`` that object also lists every model call of the episode (``trace``: answer,
reflection, retry, each with its verdict), which is what ``rrr eval run`` scores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response, StreamingResponse

from agent.loop import Outcome, run_episode
from agent.policy import ALIAS, Resolved
from agent.record import outcome_to_record
from api.auth import Principal, require_inference
from api.errors import ApiError, error_body, json_response
from api.state import AppState, get_state
from api.validate import ChatInput, Rejection, parse_chat, parse_json, read_body
from api.wire import KEEPALIVE, ChunkWriter, completion_body, error_frame, wire_message
from engines.base import (
    ChatRequest,
    EngineError,
    EngineProtocolError,
    EngineRequestError,
    EngineTimeout,
    EngineUnavailable,
)
from engines.vllm import known_rejection
from store.records import EpisodeRecord

log = logging.getLogger(__name__)
router = APIRouter(tags=["inference"], dependencies=[Depends(require_inference)])

RETRY_AFTER_S = "1"
T = TypeVar("T")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]},
        "tool_calls": {"type": "array"},
        "tool_call_id": {"type": "string"},
    },
}
CHAT_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "model": {"type": "string", "description": "`rrr` (the active policy, default), the base model or an adapter."},
        "messages": {"type": "array", "items": _MESSAGE, "minItems": 1},
        "tools": {"type": "array", "items": {"type": "object"}, "description": "OpenAI function tools."},
        "tool_choice": {"anyOf": [{"type": "string", "enum": ["none", "auto", "required"]}, {"type": "object"}]},
        "parallel_tool_calls": {"type": "boolean"},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number"},
        "top_p": {"type": "number"},
        "seed": {"type": "integer"},
        "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "n": {"type": "integer", "enum": [1]},
        "rrr": {
            "type": "object",
            "description": "rrr's extension.",
            "additionalProperties": False,
            "properties": {
                "verifier": {"description": "schema (default), reference, execution, countdown or all."},
                "expected_tool_calls": {"type": "array", "description": "The reference answer."},
                "task": {"type": "string", "description": "A tag for inspection and statistics."},
                "max_retries": {"type": "integer", "minimum": 0},
                "include_attempts": {
                    "type": "boolean",
                    "description": "Add `rrr.trace`: every model call of the "
                    "episode (answer, reflection, retry) with its verdict.",
                },
            },
        },
    },
}
CHAT_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": CHAT_REQUEST_SCHEMA}}},
    "responses": {
        "200": {
            "description": "A `chat.completion` (or SSE `chat.completion.chunk` frames with "
            "`stream: true`); header `x-rrr-verified: true|false`."
        }
    },
}


# R14: what a client learns of an engine's 4xx. Nothing the engine wrote is copied: a fixed message per
# status, a reason only for vLLM's well-known messages (re-written from their numbers), and `param` only
# when it names a field of the chat request itself.
ENGINE_REJECTED = {
    400: "The model engine refused the request.",
    413: "The model engine refused the request as too large.",
    422: "The model engine could not process the request.",
}
REQUEST_FIELDS = frozenset(set(CHAT_REQUEST_SCHEMA["properties"]) - {"rrr"})


def engine_rejection(exc: EngineRequestError) -> ApiError:
    """The client's view of an engine 400/413/422: the engine's status, rrr's words."""
    fixed = ENGINE_REJECTED[exc.status]
    known = known_rejection(exc.message)
    if known is not None:
        reason, field = known
        return ApiError(exc.status, f"{fixed[:-1]}: {reason}.", param=field, code="engine_rejected_request")
    param = exc.param if isinstance(exc.param, str) and exc.param in REQUEST_FIELDS else None
    return ApiError(exc.status, fixed, param=param, code="engine_rejected_request")


def upstream_error(exc: EngineError, *, model: str, deadline_s: float) -> ApiError:
    """R1: what a client is told when the engine failed before any answer existed."""
    if isinstance(exc, EngineUnavailable):
        return ApiError(
            503,
            "The model engine is unavailable; retry shortly.",
            code="engine_unavailable",
            headers={"Retry-After": RETRY_AFTER_S},
        )
    if isinstance(exc, EngineTimeout):
        return ApiError(
            504,
            f"The model engine did not answer within the request deadline of {deadline_s:g}s.",
            code="engine_timeout",
        )
    if isinstance(exc, EngineProtocolError):
        return ApiError(502, "The model engine broke off its response.", code="engine_protocol_error")
    if isinstance(exc, EngineRequestError):
        if exc.status == 404:
            return ApiError(
                404, f"The model `{model}` is not available on the engine.", param="model", code="model_not_found"
            )
        if exc.status in ENGINE_REJECTED:
            return engine_rejection(exc)
        if exc.status == 503:
            return ApiError(
                503,
                "The model engine is overloaded or starting; retry shortly.",
                code="engine_unavailable",
                headers={"Retry-After": RETRY_AFTER_S},
            )
        return ApiError(502, f"The model engine failed (status {exc.status}).", code="engine_error")
    return ApiError(502, "The model engine failed.", code="engine_error")


def _trace(outcome: Outcome) -> list[dict[str, Any]]:
    """Every model call of the episode as the client may see it (``rrr.include_attempts``)."""
    return [
        {
            "index": a.index,
            "kind": a.kind,
            "message": wire_message(a.message),
            "finish_reason": a.finish_reason,
            "verdict": None
            if a.verdict is None
            else {"ok": a.verdict.ok, "reason": a.verdict.reason or None, "code": a.verdict.code},
        }
        for a in outcome.attempts
    ]


def rrr_info(outcome: Outcome, resolved: Resolved, *, trace: bool = False) -> dict[str, Any]:
    answer = outcome.answer
    verdict = answer.verdict if answer is not None else None
    info: dict[str, Any] = {
        "episode_id": outcome.episode_id,
        "verified": outcome.verified,
        "status": outcome.status,
        "attempts": len(outcome.attempts),
        "reason": verdict.reason if verdict is not None and not verdict.ok else None,
        "failure_code": verdict.code if verdict is not None and not verdict.ok else None,
        "adapter": resolved.adapter,
    }
    if outcome.error is not None:
        info["error"] = f"the engine failed during the loop ({type(outcome.error).__name__})"
    if trace:
        info["trace"] = _trace(outcome)
    return info


def _reject(state: AppState, principal: Principal, exc: ApiError, reason: str) -> None:
    state.metrics.rejected.labels(reason).inc()
    if state.settings.record_rejected:
        state.writer.submit(
            EpisodeRecord(status="rejected", client_key_id=principal.key_id, error=f"{exc.status}: {exc.message[:500]}")
        )


async def _run(
    state: AppState,
    chat: ChatInput,
    request: ChatRequest,
    resolved: Resolved,
    principal: Principal,
    episode_id: str,
    record: bool,
) -> Outcome:
    outcome = await run_episode(
        state.engine, request, chat.options, state.loop_config, tools=chat.specs, episode_id=episode_id
    )
    state.metrics.record_outcome(outcome)
    if not record:  # the Responses API's `store: false`: nothing of the episode is kept
        return outcome
    kept = outcome_to_record(outcome, request, chat.options, adapter=resolved.adapter, client_key_id=principal.key_id)
    state.recent.add(episode_id, principal.key_id)
    durable = state.writer.submit_durable(kept)
    await _until_durable(state, durable, episode_id)
    return outcome


async def _until_durable(state: AppState, durable: Future[bool], episode_id: str) -> None:
    """R5: the answer leaves only once its episode is fsync'd to the journal (a group commit shared with
    the requests that end meanwhile), at most ``writer_journal_wait_s``."""
    wait_s = state.settings.writer_journal_wait_s
    if wait_s <= 0:
        return
    try:
        if not await asyncio.wait_for(asyncio.wrap_future(durable), wait_s):
            log.warning("episode %s is not in the journal (refused or not writable); answering anyway", episode_id)
    except TimeoutError:
        log.warning("episode %s not journaled within %gs; answering anyway", episode_id, wait_s)


def ensure_open(state: AppState) -> None:
    if state.draining:
        raise ApiError(
            503,
            "rrr is shutting down; retry on another replica.",
            code="shutting_down",
            headers={"Retry-After": RETRY_AFTER_S},
        )


async def read_request(request: Request, state: AppState, principal: Principal) -> Any:
    """The body as strict JSON within the size and depth caps (a rejection is counted)."""
    try:
        return parse_json(await read_body(request, state.settings.max_body_bytes), state.settings.max_json_depth)
    except Rejection as exc:
        _reject(state, principal, exc, exc.reason)
        raise


def checked(state: AppState, principal: Principal, parse: Callable[[], T]) -> T:
    """``parse()``, its rejection counted (and recorded as a ``rejected`` episode when configured)."""
    try:
        return parse()
    except Rejection as exc:
        _reject(state, principal, exc, exc.reason)
        raise


@dataclass(frozen=True)
class Started:
    """An episode running as its own task (it completes and is recorded even if the client goes away)."""

    task: asyncio.Task[Outcome]
    resolved: Resolved
    episode_id: str
    model: str
    created: int


async def start_episode(state: AppState, principal: Principal, chat: ChatInput, *, record: bool = True) -> Started:
    """Resolve the model (unknown: 404) and start the reflect/retry loop; the one path of every inference route."""
    try:
        resolved = await state.models.resolve(chat.model)
    except ApiError as exc:
        if exc.status == 404:
            _reject(state, principal, exc, "model")
        raise
    engine_request = dataclasses.replace(chat.request, model=resolved.engine_model)
    episode_id = str(uuid.uuid4())
    task = state.track(
        asyncio.get_running_loop().create_task(
            _run(state, chat, engine_request, resolved, principal, episode_id, record)
        )
    )
    return Started(task, resolved, episode_id, chat.model or ALIAS, int(time.time()))


async def answered(state: AppState, started: Started) -> Outcome:
    """The outcome once the loop ended; R1's error when the engine failed before any answer."""
    outcome = await asyncio.shield(started.task)
    if outcome.answer is None:
        raise upstream_error(
            outcome.error or EngineError(), model=started.model, deadline_s=state.loop_config.deadline_s
        )
    return outcome


@router.post(
    "/v1/chat/completions", openapi_extra=CHAT_OPENAPI, response_model=None, summary="Create a verified chat completion"
)
async def create_chat_completion(request: Request) -> Response:
    """OpenAI's chat completions; tool calls are verified, reflected on and retried before the answer."""
    state = get_state(request)
    principal: Principal = request.state.principal
    ensure_open(state)
    body = await read_request(request, state, principal)
    chat = checked(state, principal, lambda: parse_chat(body, state.settings, state.policy))
    started = await start_episode(state, principal, chat)
    if chat.stream:
        return await _stream(
            state, started.task, chat, started.resolved, started.model, started.episode_id, started.created
        )
    outcome = await answered(state, started)
    rrr = rrr_info(outcome, started.resolved, trace=chat.include_attempts)
    body = completion_body(outcome, model=started.model, created=started.created, rrr=rrr)
    return json_response(body, headers=verdict_headers(outcome))


async def keepalive_until_done(task: asyncio.Task[Any], every_s: float) -> AsyncIterator[bytes]:
    """SSE keep-alive comments every ``every_s`` until ``task`` ends (chat and responses streams alike)."""
    while True:
        finished, _ = await asyncio.wait({task}, timeout=every_s)
        if finished:
            return
        yield KEEPALIVE


def verdict_headers(outcome: Outcome) -> dict[str, str]:
    return {"x-rrr-verified": "true" if outcome.verified else "false", "x-rrr-episode-id": outcome.episode_id}


async def _stream(
    state: AppState,
    task: asyncio.Task[Outcome],
    chat: ChatInput,
    resolved: Resolved,
    model: str,
    episode_id: str,
    created: int,
) -> Response:
    writer = ChunkWriter(episode_id, model, created)
    done, _ = await asyncio.wait({task}, timeout=state.settings.stream_start_s)
    if done:  # decided before anything was sent: errors keep their HTTP status
        outcome = task.result()
        if outcome.answer is None:
            raise upstream_error(outcome.error or EngineError(), model=model, deadline_s=state.loop_config.deadline_s)
        rrr = rrr_info(outcome, resolved, trace=chat.include_attempts)
        frames = [writer.role(), *writer.answer(outcome, rrr=rrr, include_usage=chat.include_usage)]
        return StreamingResponse(
            _frames(frames), media_type="text/event-stream", headers={**SSE_HEADERS, **verdict_headers(outcome)}
        )

    async def late() -> AsyncIterator[bytes]:
        yield writer.role()
        async for comment in keepalive_until_done(task, state.settings.stream_keepalive_s):
            yield comment
        try:
            outcome = task.result()
        except Exception:  # logged by the task's done callback
            state.metrics.stream_errors.inc()
            yield error_frame(error_body(500, "Internal error; it has been logged.", code="internal_error"))
            return
        if outcome.answer is None:
            error = upstream_error(outcome.error or EngineError(), model=model, deadline_s=state.loop_config.deadline_s)
            state.metrics.stream_errors.inc()
            yield error_frame(error.body())
            return  # no [DONE]: the client must not take this for a complete answer
        rrr = rrr_info(outcome, resolved, trace=chat.include_attempts)
        for frame in writer.answer(outcome, rrr=rrr, include_usage=chat.include_usage):
            yield frame

    return StreamingResponse(
        late(), media_type="text/event-stream", headers={**SSE_HEADERS, "x-rrr-episode-id": episode_id}
    )


async def _frames(frames: list[bytes]) -> AsyncIterator[bytes]:
    for frame in frames:
        yield frame
