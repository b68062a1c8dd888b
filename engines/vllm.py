"""`VLLMEngine`: the Engine interface over a vLLM OpenAI-compatible server (or `rrr engine serve`).

Callers: the agent loop (chat) and the learner's publisher (adapter admin), through `engines.base`.
Chat goes through the real `openai.AsyncOpenAI` client with explicit timeouts and no hidden retries
(the agent loop is the only retry). This is also the one module that speaks vLLM's admin endpoints
(`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`, `/v1/models`, `/health`), following
docs/vllm.md §2 and §5. Every transport failure becomes one of the exceptions in `base`:

* connection refused or no connection within `connect_timeout` -> `EngineUnavailable` (fast);
* no answer before the deadline -> `EngineTimeout`;
* connection dropped mid-response or a body that is not a chat completion -> `EngineProtocolError`;
  that includes a body that is not UTF-8 or is nested deeper than `MAX_BODY_DEPTH` (bodies are read
  as bytes and decoded here, never by a recursive decoder on an unbounded input);
* an error status -> `EngineRequestError` (`AdapterError` on the admin routes) with status, type and
  param read from vLLM's `{"error": {...}}`, the pre-0.10.1 flat shape, `{"detail": ...}` or a string.

It does not validate tool calls: a `<tool_call>` left in `content` (vLLM's malformed-JSON fallback) is
returned as is for the agent to flag. It never parses paths out of error messages.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import openai

from engines.base import (
    AdapterError,
    ChatRequest,
    ChatResult,
    Engine,
    EngineError,
    EngineProtocolError,
    EngineRequestError,
    EngineTimeout,
    EngineUnavailable,
)

T = TypeVar("T")

ALREADY_LOADED = "has already been loaded"
MAX_BODY_DEPTH = 128
"""Deepest nesting of arrays and objects accepted in an engine's JSON body (vLLM's bodies nest < 10)."""

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def _cause_names(exc: BaseException) -> set[str]:
    """Class names along the cause chain, so httpx and httpx2 transport errors map alike."""
    names: set[str] = set()
    seen: BaseException | None = exc
    for _ in range(16):  # a bounded walk: cause chains can be cyclic
        if seen is None:
            break
        names.update(cls.__name__ for cls in type(seen).__mro__)
        seen = seen.__cause__
    return names


def error_fields(body: object) -> tuple[str, str, str | None]:
    """(message, type, param) from any error body shape vLLM or its framework sends (§4)."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            message = inner.get("message")
            if message is None and "detail" in inner:
                message = inner["detail"]
            param = inner.get("param")
            return (
                str(message) if message is not None else "",
                str(inner.get("type") or ""),
                str(param) if param is not None else None,
            )
        return str(inner), "", None
    if body is None:
        return "", "", None
    return str(body), "", None


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON text, counted without recursion (strings skipped)."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_JSON_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def decode_body(data: bytes, *, what: str) -> object:
    """An engine's JSON body from its bytes; not UTF-8, too deep or not JSON is `EngineProtocolError`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EngineProtocolError(f"{what}: the engine's answer is not valid UTF-8") from None
    if json_depth(text) > MAX_BODY_DEPTH:
        raise EngineProtocolError(f"{what}: the engine's answer is nested more than {MAX_BODY_DEPTH} levels deep")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise EngineProtocolError(f"{what}: the engine's answer is not JSON") from None


_NUM = r"(\d{1,12})"
_SUFFIX = r"(?: None| \(parameter=[A-Za-z_]{1,64}\))?"  # vLLM appends the param, or "None" when it has none
_KNOWN_REJECTIONS: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (
        re.compile(
            rf"This model's maximum context length is {_NUM} tokens\. However, (?:your request has|your prompt "
            rf"contains) {_NUM} input tokens\. Please reduce the length of the input messages\.{_SUFFIX}"
        ),
        "the prompt has {1} tokens; the model's maximum context length is {0} tokens",
        "messages",
    ),
    (
        re.compile(
            rf"This model's maximum context length is {_NUM} tokens\. However, you requested {_NUM} tokens "
            rf"\({_NUM} in the messages, {_NUM} in the completion\)\. Please reduce the length of the messages "
            rf"or completion\.{_SUFFIX}"
        ),
        "the request needs {1} tokens ({2} in the messages, {3} in the completion); "
        "the model's maximum context length is {0} tokens",
        "messages",
    ),
    (
        re.compile(
            rf"'max_tokens' or 'max_completion_tokens' is too large: {_NUM}\. This model's maximum context length "
            rf"is {_NUM} tokens and your request has {_NUM} input tokens \(\d{{1,12}} > \d{{1,12}} - \d{{1,12}}\)\."
            rf"{_SUFFIX}"
        ),
        "max_tokens {0} is too large: the prompt has {2} tokens and the model's maximum context length is {1} tokens",
        "max_tokens",
    ),
)


def known_rejection(message: object) -> tuple[str, str] | None:
    """(reason, request field) for one of vLLM's well-known 400 messages (docs/vllm.md §3.2), else None.

    The whole message must match one strict pattern; the reason is then written anew from the
    numbers alone, so nothing else the engine wrote is ever repeated.
    """
    if not isinstance(message, str) or len(message) > 1000:
        return None
    for pattern, reason, field in _KNOWN_REJECTIONS:
        match = pattern.fullmatch(message.strip())
        if match is not None:
            return reason.format(*(int(n) for n in match.groups())), field
    return None


def translate_error(exc: BaseException, *, what: str, deadline: float | None = None) -> EngineError:
    """Map an openai SDK / transport exception to the engine boundary's exceptions."""
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, UnicodeEncodeError):  # a lone surrogate cannot be sent as UTF-8 JSON
        return EngineRequestError(
            400, f"{what}: the request contains text that is not valid Unicode (a lone surrogate)", "BadRequestError"
        )
    if isinstance(exc, openai.APIStatusError):
        message, type_, param = error_fields(exc.body)
        return EngineRequestError(exc.status_code, message or str(exc), type_, param)
    names = _cause_names(exc)
    if "ConnectError" in names or "ConnectTimeout" in names:
        return EngineUnavailable(f"{what}: the engine is not accepting connections")
    if isinstance(exc, (openai.APITimeoutError, TimeoutError)) or "TimeoutException" in names:
        limit = f" within {deadline:g}s" if deadline else ""
        return EngineTimeout(f"{what}: no answer from the engine{limit}")
    unreadable = (json.JSONDecodeError, UnicodeDecodeError, RecursionError)  # a body the SDK decoded itself
    if isinstance(exc, (openai.APIConnectionError, *unreadable)) or "TransportError" in names:
        return EngineProtocolError(f"{what}: the engine broke the exchange ({type(exc).__name__})")
    if isinstance(exc, openai.OpenAIError):
        return EngineProtocolError(f"{what}: {type(exc).__name__}")
    raise exc


def result_from_body(body: object, latency_ms: float) -> ChatResult:
    """A ChatResult from a chat-completion body; anything else is the engine's protocol error."""
    if not isinstance(body, dict):
        raise EngineProtocolError("chat: the engine's answer is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise EngineProtocolError("chat: the engine's answer has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise EngineProtocolError("chat: the engine's answer has no message")
    message = dict(message)
    if not message.get("tool_calls"):  # vLLM >= 0.31 omits it, 0.22 sends []: the same thing
        message.pop("tool_calls", None)
    usage = body.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    finish_reason = choices[0].get("finish_reason")
    return ChatResult(
        message=message,
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        model=str(body.get("model") or ""),
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        latency_ms=latency_ms,
        raw=body,
    )


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class VLLMEngine:
    """Chat and adapter admin against one vLLM-compatible server at `base_url` (with or without `/v1`)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        connect_timeout: float = 2.0,
        admin_timeout: float = 300.0,
        health_timeout: float = 2.0,
        name: str = "vllm",
    ) -> None:
        root = base_url.rstrip("/")
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        self.name = name
        self.root_url = root
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.admin_timeout = admin_timeout
        self.health_timeout = health_timeout
        # vLLM ignores the key unless started with --api-key; the SDK insists on one.
        self._client = openai.AsyncOpenAI(
            base_url=f"{root}/v1",
            api_key=api_key or "EMPTY",
            max_retries=0,
            timeout=openai.Timeout(timeout, connect=connect_timeout),
        )

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The underlying SDK client (same timeouts, no retries)."""
        return self._client

    async def _call(self, what: str, deadline: float, make: Callable[[], Awaitable[T]]) -> T:
        """Run one SDK call under a total deadline and translate its failures."""
        try:
            return await asyncio.wait_for(make(), deadline)
        except Exception as exc:  # every failure is translated or re-raised
            raise translate_error(exc, what=what, deadline=deadline) from exc

    def _options(self, deadline: float) -> Any:
        return {"timeout": openai.Timeout(deadline, connect=min(self.connect_timeout, deadline))}

    async def chat(self, request: ChatRequest, *, timeout: float | None = None) -> ChatResult:
        deadline = timeout if timeout is not None else self.timeout
        body = request.to_body()
        started = time.perf_counter()
        data: bytes = await self._call(
            "chat",
            deadline,
            lambda: self._client.post("/chat/completions", cast_to=bytes, body=body, options=self._options(deadline)),
        )
        return result_from_body(decode_body(data, what="chat"), (time.perf_counter() - started) * 1000.0)

    async def _admin(self, route: str, body: dict[str, Any]) -> str:
        """POST an admin route; 200 is plain text with no Content-Type, so never parse it as JSON."""
        try:
            text: str = await self._call(
                route,
                self.admin_timeout,
                lambda: self._client.post(route, cast_to=str, body=body, options=self._options(self.admin_timeout)),
            )
        except EngineRequestError as exc:
            if exc.status == 404 and not exc.type and exc.message == "Not Found":
                raise AdapterError(
                    404,
                    f"the engine has no {route} route: runtime LoRA updating is off "
                    "(start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 and --enable-lora)",
                    "NotFound",
                ) from exc
            raise AdapterError(exc.status, exc.message, exc.type, exc.param) from exc
        return text

    async def load_adapter(self, name: str, path: str) -> None:
        """Load a PEFT adapter directory (an absolute path on the engine's host) under `name`.

        A 400 "already been loaded" is success only if `/v1/models` shows `name` with the same root.
        """
        if not path.startswith("/"):
            raise ValueError(f"adapter path must be absolute on the engine's host, got {path!r}")
        try:
            await self._admin("/load_lora_adapter", {"lora_name": name, "lora_path": path})
        except AdapterError as exc:
            if exc.status == 400 and ALREADY_LOADED in exc.message:
                cards = await self.list_models()
                if any(card.get("id") == name and card.get("root") == path for card in cards):
                    return
            raise

    async def unload_adapter(self, name: str) -> None:
        """Unregister `name`; an unknown name raises AdapterError with status 404."""
        await self._admin("/unload_lora_adapter", {"lora_name": name})

    def replicas(self) -> list[Engine]:
        return [self]

    def healthy(self) -> bool:
        return True

    async def list_models(self) -> list[dict[str, Any]]:
        """The cards of `/v1/models`: base models (`parent` null) first, then adapters."""
        raw: bytes = await self._call(
            "models",
            self.timeout,
            lambda: self._client.get("/models", cast_to=bytes, options=self._options(self.timeout)),
        )
        body = decode_body(raw, what="models")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise EngineProtocolError("models: the engine's answer has no data list")
        return [card for card in data if isinstance(card, dict)]

    async def base_model(self) -> str:
        """The first base model's id (`parent == null`), not simply the first card."""
        for card in await self.list_models():
            if card.get("parent") is None:
                return str(card.get("id"))
        raise EngineProtocolError("models: the engine lists no base model")

    async def health(self) -> bool:
        """`GET /health` is 200: True. Refused (starting or down), 503, a timeout: False. Never raises."""
        try:
            await self._call(
                "health",
                self.health_timeout,
                lambda: self._client.get(
                    f"{self.root_url}/health", cast_to=str, options=self._options(self.health_timeout)
                ),
            )
        except EngineError:
            return False
        return True

    async def aclose(self) -> None:
        await self._client.close()
