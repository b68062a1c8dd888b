"""Turn a loop outcome into the store's episode record (docs/design.md, "The request path", step 7).

Called by the API after every request (and by evaluation tools that log episodes). Pure data
conversion: it does not write (the episode writer does) and does not judge (the loop did).
"""

from __future__ import annotations

from agent.loop import Outcome, TaskOptions
from engines.base import ChatRequest
from store.records import AttemptRecord, EpisodeRecord


def outcome_to_record(
    outcome: Outcome,
    request: ChatRequest,
    options: TaskOptions,
    *,
    adapter: str | None,
    client_key_id: str | None,
) -> EpisodeRecord:
    """One EpisodeRecord with every attempt, its verdict, tokens, latency and serving adapter."""
    attempts = []
    for attempt in outcome.attempts:
        verdict = attempt.verdict
        attempts.append(
            AttemptRecord(
                kind=attempt.kind,
                text=attempt.content,
                tool_calls=attempt.tool_calls or None,
                finish_reason=attempt.finish_reason,
                ok=None if verdict is None else verdict.ok,
                reason=None if verdict is None else verdict.reason,
                details=None if verdict is None else verdict.details,
                code=None if verdict is None else verdict.code,
                path=None if verdict is None else verdict.path,
                prompt_tokens=attempt.prompt_tokens,
                completion_tokens=attempt.completion_tokens,
                latency_ms=round(attempt.latency_ms),
                model=attempt.model,
                adapter=adapter,
            )
        )
    spec = options.verifier.to_json()
    failed_first = outcome.status in ("retry_ok", "failed")
    rerunnable = options.verifier.rerunnable(options.expected)
    return EpisodeRecord(
        id=outcome.episode_id,
        status=outcome.status,
        messages=request.messages,
        tools=request.tools,
        tool_choice=request.tool_choice,
        verifier=spec,
        expected_calls=options.expected,
        task=options.task,
        client_key_id=client_key_id,
        model=request.model,
        adapter=adapter,
        latency_ms=round(outcome.latency_ms),
        error=None if outcome.error is None else f"{type(outcome.error).__name__}: {outcome.error}",
        trainable=failed_first and rerunnable and options.purpose != "eval",
        purpose=options.purpose,
        attempts=attempts,
    )
