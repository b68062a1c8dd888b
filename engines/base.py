"""The one interface every engine implements: chat completion plus adapter admin.

Callers (the agent loop, the learner's publisher, the engine server) depend on this module only.
Engines speak OpenAI's wire format: requests and results are plain dicts in that shape, so a real
vLLM, `rrr engine serve` and the in-process local engine are interchangeable. Failures of the
engine itself are exceptions named after that boundary; a bad tool call is never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class EngineError(Exception):
    """The engine could not serve the request (infrastructure, not model output)."""


class EngineUnavailable(EngineError):
    """Connection refused or the engine is known to be down: the caller answers 503."""


class EngineTimeout(EngineError):
    """No answer before the deadline: the caller answers 504."""


class EngineProtocolError(EngineError):
    """The engine broke the exchange (connection dropped mid-response, unparsable body): 502."""


class EngineRequestError(EngineError):
    """The engine answered with an OpenAI/vLLM error (4xx/5xx with an error body)."""

    def __init__(self, status: int, message: str, type_: str = "", param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param


class AdapterError(EngineRequestError):
    """Loading or unloading an adapter failed (400 invalid, 404 not found, 500 incompatible)."""


@dataclass
class ChatRequest:
    """An OpenAI chat-completion request as the engine should receive it (non-streaming)."""

    messages: list[dict[str, Any]]
    model: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: list[str] | None = None
    parallel_tool_calls: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        """The JSON body of `POST /v1/chat/completions` (unset fields left out)."""
        body: dict[str, Any] = {"messages": self.messages}
        for key in (
            "model",
            "tools",
            "tool_choice",
            "temperature",
            "top_p",
            "max_tokens",
            "seed",
            "stop",
            "parallel_tool_calls",
        ):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        body.update(self.extra)
        return body


@dataclass
class ChatResult:
    """One choice of a chat completion, plus what the agent records about it."""

    message: dict[str, Any]
    finish_reason: str | None
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """Chat plus adapter admin; implementations are safe to share.

    `replicas()` is the engines that serve behind this one, each with its own adapter admin (a
    pool's members; a single engine is its own one replica): publishing loads, probes and unloads
    on every one. `healthy()` says, without any I/O, whether this engine takes traffic now.
    """

    name: str

    def replicas(self) -> list[Engine]: ...

    def healthy(self) -> bool: ...

    async def chat(self, request: ChatRequest, *, timeout: float | None = None) -> ChatResult: ...

    async def load_adapter(self, name: str, path: str) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...

    async def list_models(self) -> list[dict[str, Any]]: ...

    async def health(self) -> bool: ...

    async def aclose(self) -> None: ...
