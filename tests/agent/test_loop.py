"""The reflect/retry loop over real HTTP: VLLMEngine → a scripted upstream speaking the wire format."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from agent.loop import LoopConfig, TaskOptions, run_episode
from agent.prompts import REFLECTION_PROMPT, RETRY_PROMPT
from agent.record import outcome_to_record
from engines.base import ChatRequest, EngineTimeout, EngineUnavailable
from engines.pool import EnginePool
from engines.vllm import VLLMEngine
from tests.support.upstream import Script, ScriptedUpstream, free_port, text, tool_call

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
GOOD = tool_call("get_weather", {"city": "Paris", "unit": "celsius"})
BAD_ENUM = tool_call("get_weather", {"city": "Paris", "unit": "kelvin"})


def request(**kw: Any) -> ChatRequest:
    return ChatRequest(
        messages=[{"role": "user", "content": "Weather in Paris, in C?"}], model="base", tools=[WEATHER], **kw
    )


def run(script: Script, options: TaskOptions = TaskOptions(), config: LoopConfig = LoopConfig(), **kw: Any):
    with ScriptedUpstream(script) as up:
        engine = VLLMEngine(up.url, timeout=10)
        outcome = asyncio.run(run_episode(engine, request(**kw), options, config))
        return outcome, up


def test_first_attempt_verified_makes_one_call() -> None:
    outcome, up = run(Script(answer=[GOOD]))
    assert outcome.status == "first_ok" and outcome.verified
    assert up.calls() == 1
    assert [a.kind for a in outcome.attempts] == ["answer"]


def test_wrong_then_right_reflects_and_retries_with_reflection_in_context() -> None:
    outcome, up = run(Script(answer=[BAD_ENUM], reflection=[text("The unit must be celsius.")], retry=[GOOD]))
    assert outcome.status == "retry_ok" and outcome.verified
    assert [a.kind for a in outcome.attempts] == ["answer", "reflection", "retry"]
    first, reflection, retry = outcome.attempts
    assert first.verdict is not None and not first.verdict.ok and "kelvin" in first.verdict.reason
    assert reflection.verdict is None and reflection.content == "The unit must be celsius."
    assert retry.verdict is not None and retry.verdict.ok
    assert outcome.answer is retry
    reflect_body, retry_body = up.requests[1], up.requests[2]
    # The reflection call quotes the failed call and asks the paper's question, with tools rendered
    # but tool calls switched off; the retry carries the reflection and the retry request.
    assert reflect_body["messages"][-1]["content"] == REFLECTION_PROMPT
    assert "kelvin" in reflect_body["messages"][-2]["content"]
    assert reflect_body["tool_choice"] == "none"
    assert retry_body["messages"][-2] == {"role": "assistant", "content": "The unit must be celsius."}
    assert retry_body["messages"][-1]["content"] == RETRY_PROMPT
    assert retry_body["messages"][0] == {"role": "user", "content": "Weather in Paris, in C?"}


def test_reason_is_appended_only_when_configured() -> None:
    _, up = run(Script(answer=[BAD_ENUM], retry=[GOOD]), config=LoopConfig(reflection_with_reason=True))
    asked = up.requests[1]["messages"][-1]["content"]
    assert asked.startswith(REFLECTION_PROMPT) and "<verifier>" in asked and "kelvin" in asked


def test_always_wrong_uses_exactly_the_budget_and_answers_unverified() -> None:
    outcome, up = run(Script(answer=[BAD_ENUM], retry=[BAD_ENUM]))
    assert up.calls() == 3
    assert outcome.status == "failed" and not outcome.verified
    assert outcome.answer is outcome.attempts[-1] and outcome.answer.kind == "retry"


def test_max_retries_zero_means_no_reflection() -> None:
    outcome, up = run(Script(answer=[BAD_ENUM]), options=TaskOptions(max_retries=0))
    assert up.calls() == 1 and outcome.status == "failed"


def test_reference_verifier_with_expected_calls() -> None:
    expected = [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]
    wrong_city = tool_call("get_weather", {"city": "Lyon", "unit": "celsius"})
    outcome, _ = run(
        Script(answer=[wrong_city], retry=[GOOD]),
        options=TaskOptions(verifier="reference", expected=expected, task="weather"),
    )
    assert outcome.status == "retry_ok"
    assert outcome.attempts[0].verdict is not None and "Lyon" in json.dumps(outcome.attempts[0].verdict.to_dict())
    record = outcome_to_record(
        outcome,
        request(),
        TaskOptions(verifier="reference", expected=expected, task="weather"),
        adapter="rrr-v1",
        client_key_id="k1",
    )
    assert record.trainable and record.task == "weather" and record.adapter == "rrr-v1"
    assert [a.kind for a in record.attempts] == ["answer", "reflection", "retry"]
    assert [a.ok for a in record.attempts] == [False, None, True]


@pytest.mark.parametrize(
    "bad",
    [
        tool_call("get_weather", '{"city": "Paris"'),  # truncated JSON
        tool_call("get_weather", '{"city": NaN}'),
        tool_call("get_weather", '{"city": "a", "city": "b"}'),
        tool_call("get_weather", '{"city": "Paris", "n": 123456789012345678901234567890}'),
        tool_call("get_forecast", {"city": "Paris"}),  # unknown tool
        tool_call("get_weather", {"city": "x" * 1_100_000}),
        text('<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>'),
        {"role": "assistant", "content": "Sure!", "tool_calls": GOOD["tool_calls"], "finish_reason": "length"},
    ],
)
def test_malformed_output_is_a_verdict_and_drives_reflection(bad: dict[str, Any]) -> None:
    outcome, up = run(Script(answer=[bad], retry=[GOOD]))
    assert outcome.error is None
    assert outcome.attempts[0].verdict is not None and not outcome.attempts[0].verdict.ok
    assert outcome.attempts[0].verdict.reason
    assert outcome.status == "retry_ok" and up.calls() == 3


def test_upstream_refused_is_an_engine_error_recorded_as_upstream_error() -> None:
    engine = VLLMEngine(f"http://127.0.0.1:{free_port()}/v1", timeout=5)
    started = time.monotonic()
    outcome = asyncio.run(run_episode(engine, request(), TaskOptions()))
    assert time.monotonic() - started < 2.5
    assert isinstance(outcome.error, EngineUnavailable)
    assert outcome.status == "upstream_error" and outcome.attempts == []


def test_hung_upstream_times_out_at_the_deadline() -> None:
    started = time.monotonic()
    outcome, _ = run(Script(answer=["hang"]), config=LoopConfig(deadline_s=1.0))
    elapsed = time.monotonic() - started
    assert isinstance(outcome.error, EngineTimeout)
    assert outcome.status == "upstream_error"
    assert 0.9 <= elapsed < 3.0


def test_upstream_failure_after_an_answer_keeps_the_answer_unverified() -> None:
    outcome, _ = run(Script(answer=[BAD_ENUM], reflection=["error:500"]))
    assert outcome.error is not None
    assert outcome.status == "failed" and outcome.answer is outcome.attempts[0]


def test_pool_fails_over_and_fails_fast_when_all_replicas_are_down() -> None:
    async def scenario(url: str) -> None:
        dead = VLLMEngine(f"http://127.0.0.1:{free_port()}/v1", timeout=5)
        live = VLLMEngine(url, timeout=5)
        pool = EnginePool([dead, live], failure_threshold=1, probe_interval_s=0.2)
        for _ in range(4):  # a refused replica costs one transport retry, then is skipped
            result = await pool.chat(request())
            assert result.message["tool_calls"]
        assert not pool.members[0].up and pool.members[1].up

        only_dead = EnginePool([VLLMEngine(f"http://127.0.0.1:{free_port()}/v1")], failure_threshold=1)
        with pytest.raises(EngineUnavailable):
            await only_dead.chat(request())
        started = time.monotonic()
        with pytest.raises(EngineUnavailable):
            await only_dead.chat(request())
        assert time.monotonic() - started < 0.05
        await pool.aclose()
        await only_dead.aclose()

    with ScriptedUpstream(Script(answer=[GOOD])) as up:
        asyncio.run(scenario(up.url))


def test_pool_resumes_traffic_when_a_down_engine_comes_back() -> None:
    async def scenario() -> None:
        port = free_port()
        pool = EnginePool(
            [VLLMEngine(f"http://127.0.0.1:{port}/v1", timeout=5)], failure_threshold=1, probe_interval_s=0.1
        )
        with pytest.raises(EngineUnavailable):
            await pool.chat(request())
        assert not pool.healthy()
        up = ScriptedUpstream(Script(answer=[GOOD]), port=port).__enter__()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    await pool.chat(request())
                    break
                except EngineUnavailable:
                    await asyncio.sleep(0.05)
            assert pool.healthy()
        finally:
            up.__exit__(None, None, None)
            await pool.aclose()

    asyncio.run(scenario())


def test_lone_surrogate_in_model_output_is_quoted_safely() -> None:
    bad = text("I cannot \ud800 do that")
    outcome, up = run(Script(answer=[bad], retry=[GOOD]), tool_choice="required")
    assert outcome.error is None and outcome.status == "retry_ok"
    assert "\ufffd" in up.requests[1]["messages"][-2]["content"]


def test_client_text_that_cannot_be_encoded_is_a_request_error() -> None:
    from engines.base import EngineRequestError

    with ScriptedUpstream(Script(answer=[GOOD])) as up:
        engine = VLLMEngine(up.url, timeout=5)
        req = ChatRequest(messages=[{"role": "user", "content": "bad \ud800"}], tools=[WEATHER])
        outcome = asyncio.run(run_episode(engine, req, TaskOptions()))
    assert isinstance(outcome.error, EngineRequestError) and outcome.error.status == 400
