"""OpenAI wire shapes of rrr's answers: ``chat.completion`` bodies and ``chat.completion.chunk`` SSE frames.

The chat route builds its responses here so the official ``openai`` SDK parses them (contract
§3.3 and §3.6): the assistant message is rebuilt from the engine's (``content`` a string or null,
``tool_calls`` with string arguments, omitted when empty), ``finish_reason`` is one OpenAI knows,
usage is summed over every model call of the episode, and rrr's additions ride under ``rrr``.
Streams carry the already verified answer: a role chunk, content, per tool call a header chunk
(index, id, type, name) then its arguments, the finish chunk (with ``rrr``), an optional usage
chunk and ``data: [DONE]``. An error after the 200 is one ``data: {"error": ...}`` frame and no
``[DONE]``. The Responses API's ``response`` objects and their SSE events are built here too
(``response_body``, ``response_events``). This module does no I/O.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

from agent.loop import Outcome

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (strict JSON has no NaN/Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any) -> bytes:
    """Strict JSON bytes; NaN/Infinity become null and lone surrogates are escaped, never an error."""
    compact = (",", ":")
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=compact, default=str)
    except ValueError:
        value = _finite(value)
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=compact, default=str)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from the engine: \u-escape instead
        return json.dumps(value, ensure_ascii=True, allow_nan=False, separators=compact, default=str).encode()


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + dumps(payload) + b"\n\n"


def _arguments(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "{}"
    try:
        return json.dumps(_finite(value), ensure_ascii=False, allow_nan=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def wire_tool_calls(raw: Any) -> list[dict[str, Any]]:
    """Tool calls in OpenAI's exact shape, whatever the engine sent (ids and strings filled in)."""
    if not isinstance(raw, list):
        return []
    calls = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        inner = item.get("function")
        fn: dict[str, Any] = inner if isinstance(inner, dict) else item
        name = fn.get("name")
        call_id = item.get("id")
        calls.append(
            {
                "id": call_id if isinstance(call_id, str) and call_id else "call_" + uuid.uuid4().hex[:24],
                "type": "function",
                "function": {
                    "name": name if isinstance(name, str) else str(name or ""),
                    "arguments": _arguments(fn.get("arguments")),
                },
            }
        )
    return calls


def wire_message(message: dict[str, Any]) -> dict[str, Any]:
    """The assistant message as OpenAI sends it: role, content (string or null), tool_calls if any."""
    content = message.get("content")
    out: dict[str, Any] = {"role": "assistant", "content": content if isinstance(content, str) else None}
    calls = wire_tool_calls(message.get("tool_calls"))
    if calls:
        out["tool_calls"] = calls
    return out


def wire_finish_reason(finish_reason: Any, message: dict[str, Any]) -> str:
    if isinstance(finish_reason, str) and finish_reason in FINISH_REASONS:
        return finish_reason
    return "tool_calls" if message.get("tool_calls") else "stop"


def usage(outcome: Outcome) -> dict[str, int]:
    """Token usage summed over every model call of the episode (answer, reflection, retry)."""
    prompt = sum(max(0, a.prompt_tokens) for a in outcome.attempts)
    completion = sum(max(0, a.completion_tokens) for a in outcome.attempts)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_id(episode_id: str) -> str:
    return "chatcmpl-" + episode_id.replace("-", "")


def completion_body(outcome: Outcome, *, model: str, created: int, rrr: dict[str, Any]) -> dict[str, Any]:
    """The ``chat.completion`` body for an outcome that has an answer."""
    assert outcome.answer is not None
    message = wire_message(outcome.answer.message)
    return {
        "id": completion_id(outcome.episode_id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": wire_finish_reason(outcome.answer.finish_reason, message),
            }
        ],
        "usage": usage(outcome),
        "system_fingerprint": None,
        "rrr": rrr,
    }


class ChunkWriter:
    """The SSE frames of one streamed answer."""

    def __init__(self, episode_id: str, model: str, created: int) -> None:
        self.id = completion_id(episode_id)
        self.model = model
        self.created = created

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
                **extra,
            }
        )

    def role(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def answer(self, outcome: Outcome, *, rrr: dict[str, Any], include_usage: bool) -> list[bytes]:
        """Content, tool calls, finish (carrying ``rrr``), usage if asked, and ``[DONE]``."""
        assert outcome.answer is not None
        message = wire_message(outcome.answer.message)
        frames: list[bytes] = []
        if message["content"]:
            frames.append(self._chunk({"content": message["content"]}))
        for index, call in enumerate(message.get("tool_calls", [])):
            fn = call["function"]
            frames.append(
                self._chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": fn["name"], "arguments": ""},
                            }
                        ]
                    }
                )
            )
            frames.append(self._chunk({"tool_calls": [{"index": index, "function": {"arguments": fn["arguments"]}}]}))
        frames.append(self._chunk({}, wire_finish_reason(outcome.answer.finish_reason, message), rrr=rrr))
        if include_usage:
            frames.append(
                sse(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage(outcome),
                    }
                )
            )
        frames.append(DONE)
        return frames


def error_frame(body: dict[str, Any]) -> bytes:
    """An error after the 200 was sent (the stream then closes without ``[DONE]``)."""
    return sse(body)


# --- The Responses API: ``response`` objects and their SSE events. ---


def response_id(episode_id: str) -> str:
    """``resp_`` + the episode id's hex digits: ``previous_response_id`` names the stored episode."""
    return "resp_" + episode_id.replace("-", "")


def response_output(outcome: Outcome) -> list[dict[str, Any]]:
    """The answer as Responses output items: a ``message`` (``output_text``) and/or ``function_call`` items."""
    assert outcome.answer is not None
    message = wire_message(outcome.answer.message)
    hexid = outcome.episode_id.replace("-", "")
    items: list[dict[str, Any]] = []
    if message["content"]:
        text = {"type": "output_text", "text": message["content"], "annotations": [], "logprobs": []}
        items.append(
            {"type": "message", "id": f"msg_{hexid}", "status": "completed", "role": "assistant", "content": [text]}
        )
    for index, call in enumerate(message.get("tool_calls", [])):
        fn = call["function"]
        items.append(
            {
                "type": "function_call",
                "id": f"fc_{hexid}_{index}",
                "call_id": call["id"],
                "name": fn["name"],
                "arguments": fn["arguments"],
                "status": "completed",
            }
        )
    return items


def response_body(
    outcome: Outcome, *, model: str, created: int, rrr: dict[str, Any], echo: dict[str, Any], response: str
) -> dict[str, Any]:
    """The ``response`` object for an outcome that has an answer; ``echo`` holds the request fields it repeats
    (instructions, tools, tool_choice, parallel_tool_calls, temperature, top_p, max_output_tokens, store, ...)."""
    assert outcome.answer is not None
    counts = usage(outcome)
    truncated = outcome.answer.finish_reason == "length"
    return {
        "id": response,
        "object": "response",
        "created_at": created,
        "status": "incomplete" if truncated else "completed",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "model": model,
        "output": response_output(outcome),
        **echo,
        "usage": {
            "input_tokens": counts["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": counts["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": counts["total_tokens"],
        },
        "rrr": rrr,
    }


def response_events(body: dict[str, Any]) -> list[bytes]:
    """A finished ``response`` as the Responses SSE event stream, each event with its ``sequence_number``:
    created, in_progress, per output item added → text or argument delta/done → item done, completed."""
    frames: list[bytes] = []

    def event(kind: str, **fields: Any) -> None:
        payload = {"type": kind, "sequence_number": len(frames), **fields}
        frames.append(f"event: {kind}\n".encode() + sse(payload))

    pending = {k: v for k, v in body.items() if k != "rrr"}  # the verdict rides in the last event only
    pending.update(status="in_progress", output=[], usage=None, incomplete_details=None)
    event("response.created", response=pending)
    event("response.in_progress", response=pending)
    for index, item in enumerate(body["output"]):
        ids = {"output_index": index, "item_id": item["id"]}
        if item["type"] == "message":
            event(
                "response.output_item.added", output_index=index, item={**item, "status": "in_progress", "content": []}
            )
            for c_index, part in enumerate(item["content"]):
                at = {**ids, "content_index": c_index}
                event("response.content_part.added", **at, part={**part, "text": ""})
                event("response.output_text.delta", **at, delta=part["text"], logprobs=[])
                event("response.output_text.done", **at, text=part["text"], logprobs=[])
                event("response.content_part.done", **at, part=part)
        else:
            event(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            event("response.function_call_arguments.delta", **ids, delta=item["arguments"])
            event("response.function_call_arguments.done", **ids, arguments=item["arguments"], name=item["name"])
        event("response.output_item.done", output_index=index, item=item)
    event("response.incomplete" if body["status"] == "incomplete" else "response.completed", response=body)
    return frames


def response_error_event(body: dict[str, Any], error: dict[str, Any], sequence_number: int) -> bytes:
    """``response.failed`` after the 200 was sent: the engine failed before any answer."""
    inner = error.get("error", error)
    failed = {
        **body,
        "status": "failed",
        "output": [],
        "error": {"code": inner.get("code"), "message": inner.get("message")},
    }
    payload = {"type": "response.failed", "sequence_number": sequence_number, "response": failed}
    return b"event: response.failed\n" + sse(payload)
