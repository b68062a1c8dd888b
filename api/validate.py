"""Client input checked before any work (R10, R11): body size, JSON, shape, limits, tool schemas.

The chat route calls ``read_body`` (size capped while reading), ``parse_json`` (strict JSON,
nesting capped) and ``parse_chat`` (the request's shape, limits, tool schemas compiled safely by
``tools.schema``, the ``rrr`` extension; any other field is refused, never ignored). The Responses
route calls ``parse_responses``, which translates its body into a chat body and checks that with
``parse_chat``. Every rejection is an ``ApiError`` (400 or 413) whose
message says what to change; ``Rejection.reason`` names the limit for the metrics. Nothing here
calls a model, touches the database or resolves the model name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError

from agent.loop import TaskOptions
from api.errors import ApiError, bad_request
from api.settings import Settings
from engines.base import ChatRequest
from store.records import EPISODE_PURPOSES
from tools.schema import SchemaError, validate_tool_specs
from tools.spec import ToolSpec, canonical_json
from tools.verifiers.policy import VerifierPolicy
from tools.verify import VerifierSpec, normalize_expected, parse_tool_choice

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
RRR_FIELDS = ("verifier", "expected_tool_calls", "task", "max_retries", "purpose", "include_attempts")
# Sampling parameters passed through to the engine as they are (after a type check).
PASSTHROUGH_NUMBERS = {
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
    "repetition_penalty": (0.0, 10.0),
    "min_p": (0.0, 1.0),
}
# Chat fields rrr reads (the rest of ``parse_chat``); a field outside these is refused, never ignored.
CHAT_FIELDS = frozenset(
    {
        "model", "messages", "tools", "tool_choice", "parallel_tool_calls", "stream", "stream_options", "max_tokens",
        "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n", "top_k", "rrr", *PASSTHROUGH_NUMBERS,
    }
)  # fmt: skip
# Fields with no effect on the answer (identifiers and hints for OpenAI's own accounting): accepted as strings.
HINT_FIELDS = ("user", "safety_identifier", "prompt_cache_key")
# Fields accepted only at the value that asks for nothing rrr cannot do: name -> (accepted values, why not).
DEFAULT_ONLY: dict[str, tuple[tuple[Any, ...], str]] = {
    "logprobs": ((False,), "the engine's log probabilities are not returned by rrr"),
    "top_logprobs": ((0,), "the engine's log probabilities are not returned by rrr"),
    "logit_bias": (({},), "rrr does not pass logit biases to the engine"),
    "response_format": (({"type": "text"},), "rrr verifies tool calls; structured output formats are not supported"),
    "modalities": ((["text"],), "rrr answers in text only"),
    "service_tier": (("auto", "default"), "rrr has a single service tier"),
    "store": ((True,), "rrr records every chat completion as an episode (use /v1/responses for `store: false`)"),
}
MAX_MODEL_NAME = 200
MAX_TASK_CHARS = 200
MAX_STOP = 16


class Rejection(ApiError):
    """A request refused by a limit or a shape check; ``reason`` labels the metric."""

    def __init__(self, status: int, message: str, reason: str, param: str | None = None) -> None:
        super().__init__(status, message, param=param, code="request_too_large" if status == 413 else "invalid_request")
        self.reason = reason


def _reject(message: str, reason: str, param: str | None = None) -> Rejection:
    return Rejection(400, message, reason, param)


@dataclass(frozen=True)
class ChatInput:
    """A validated chat-completion request (``request.model`` is set once the model is resolved)."""

    model: str | None
    request: ChatRequest
    specs: list[ToolSpec]
    options: TaskOptions
    stream: bool
    include_usage: bool
    include_attempts: bool = False
    """``rrr.include_attempts``: the answer carries every model call of the episode (``rrr.trace``)."""


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``cap`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise _reject("Invalid Content-Length header.", "content_length") from None
        if size > cap:
            raise Rejection(413, f"The request body is {size} bytes; the limit is {cap} bytes.", "body_size")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > cap:
            raise Rejection(413, f"The request body exceeds the limit of {cap} bytes.", "body_size")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in item)
    return False


def parse_json(raw: bytes, max_depth: int) -> Any:
    """Strict JSON (no NaN/Infinity), nested at most ``max_depth`` levels; 400 otherwise."""
    if not raw.strip():
        raise _reject("The request body is empty; send a JSON object.", "json")
    try:
        value = json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        raise _reject(f"The request JSON is nested more than {max_depth} levels deep.", "json_depth") from None
    except (ValueError, UnicodeDecodeError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise _reject(f"The request body is not valid JSON: {detail[:200]}.", "json") from None
    if _depth_exceeds(value, max_depth):
        raise _reject(f"The request JSON is nested more than {max_depth} levels deep.", "json_depth")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise _reject(f"`{name}` must be a number.", "shape", name)
    if not low <= value <= high:
        raise _reject(f"`{name}` must be between {low:g} and {high:g}.", "shape", name)
    return float(value)


def _messages(body: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _reject("`messages` must be a non-empty array of message objects.", "shape", "messages")
    if len(messages) > limit:
        raise _reject(f"{len(messages)} messages; the limit is {limit}.", "messages", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _reject(f"messages[{index}] must be an object.", "shape", "messages")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise _reject(f"messages[{index}].role must be one of {', '.join(sorted(ROLES))}.", "shape", "messages")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _reject(
                f"messages[{index}].content must be a string, an array of parts or null.", "shape", "messages"
            )
        calls = message.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise _reject(f"messages[{index}].tool_calls must be an array.", "shape", "messages")
    return messages


def _tools(body: dict[str, Any], settings: Settings) -> tuple[list[dict[str, Any]] | None, list[ToolSpec]]:
    tools = body.get("tools")
    if tools is None:
        return None, []
    if not isinstance(tools, list):
        raise _reject("`tools` must be an array of function tools.", "shape", "tools")
    if not tools:
        raise _reject(
            "`tools` must not be an empty array. Either provide at least one tool or omit the field.", "shape", "tools"
        )
    if len(tools) > settings.max_tools:
        raise _reject(f"{len(tools)} tools; the limit is {settings.max_tools}.", "tools", "tools")
    specs: list[ToolSpec] = []
    for index, tool in enumerate(tools):
        try:
            spec = ToolSpec.from_openai(tool)
        except (ValueError, TypeError) as exc:
            raise _reject(f"tools[{index}]: {exc}.", "shape", "tools") from None
        if _depth_exceeds(spec.parameters, settings.max_schema_depth):
            raise _reject(
                f"tool {spec.name!r}: parameters schema is nested more than {settings.max_schema_depth} levels deep.",
                "schema_depth",
                "tools",
            )
        size = len(canonical_json(spec.parameters).encode("utf-8", "surrogatepass"))
        if size > settings.max_schema_bytes:
            raise _reject(
                f"tool {spec.name!r}: parameters schema is {size} bytes; the limit is {settings.max_schema_bytes}.",
                "schema_size",
                "tools",
            )
        specs.append(spec)
    try:
        validate_tool_specs(specs)
    except (SchemaError, ValueError, TypeError) as exc:
        raise _reject(str(exc), "schema", "tools") from None
    return tools, specs


def _task_options(body: dict[str, Any], settings: Settings, policy: VerifierPolicy, offered: list[str]) -> TaskOptions:
    """How the request is judged: the operator's policy for the tools it offers, plus what the
    client's ``rrr`` extension adds (never removing a check of the policy)."""
    base = policy.spec_for(offered)
    ext = body.get("rrr")
    if ext is None:
        return TaskOptions(verifier=base, context=policy.context)
    if not isinstance(ext, dict):
        raise _reject(f"`rrr` must be an object with {', '.join(RRR_FIELDS[:-1])} or {RRR_FIELDS[-1]}.", "rrr", "rrr")
    unknown = sorted(set(ext) - set(RRR_FIELDS))
    if unknown:
        raise _reject(f"`rrr` does not take {', '.join(unknown)} (it takes {', '.join(RRR_FIELDS)}).", "rrr", "rrr")
    verifier_raw = ext.get("verifier")
    try:
        client = VerifierSpec.parse(verifier_raw) if verifier_raw is not None else None
        verifier = policy.with_client(base, client)
    except (ValueError, TypeError) as exc:
        raise _reject(f"rrr.verifier: {exc}.", "rrr", "rrr.verifier") from None
    expected = ext.get("expected_tool_calls")
    if expected is not None:
        try:
            normalize_expected(expected)
        except (ValueError, TypeError) as exc:
            raise _reject(f"rrr.expected_tool_calls: {exc}.", "rrr", "rrr.expected_tool_calls") from None
    if verifier.needs_reference and expected is None:
        raise _reject(
            "rrr.verifier 'reference' needs rrr.expected_tool_calls (the reference answer).",
            "rrr",
            "rrr.expected_tool_calls",
        )
    task = ext.get("task")
    if task is not None and (not isinstance(task, str) or not task or len(task) > MAX_TASK_CHARS):
        raise _reject(f"rrr.task must be a non-empty string of at most {MAX_TASK_CHARS} characters.", "rrr", "rrr.task")
    retries = ext.get("max_retries", 1)
    if not _is_int(retries) or not 0 <= retries <= settings.max_client_retries:
        raise _reject(
            f"rrr.max_retries must be an integer from 0 to {settings.max_client_retries}.", "rrr", "rrr.max_retries"
        )
    answers = (min(settings.max_calls, 1 + 2 * retries) + 1) // 2
    client_cost = client.cost() if client is not None else 0  # the operator's own checks are not charged
    cost = client_cost * answers
    if cost > settings.max_verifier_cost:
        raise _reject(
            f"rrr.verifier costs {cost} ({client_cost} checks x {answers} answers to judge); the limit is "
            f"{settings.max_verifier_cost}. Use fewer checks in the verifier or fewer retries.",
            "verifier_cost",
            "rrr.verifier",
        )
    purpose = ext.get("purpose", "traffic")
    if purpose not in EPISODE_PURPOSES:
        raise _reject(
            f"rrr.purpose must be one of {', '.join(EPISODE_PURPOSES)} (eval: never used for training).",
            "rrr",
            "rrr.purpose",
        )
    return TaskOptions(
        verifier=verifier, expected=expected, task=task, max_retries=retries, purpose=purpose, context=policy.context
    )


def _refuse_unsupported(body: dict[str, Any], known: Any, default_only: dict[str, Any], hints: Any = ()) -> None:
    """Every field of the body is honoured (``known``; ``hints``: short strings that change no answer;
    ``default_only``: accepted at their harmless values) or refused with a 400 naming it."""
    for name, value in body.items():
        if name in known or value is None:
            continue
        if name in hints:
            if not isinstance(value, str) or len(value) > 512:
                raise _reject(f"`{name}` must be a string of at most 512 characters.", "shape", name)
            continue
        if name in default_only:
            allowed, why = default_only[name]
            if any(type(value) is type(ok) and value == ok for ok in allowed):
                continue
            raise _reject(f"`{name}` is not supported: {why}.", "unsupported", name)
        raise _reject(f"`{name}` is not supported by rrr; remove it from the request.", "unsupported", name)


def _include_attempts(body: dict[str, Any]) -> bool:
    ext = body.get("rrr")
    value = ext.get("include_attempts", False) if isinstance(ext, dict) else False
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _reject("rrr.include_attempts must be a boolean.", "rrr", "rrr.include_attempts")
    return value


def _max_tokens(body: dict[str, Any], cap: int) -> int | None:
    chosen: int | None = None
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise _reject(f"`{name}` must be a positive integer.", "shape", name)
        if value > cap:
            raise _reject(f"`{name}` is {value}; the limit is {cap}.", "max_tokens", name)
        chosen = value if chosen is None else min(chosen, value)
    return chosen


def _stop(body: dict[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and len(stop) <= MAX_STOP and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise _reject(f"`stop` must be a string or an array of at most {MAX_STOP} strings.", "shape", "stop")


# Complexity: one check per field of the chat body, in the order OpenAI documents them.
def parse_chat(body: Any, settings: Settings, policy: VerifierPolicy | None = None) -> ChatInput:  # noqa: C901
    """Check a chat-completion body against the shape and the limits; raise Rejection if it fails."""
    if not isinstance(body, dict):
        raise _reject("The request body must be a JSON object.", "shape")
    _refuse_unsupported(body, CHAT_FIELDS, DEFAULT_ONLY, HINT_FIELDS)
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or len(model) > MAX_MODEL_NAME):
        raise _reject("`model` must be a model name (see GET /v1/models).", "shape", "model")
    n = body.get("n")
    if n is not None and not (_is_int(n) and n == 1):
        raise _reject("Only `n` = 1 is supported.", "n", "n")
    messages = _messages(body, settings.max_messages)
    tools, specs = _tools(body, settings)
    tool_choice = body.get("tool_choice")
    if tool_choice is not None:
        if tools is None and tool_choice != "none":
            raise _reject("When using `tool_choice`, `tools` must be set.", "shape", "tool_choice")
        try:
            parse_tool_choice(tool_choice, specs)
        except (ValueError, TypeError) as exc:
            raise _reject(str(exc), "shape", "tool_choice") from None
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _reject("`stream` must be a boolean.", "shape", "stream")
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise _reject("`stream_options` must be an object.", "shape", "stream_options")
        include_usage = stream_options.get("include_usage") is True
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _reject("`parallel_tool_calls` must be a boolean.", "shape", "parallel_tool_calls")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not -(2**63) <= seed < 2**63):
        raise _reject("`seed` must be an integer that fits in 64 bits.", "shape", "seed")
    extra: dict[str, Any] = {}
    for name, (low, high) in PASSTHROUGH_NUMBERS.items():
        value = _number(body, name, low, high)
        if value is not None:
            extra[name] = value
    top_k = body.get("top_k")
    if top_k is not None:
        if not _is_int(top_k) or top_k < -1:
            raise _reject("`top_k` must be an integer (-1 or 0 for no limit).", "shape", "top_k")
        extra["top_k"] = top_k
    request = ChatRequest(
        messages=messages,
        tools=tools,
        tool_choice=tool_choice,
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0),
        max_tokens=_max_tokens(body, settings.max_tokens_cap) or settings.max_tokens_cap,
        seed=seed,
        stop=_stop(body),
        parallel_tool_calls=parallel,
        extra=extra,
    )
    return ChatInput(
        model=model or None,
        request=request,
        specs=specs,
        options=_task_options(body, settings, policy or VerifierPolicy(), [spec.name for spec in specs]),
        stream=stream,
        include_usage=include_usage,
        include_attempts=_include_attempts(body),
    )


def parse_model(raw: bytes, model: type[BaseModel]) -> Any:
    """A small admin/feedback body parsed from bytes; the first problem becomes a 400 naming the field."""
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        errors = exc.errors()
        loc = ".".join(str(p) for p in errors[0]["loc"]) if errors else None
        message = errors[0]["msg"] if errors else "invalid"
        raise bad_request(f"Invalid request body{f' ({loc})' if loc else ''}: {message}.", loc or None) from None


def utc(stamp: datetime | None, param: str = "since") -> datetime | None:
    """A query timestamp in UTC (no offset: taken as UTC). One that has no UTC time in the calendar
    (9999-12-31T23:59:59-14:00, 0001-01-01T00:00:00+14:00) is a 400 naming `param`, not a 500."""
    if stamp is None:
        return None
    if stamp.tzinfo is None:
        return stamp.replace(tzinfo=UTC)
    try:
        return stamp.astimezone(UTC)
    except (OverflowError, ValueError):
        raise bad_request(f"{param} is outside the range of UTC timestamps (years 1 to 9999).", param) from None


def is_valid_id(value: str, max_chars: int = 36) -> bool:
    """Whether a path id can name a stored row (ids are UUIDs): short, printable, no NUL. Anything
    else is unknown (404) without asking the database, which refuses a NUL in a query on PostgreSQL."""
    return 0 < len(value) <= max_chars and value.isprintable()


# --- The Responses API (``POST /v1/responses``): translated into a chat body, then checked by ``parse_chat``. ---

RESPONSES_FIELDS = frozenset(
    {
        "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "max_output_tokens",
        "temperature", "top_p", "stream", "store", "previous_response_id", "metadata", "rrr", *HINT_FIELDS,
    }
)  # fmt: skip
RESPONSES_DEFAULT_ONLY: dict[str, tuple[tuple[Any, ...], str]] = {
    "truncation": (("disabled",), "rrr never truncates the conversation"),
    "include": (([],), "rrr has no extra output data to include"),
    "background": ((False,), "rrr answers in the foreground only"),
    "reasoning": (({},), "rrr does not configure reasoning"),
    "text": (
        ({"format": {"type": "text"}}, {}),
        "rrr verifies tool calls; structured output formats are not supported",
    ),
    "service_tier": (("auto", "default"), "rrr has a single service tier"),
    "top_logprobs": ((0,), "the engine's log probabilities are not returned by rrr"),
}
# A chat field named in a rejection, as the Responses request calls it.
_RESPONSES_PARAMS = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
}
RESPONSE_ID_PREFIX = "resp_"
MAX_METADATA = 16


@dataclass(frozen=True)
class ResponsesInput:
    """A validated Responses request: the chat input it runs as, and what its answer echoes."""

    chat: ChatInput
    store: bool
    instructions: str | None
    tools: list[dict[str, Any]]
    tool_choice: Any
    metadata: dict[str, str]
    previous_response_id: str | None


def episode_of_response(response_id: str) -> str | None:
    """The episode id a response id names (``resp_`` + the episode UUID's 32 hex digits), or None."""
    digits = response_id[len(RESPONSE_ID_PREFIX) :]
    if not response_id.startswith(RESPONSE_ID_PREFIX) or len(digits) != 32:
        return None
    if any(c not in "0123456789abcdef" for c in digits):
        return None
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def previous_response_id(body: Any) -> str | None:
    """``previous_response_id`` if the body has one (a string); the route loads that episode."""
    if not isinstance(body, dict):
        raise _reject("The request body must be a JSON object.", "shape")
    value = body.get("previous_response_id")
    if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 100):
        raise _reject("`previous_response_id` must be a response id.", "shape", "previous_response_id")
    return value


def _text_parts(content: Any, where: str, kinds: frozenset[str]) -> str:
    """The text of a content string or of an array of text parts; any other part is refused."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _reject(f"{where}.content must be a string or an array of content parts.", "shape", "input")
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in kinds or not isinstance(part.get("text"), str):
            raise _reject(
                f"{where}.content[{index}] of type {kind!r} is not supported; rrr takes text parts "
                f"({', '.join(sorted(kinds))}).",
                "unsupported",
                "input",
            )
        texts.append(part["text"])
    return "".join(texts)


_INPUT_PARTS = frozenset({"input_text", "text"})
_ASSISTANT_PARTS = frozenset({"output_text", "input_text", "text", "refusal"})


def _function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise _reject(f"{where} (function_call) needs string `call_id` and `name`.", "shape", "input")
    if not isinstance(arguments, str):
        raise _reject(f"{where}.arguments must be a JSON string.", "shape", "input")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _input_messages(value: Any) -> list[dict[str, Any]]:
    """Responses ``input`` as chat messages: messages, ``function_call`` and ``function_call_output`` items."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise _reject("`input` must be a string or a non-empty array of input items.", "shape", "input")
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise _reject(f"{where} must be an object.", "shape", "input")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise _reject(f"{where}.role must be user, system, developer or assistant.", "shape", "input")
            parts = _ASSISTANT_PARTS if role == "assistant" else _INPUT_PARTS
            messages.append({"role": role, "content": _text_parts(item.get("content"), where, parts)})
        elif kind == "function_call":
            call = _function_call(item, where)
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # parallel calls form one assistant turn
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise _reject(f"{where} (function_call_output) needs a string `call_id`.", "shape", "input")
            output = _text_parts(item.get("output"), where, _INPUT_PARTS | {"output_text"})
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        else:
            raise _reject(
                f"{where} of type {kind!r} is not supported; rrr takes message, function_call and "
                "function_call_output items.",
                "unsupported",
                "input",
            )
    return messages


def _responses_tools(value: Any) -> list[dict[str, Any]] | None:
    """Responses function tools (flat: type, name, description, parameters, strict) as chat tools."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise _reject("`tools` must be an array of function tools.", "shape", "tools")
    tools = []
    for index, tool in enumerate(value):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise _reject(
                f"tools[{index}] of type {kind!r} is not supported; rrr serves function tools only.",
                "unsupported",
                "tools",
            )
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        tools.append({"type": "function", "function": fn})
    return tools


def _responses_tool_choice(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("type") == "function" and set(value) <= {"type", "name"}:
        return {"type": "function", "function": {"name": value.get("name")}}
    raise _reject(
        '`tool_choice` must be "none", "auto", "required" or {"type": "function", "name": ...}.',
        "unsupported",
        "tool_choice",
    )


def _short(value: Any, limit: int) -> bool:
    return isinstance(value, str) and len(value) <= limit


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if (
        not isinstance(value, dict)
        or len(value) > MAX_METADATA
        or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in value.items()
        )
    ):
        raise _reject(
            f"`metadata` must map at most {MAX_METADATA} keys (64 characters) to strings (512 characters).",
            "shape",
            "metadata",
        )
    return dict(value)


def parse_responses(
    body: Any, settings: Settings, policy: VerifierPolicy | None = None, previous: list[dict[str, Any]] | None = None
) -> ResponsesInput:
    """Check a Responses body and translate it into the chat input that runs it (``previous``: the messages
    of the ``previous_response_id`` chain, its answer included). Every field is honoured or refused."""
    previous_id = previous_response_id(body)
    _refuse_unsupported(body, RESPONSES_FIELDS, RESPONSES_DEFAULT_ONLY)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _reject("`instructions` must be a string.", "shape", "instructions")
    store = body.get("store", True)
    if store is None:
        store = True
    if not isinstance(store, bool):
        raise _reject("`store` must be a boolean.", "shape", "store")
    messages = [*(previous or []), *_input_messages(body.get("input"))]
    if instructions:  # they apply to this response only: the previous response's are replaced
        if previous and messages[0].get("role") == "system":
            messages = messages[1:]
        messages.insert(0, {"role": "system", "content": instructions})
    chat_body: dict[str, Any] = {
        "model": body.get("model"),
        "messages": messages,
        "tools": _responses_tools(body.get("tools")),
        "tool_choice": _responses_tool_choice(body.get("tool_choice")),
        "parallel_tool_calls": body.get("parallel_tool_calls"),
        "max_completion_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "stream": body.get("stream"),
        "rrr": body.get("rrr"),
    }
    try:
        chat = parse_chat({k: v for k, v in chat_body.items() if v is not None}, settings, policy)
    except Rejection as exc:
        param = _RESPONSES_PARAMS.get(exc.param or "", exc.param)
        raise Rejection(exc.status, exc.message, exc.reason, param) from None
    return ResponsesInput(
        chat=chat,
        store=store,
        instructions=instructions,
        tools=list(body.get("tools") or []),
        tool_choice=body.get("tool_choice") or "auto",
        metadata=_metadata(body.get("metadata")),
        previous_response_id=previous_id,
    )
