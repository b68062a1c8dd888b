"""The reflect/retry loop of one client request (docs/design.md, "The request path", steps 2-6).

Called by the API for every chat completion and by the evaluation harness. It calls the engine,
verifies each answer, and on failure asks for a self-reflection and retries with the reflection in
context, within one call budget and one deadline. It returns everything that happened; it does not
write to the store (the caller hands the outcome to the episode writer) and does not pick the
adapter (the caller resolves ``model``). Bad model output is a verdict here, never an exception;
only engine failures are raised, after the attempts made so far are kept on the outcome.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from agent import prompts
from engines.base import ChatRequest, ChatResult, Engine, EngineError, EngineTimeout
from store.records import AttemptKind, EpisodePurpose, EpisodeStatus
from tools.parse import parse_openai_tool_calls
from tools.spec import ToolSpec
from tools.toolcall_formats import DEFAULT_TOOL_CALL_PARSER, check_tool_call_parser
from tools.verify import (
    DEFAULT_CONTEXT,
    SCHEMA,
    ModelOutput,
    Verdict,
    VerificationBudget,
    VerifierContext,
    VerifierSpec,
    effective_tool_choice,
    run_verifier,
)


@dataclass(frozen=True)
class LoopConfig:
    """Budget and prompt options of the loop.

    max_calls: model calls per request (answer + reflection + retry = 3, the paper's two stages).
    deadline_s: one deadline for all calls of a request.
    reflection_with_reason: append the verifier's reason to the reflection request (the paper
        gives only binary feedback, which is the default).
    reflection_max_tokens: cap on the reflection's length.
    verify_budget_s: wall time for all verification of a request (every answer's verifier run
        together; None: unbounded). Past it the verdict fails with the budget's reason.
    verify_regex_budget_s: time for all JSON-Schema pattern searches of a request (None: unbounded).
    verify_workers: threads that run verification, shared by every request of the process; the
        event loop never verifies, so one slow verification stalls no other request.
    tool_call_parser: the model's tool-call format (vLLM's `--tool-call-parser` name), in which a
        failed attempt's calls are quoted back for the reflection (`tools.toolcall_formats`).
    """

    max_calls: int = 3
    deadline_s: float = 60.0
    reflection_with_reason: bool = False
    reflection_max_tokens: int = 256
    verify_budget_s: float | None = 30.0
    verify_regex_budget_s: float | None = 1.0
    verify_workers: int = 8
    tool_call_parser: str = DEFAULT_TOOL_CALL_PARSER

    def __post_init__(self) -> None:
        check_tool_call_parser(self.tool_call_parser)


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def verification_pool(workers: int) -> ThreadPoolExecutor:
    """The process's bounded pool of verification threads of that size (made on first use)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(max(1, workers), thread_name_prefix="rrr-verify")
        return pool


@dataclass(frozen=True)
class TaskOptions:
    """How to judge a request (from the client's ``rrr`` extension, or a stored episode).

    ``verifier`` may be given as a name or JSON object; it is parsed into a ``VerifierSpec`` here,
    once (ValueError if it is not valid), and everything downstream uses the parsed spec.
    """

    verifier: VerifierSpec = SCHEMA
    expected: list[dict[str, Any]] | None = None
    task: str | None = None
    max_retries: int = 1
    purpose: EpisodePurpose = "traffic"
    """`eval` marks evaluation traffic: stored, never trainable, never a regression item."""
    context: VerifierContext = field(default=DEFAULT_CONTEXT, compare=False, repr=False)
    """The operator's webhooks and enabled plugins (``tools.verifiers.policy``), not stored."""

    def __post_init__(self) -> None:
        if not isinstance(self.verifier, VerifierSpec):
            object.__setattr__(self, "verifier", VerifierSpec.parse(self.verifier))

    @property
    def math(self) -> bool:
        """Reflect with the paper's math prompt (countdown problems)."""
        return self.verifier.math


@dataclass
class Attempt:
    """One model call of the loop and, for answers and retries, its verdict."""

    index: int
    kind: AttemptKind
    message: dict[str, Any]
    finish_reason: str | None
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    verdict: Verdict | None = None

    @property
    def tool_calls(self) -> list[Any]:
        """The engine's ``tool_calls`` if it is a list (items as sent, objects or not), else ``[]``.

        A string or an object there is malformed output that the verdict already names; it is not
        turned into a list of its characters or keys.
        """
        calls = self.message.get("tool_calls")
        return list(calls) if isinstance(calls, list) else []

    @property
    def content(self) -> str | None:
        content = self.message.get("content")
        return content if isinstance(content, str) else None


@dataclass
class Outcome:
    """Everything one request produced: the attempts, the answer to send, the status."""

    episode_id: str
    attempts: list[Attempt] = field(default_factory=list)
    status: EpisodeStatus = "failed"
    answer: Attempt | None = None
    error: EngineError | None = None
    latency_ms: float = 0.0

    @property
    def verified(self) -> bool:
        return self.answer is not None and self.answer.verdict is not None and self.answer.verdict.ok


def verify_message(
    message: dict[str, Any],
    finish_reason: str | None,
    *,
    tools: list[ToolSpec],
    tool_choice: str | dict[str, Any],
    options: TaskOptions,
    budget: VerificationBudget | None = None,
    conversation: list[dict[str, Any]] | None = None,
) -> Verdict:
    """Parse an assistant message strictly and run the request's verifier on it, within ``budget``.
    ``conversation`` is the client's messages (what `grounded` traces values to).
    Blocking (subprocesses, regex searches): ``run_episode`` calls it in a worker thread."""
    budget = budget if budget is not None else VerificationBudget()
    content = message.get("content")
    calls, parse_error = parse_openai_tool_calls(message.get("tool_calls"), content)
    if finish_reason == "length":
        parse_error = parse_error or "the output was cut off at max_tokens (finish_reason=length)"
    text = content if isinstance(content, str) else None  # a non-string content is named by parse_error
    output = ModelOutput(tool_calls=calls, content=text, parse_error=parse_error)
    repeated = repeated_call(output, conversation)
    if repeated is not None:
        return repeated
    verdict = run_verifier(
        options.verifier,
        output,
        tools=tools,
        tool_choice=tool_choice,
        expected=options.expected,
        budget=budget,
        messages=conversation,
        context=options.context,
    )
    if finish_reason == "length" and verdict.code == "parse_error":  # cut off, not malformed by choice
        verdict = dataclasses.replace(verdict, code="truncated")
    return verdict


def _answered_calls(conversation: list[dict[str, Any]] | None) -> list[tuple[str, Any]]:
    """The calls of the assistant turn whose tool results end the conversation (none if it does not end so)."""
    messages = list(conversation or [])
    end = len(messages)
    while end > 0 and isinstance(messages[end - 1], dict) and messages[end - 1].get("role") == "tool":
        end -= 1
    if end == len(messages) or end == 0 or not isinstance(messages[end - 1], dict):
        return []
    calls, _ = parse_openai_tool_calls(messages[end - 1].get("tool_calls"), None)
    return [(call.name, call.arguments) for call in calls]


def repeated_call(output: ModelOutput, conversation: list[dict[str, Any]] | None) -> Verdict | None:
    """A failed verdict (``repeated_call``) when the output calls again, with the same arguments, a
    tool whose result is the last thing in the conversation: an agent loop that never ends. A text
    answer after a tool result, or the next (different) call, is not this."""
    answered = _answered_calls(conversation)
    for index, call in enumerate(output.tool_calls, start=1):
        if (call.name, call.arguments) in answered:
            return Verdict(
                False,
                f"call {index} repeats {call.name} with the same arguments right after its result; "
                "answer from the result, or call something else",
                code="repeated_call",
            )
    return None


def _timed(
    budget: VerificationBudget,
    message: dict[str, Any],
    finish_reason: str | None,
    tools: list[ToolSpec],
    tool_choice: str | dict[str, Any],
    options: TaskOptions,
    conversation: list[dict[str, Any]] | None,
) -> Verdict:
    budget.start()  # the budget's clock runs only while verifying (not while a model call runs)
    try:
        if budget.expired:
            return Verdict(False, budget.reason(), code="timeout")
        return verify_message(
            message,
            finish_reason,
            tools=tools,
            tool_choice=tool_choice,
            options=options,
            budget=budget,
            conversation=conversation,
        )
    finally:
        budget.stop()


async def verify_off_loop(
    message: dict[str, Any],
    finish_reason: str | None,
    *,
    tools: list[ToolSpec],
    tool_choice: str | dict[str, Any],
    options: TaskOptions,
    budget: VerificationBudget,
    workers: int = LoopConfig.verify_workers,
    conversation: list[dict[str, Any]] | None = None,
) -> Verdict:
    """``verify_message`` in the bounded verification pool, never on the event loop. Verifiers stop
    by themselves once ``budget`` is spent; if one does not (a long non-cooperative step), the
    verdict fails with the budget's reason at the budget's end (plus a short grace) all the same."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(
        verification_pool(workers), _timed, budget, message, finish_reason, tools, tool_choice, options, conversation
    )
    limit = budget.remaining()
    try:
        return await asyncio.wait_for(future, timeout=None if limit == float("inf") else limit + _GRACE_S)
    except TimeoutError:
        budget.exhaust()
        return Verdict(False, budget.reason(), code="timeout")


_GRACE_S = 0.5


async def run_episode(
    engine: Engine,
    request: ChatRequest,
    options: TaskOptions,
    config: LoopConfig = LoopConfig(),
    *,
    tools: list[ToolSpec] | None = None,
    episode_id: str | None = None,
) -> Outcome:
    """Answer ``request`` with a verified call when the model can produce one within the budget."""
    started = time.monotonic()
    deadline = started + config.deadline_s
    outcome = Outcome(episode_id=episode_id or str(uuid.uuid4()))
    specs = tools if tools is not None else [ToolSpec.from_openai(t) for t in request.tools or []]
    tool_choice = effective_tool_choice(request.tool_choice, bool(specs))
    budget = min(config.max_calls, 1 + 2 * max(0, options.max_retries))
    verification = VerificationBudget(config.verify_budget_s, config.verify_regex_budget_s, started=False)

    async def call(kind: AttemptKind, req: ChatRequest) -> Attempt:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise EngineTimeout(f"the request deadline of {config.deadline_s:g}s passed")
        result: ChatResult = await engine.chat(req, timeout=remaining)
        attempt = Attempt(
            index=len(outcome.attempts),
            kind=kind,
            message=result.message,
            finish_reason=result.finish_reason,
            model=result.model,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            latency_ms=result.latency_ms,
        )
        if kind != "reflection":
            attempt.verdict = await verify_off_loop(
                result.message,
                result.finish_reason,
                tools=specs,
                tool_choice=tool_choice,
                options=options,
                budget=verification,
                workers=config.verify_workers,
                conversation=request.messages,
            )
        outcome.attempts.append(attempt)
        return attempt

    try:
        answer = await call("answer", request)
        outcome.answer = answer
        history = list(request.messages)
        while not (answer.verdict and answer.verdict.ok) and len(outcome.attempts) + 2 <= budget:
            if time.monotonic() >= deadline:
                break
            failed = prompts.failed_assistant_message(
                answer.content, answer.tool_calls, tool_call_parser=config.tool_call_parser
            )
            reason = answer.verdict.reason if (answer.verdict and config.reflection_with_reason) else None
            reflect_history = prompts.reflection_messages(history, failed, reason, math=options.math)
            reflection = await call(
                "reflection",
                _derive(
                    request,
                    reflect_history,
                    tool_choice="none" if specs else None,
                    max_tokens=config.reflection_max_tokens,
                ),
            )
            history = prompts.retry_messages(reflect_history, reflection.content or "")
            answer = await call("retry", _derive(request, history))
            outcome.answer = answer
    except EngineError as exc:
        outcome.error = exc
    outcome.latency_ms = (time.monotonic() - started) * 1000
    outcome.status = _status(outcome)
    return outcome


def _derive(
    request: ChatRequest,
    messages: list[dict[str, Any]],
    *,
    tool_choice: str | None = None,
    max_tokens: int | None = None,
) -> ChatRequest:
    return ChatRequest(
        messages=messages,
        model=request.model,
        tools=request.tools,
        tool_choice=tool_choice if tool_choice is not None else request.tool_choice,
        temperature=request.temperature,
        top_p=request.top_p,
        max_tokens=max_tokens if max_tokens is not None else request.max_tokens,
        seed=request.seed,
        stop=request.stop,
        parallel_tool_calls=request.parallel_tool_calls,
        extra=dict(request.extra),
    )


def _status(outcome: Outcome) -> EpisodeStatus:
    answers = [a for a in outcome.attempts if a.kind != "reflection"]
    if not answers:
        return "upstream_error"
    if answers[0].verdict is not None and answers[0].verdict.ok:
        return "first_ok"
    if any(a.verdict is not None and a.verdict.ok for a in answers[1:]):
        return "retry_ok"
    return "failed"
