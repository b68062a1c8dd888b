"""What every verifier takes and returns: a ``ModelOutput`` in, a ``Verdict`` out.

A verdict is data (stored on the Attempt, quoted in the reflection prompt, used as a reward), so
it is JSON-serialisable and its reason is short. Verifiers never raise on model output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tools.parse import parse_hermes, parse_openai_tool_calls
from tools.spec import ToolCall

MAX_REASON_CHARS = 1000
MAX_DETAIL_ERRORS = 20


def clip(value: Any, limit: int = 80) -> str:
    """A short ``repr`` of a value for a reason string."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Verdict:
    """Binary outcome of a verifier, a reason a model can act on, and JSON details."""

    ok: bool
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, "details": self.details}

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Verdict:
        return cls(ok=bool(obj["ok"]), reason=str(obj.get("reason", "")), details=dict(obj.get("details") or {}))


def passed(**details: Any) -> Verdict:
    return Verdict(True, "", details)


def failed(reason: str, **details: Any) -> Verdict:
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    return Verdict(False, reason, details)


def failed_with(errors: list[str], **details: Any) -> Verdict:
    """Fail with the first error as the reason and up to MAX_DETAIL_ERRORS of them in details."""
    return failed(errors[0], errors=errors[:MAX_DETAIL_ERRORS], **details)


@dataclass(frozen=True)
class ModelOutput:
    """The output under test: decoded tool calls, the text content, and a parse error if any."""

    tool_calls: list[ToolCall]
    content: str | None = None
    parse_error: str | None = None

    @classmethod
    def from_text(cls, text: str) -> ModelOutput:
        """From raw model text with hermes ``<tool_call>`` blocks (vLLM's non-streaming parser)."""
        parsed = parse_hermes(text)
        return cls(tool_calls=parsed.tool_calls, content=parsed.content, parse_error=parsed.error)

    @classmethod
    def from_openai_message(cls, message: dict[str, Any]) -> ModelOutput:
        """From an OpenAI assistant message (``content`` and ``tool_calls``); never raises."""
        if not isinstance(message, dict):
            return cls(tool_calls=[], parse_error=f"message must be an object, got {type(message).__name__}")
        content = message.get("content")
        calls, error = parse_openai_tool_calls(message.get("tool_calls"), content)
        return cls(tool_calls=calls, content=content if isinstance(content, str) else None, parse_error=error)

    def describe_calls(self) -> str:
        return ", ".join(call.name for call in self.tool_calls) or "nothing"
