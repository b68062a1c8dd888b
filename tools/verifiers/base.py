"""What every verifier takes and returns: a ``ModelOutput`` in, a ``Verdict`` out.

A verdict is data (stored on the Attempt, quoted in the reflection prompt, used as a reward), so
it is JSON-serialisable and its reason is short. Verifiers never raise on model output. Every
failed verdict carries a ``code`` from ``FAILURE_CODES`` (one closed set an operator can count),
and the argument ``path`` where one applies (``arguments.origin``).

A ``VerificationBudget`` is the time one request's verification may take (R1, R10, R11): made once
per client request and passed through every verifier run of that request (answer and retry alike).
``total_s`` bounds the time spent verifying, summed over the runs (the clock runs between
``start()`` and ``stop()``, from creation unless ``started=False``; model calls in between do not
count): verifiers check ``expired`` between leaves, and an execution target is killed at
``remaining()``. ``regex_s`` bounds the time spent in JSON-Schema pattern searches across all of
them (each search is also cut at ``tools.schema.PATTERN_TIMEOUT_S``). A spent budget is never an
exception: verifiers turn it into a failed verdict whose reason is ``reason()``. Thread-safe:
verification runs in worker threads, and execution targets of one request run concurrently.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
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


FAILURE_CODES: dict[str, str] = {
    "parse_error": "the output's tool call cannot be decoded (malformed JSON or markup)",
    "truncated": "the output was cut off by the token limit before its call was complete",
    "no_call": "a tool call was needed and none was made",
    "unexpected_call": "a call was made where none was wanted (tool_choice none, an irrelevant request)",
    "unknown_tool": "a call names a tool the request did not offer",
    "wrong_tool": "a call names an offered tool, but not the one needed",
    "wrong_call_count": "more or fewer calls than needed",
    "missing_argument": "a required argument is missing",
    "unexpected_argument": "an argument the tool does not take, or the task does not ask for",
    "type_mismatch": "an argument has the wrong JSON type",
    "wrong_value": "an argument has the wrong value",
    "schema_violation": "an argument breaks its schema otherwise (enum, pattern, range, format, size)",
    "ungrounded_value": "an argument's value appears nowhere in the conversation",
    "rule_violation": "the call (or answer) breaks a rule of the task",
    "execution_error": "running the call failed, or its result was refused",
    "timeout": "verification ran out of time",
    "verifier_error": "the verifier could not judge (a plugin raised, a webhook failed, no reference)",
    "repeated_call": "the same call (name and arguments) again, right after its result came back",
}
"""The closed set of failure codes (docs/design.md lists them too); a failed verdict has exactly one."""


@dataclass(frozen=True)
class Verdict:
    """Binary outcome of a verifier, a reason a model can act on, and JSON details; a failed one
    has a ``code`` (``FAILURE_CODES``) and, where one applies, the argument ``path``."""

    ok: bool
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    code: str | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, "details": self.details, "code": self.code, "path": self.path}

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Verdict:
        code = obj.get("code")
        return cls(
            ok=bool(obj["ok"]),
            reason=str(obj.get("reason", "")),
            details=dict(obj.get("details") or {}),
            code=code if code in FAILURE_CODES else None,
            path=str(obj["path"]) if obj.get("path") else None,
        )


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an output: its failure code, a message for the model, the argument path."""

    code: str
    message: str
    path: str | None = None


def passed(**details: Any) -> Verdict:
    return Verdict(True, "", details)


def failed(reason: str, *, code: str, path: str | None = None, **details: Any) -> Verdict:
    """A failed verdict; ``code`` must be one of ``FAILURE_CODES`` (a wrong one is a bug: ValueError)."""
    if code not in FAILURE_CODES:
        raise ValueError(f"unknown failure code {code!r}; one of {', '.join(FAILURE_CODES)}")
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    return Verdict(False, reason, details, code=code, path=path)


def failed_problem(problem: Problem, **details: Any) -> Verdict:
    return failed(problem.message, code=problem.code, path=problem.path, **details)


def failed_with(problems: list[Problem], **details: Any) -> Verdict:
    """Fail with the first problem as reason, code and path, and up to MAX_DETAIL_ERRORS messages in details."""
    first = problems[0]
    errors = [p.message for p in problems[:MAX_DETAIL_ERRORS]]
    return failed(first.message, code=first.code, path=first.path, errors=errors, **details)


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


class VerificationBudget:
    """Wall time and regex time left to one request's verification; ``None`` means unbounded."""

    def __init__(
        self,
        total_s: float | None = None,
        regex_s: float | None = None,
        *,
        started: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_s = total_s
        self.regex_s = regex_s
        self._clock = clock
        self._spent = 0.0
        self._since: float | None = clock() if started else None
        self._regex_used = 0.0
        self._lock = threading.Lock()

    def start(self) -> None:
        """The clock runs (a verifier run begins); a no-op while it runs."""
        with self._lock:
            if self._since is None:
                self._since = self._clock()

    def stop(self) -> None:
        """The clock stops (a verifier run ended); the time is kept as spent."""
        with self._lock:
            if self._since is not None:
                self._spent += self._clock() - self._since
                self._since = None

    def exhaust(self) -> None:
        """Nothing is left (a run was given up at the budget's end)."""
        with self._lock:
            self._spent = math.inf

    def remaining(self) -> float:
        """Seconds left of the total budget (``inf`` if unbounded, never below 0)."""
        if self.total_s is None:
            return math.inf
        with self._lock:
            running = 0.0 if self._since is None else self._clock() - self._since
            return max(0.0, self.total_s - self._spent - running)

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    def regex_left(self) -> float:
        """Seconds a regex search may still take: the smaller of the regex and the total budget left."""
        with self._lock:
            regex = math.inf if self.regex_s is None else max(0.0, self.regex_s - self._regex_used)
        return min(regex, self.remaining())

    def charge_regex(self, seconds: float) -> None:
        with self._lock:
            self._regex_used += max(0.0, seconds)

    @property
    def regex_spent(self) -> bool:
        return self.regex_left() <= 0

    def reason(self) -> str:
        """Why verification stopped: the reason of the failed verdict."""
        if self.regex_s is not None and not self.expired and self.regex_spent:
            return f"verification stopped: the request's regex time budget of {self.regex_s:g}s is spent"
        total = "unbounded" if self.total_s is None else f"{self.total_s:g}s"
        return f"verification stopped: the request's verification budget of {total} is spent"


UNBOUNDED = VerificationBudget()
"""No limit beyond each verifier's own (offline re-runs, tests)."""
