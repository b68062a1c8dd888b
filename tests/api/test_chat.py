"""The request path through real HTTP and the real openai SDK: verify, reflect, retry, answer, record."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.api.conftest import BAD, GOOD, INFER, MESSAGES, TOOLS, Rrr
from tests.support.upstream import Script, text, tool_call


def _create(rrr: Rrr, **kw: Any) -> tuple[Any, Any]:
    """(parsed completion, raw response) through the openai SDK."""
    raw = rrr.client().chat.completions.with_raw_response.create(model="rrr", messages=MESSAGES, tools=TOOLS, **kw)  # type: ignore[arg-type]
    return raw.parse(), raw


def test_wrong_then_right_returns_the_verified_call_and_records_every_step(rrr: Rrr) -> None:
    rrr.reset(Script(answer=[BAD], reflection=[text("The city must be a string, not a number.")], retry=[GOOD]))
    completion, raw = _create(rrr)

    assert raw.headers["x-rrr-verified"] == "true"
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.model == "rrr"
    extra = completion.model_extra["rrr"]
    assert extra["verified"] is True and extra["status"] == "retry_ok" and extra["attempts"] == 3
    assert completion.usage.prompt_tokens == 30 and completion.usage.completion_tokens == 15
    assert rrr.upstream.calls() == 3

    episode = rrr.episode(extra["episode_id"])
    assert episode["status"] == "retry_ok"
    assert [a["kind"] for a in episode["attempts"]] == ["answer", "reflection", "retry"]
    answer, reflection, retry = episode["attempts"]
    assert answer["verdict"]["ok"] is False and "city" in answer["verdict"]["reason"]
    assert reflection["verdict"] is None
    assert reflection["text"] == "The city must be a string, not a number."
    assert retry["verdict"]["ok"] is True
    assert episode["reflections"] == ["The city must be a string, not a number."]
    assert [v["ok"] for v in episode["verdicts"]] == [False, True]
    assert episode["request"]["messages"] == MESSAGES
    assert episode["client_key_id"] and INFER not in json.dumps(episode)
    # the retry saw the reflection in its context
    retry_request = rrr.upstream.requests[2]
    assert any(m.get("content") == "The city must be a string, not a number." for m in retry_request["messages"])


def test_first_answer_right_makes_one_call(rrr: Rrr) -> None:
    completion, raw = _create(rrr)
    assert raw.headers["x-rrr-verified"] == "true"
    assert completion.model_extra["rrr"]["status"] == "first_ok"
    assert rrr.upstream.calls() == 1


def test_always_wrong_makes_exactly_three_calls_and_flags_the_answer(rrr: Rrr) -> None:
    rrr.reset(Script(answer=[BAD], retry=[tool_call("get_weather", {"town": "Paris"})]))
    completion, raw = _create(rrr)

    assert raw.status_code == 200
    assert raw.headers["x-rrr-verified"] == "false"
    extra = completion.model_extra["rrr"]
    assert extra["verified"] is False and extra["status"] == "failed"
    assert extra["reason"]
    assert rrr.upstream.calls() == 3
    assert [rrr.upstream.calls(k) for k in ("answer", "reflection", "retry")] == [1, 1, 1]
    # the last attempt is the answer the client gets
    assert json.loads(completion.choices[0].message.tool_calls[0].function.arguments) == {"town": "Paris"}
    episode = rrr.episode(extra["episode_id"])
    assert episode["status"] == "failed"
    assert [v["ok"] for v in episode["verdicts"]] == [False, False]


def test_max_retries_zero_makes_one_call(rrr: Rrr) -> None:
    rrr.reset(Script(answer=[BAD]))
    completion, raw = _create(rrr, extra_body={"rrr": {"max_retries": 0, "task": "weather"}})
    assert raw.headers["x-rrr-verified"] == "false"
    assert rrr.upstream.calls() == 1
    assert rrr.episode(completion.model_extra["rrr"]["episode_id"])["task"] == "weather"


def test_reference_verifier_uses_the_expected_calls(rrr: Rrr) -> None:
    rrr.reset(Script(answer=[tool_call("get_weather", {"city": "Rome"})], retry=[GOOD]))
    expected = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    completion, raw = _create(rrr, extra_body={"rrr": {"verifier": "reference", "expected_tool_calls": expected}})
    assert raw.headers["x-rrr-verified"] == "true"
    episode = rrr.episode(completion.model_extra["rrr"]["episode_id"])
    # the client's check is added to the server's default policy (schema), never in its place
    assert episode["verifier"] == {"type": "all", "of": [{"type": "schema"}, {"type": "reference"}]}
    assert episode["expected_tool_calls"] == expected
    assert episode["trainable"] is True  # failed first, re-runnable verifier


def test_plain_text_without_tools_passes_through(rrr: Rrr) -> None:
    rrr.reset(Script(answer=[text("Hello there.")]))
    completion = rrr.client().chat.completions.create(model="rrr", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == "Hello there."
    assert completion.choices[0].finish_reason == "stop"
    assert rrr.upstream.requests[0]["model"] == "base"


def test_model_names_resolve_and_unknown_is_a_404(rrr: Rrr) -> None:
    client = rrr.client()
    ids = [m.id for m in client.models.list().data]
    assert ids[:2] == ["rrr", "base"]
    completion = client.chat.completions.create(model="base", messages=MESSAGES, tools=TOOLS)  # type: ignore[arg-type]
    assert completion.model == "base"
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.body["param"] == "model"  # type: ignore[index]
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert rrr.upstream.calls() == 1


# R9: malformed model output is a verdict, never a 5xx.
HUGE_INT = "1" + "0" * 5000
MALFORMED: dict[str, dict[str, Any]] = {
    "invalid_json": tool_call("get_weather", '{"city": '),
    "truncated_by_length": {**GOOD, "finish_reason": "length"},
    "truncated_json": tool_call("get_weather", '{"city": "Par'),
    "unknown_tool": tool_call("launch_rockets", {"target": "moon"}),
    "schema_violation": tool_call("get_weather", {"city": ["Paris"]}),
    "extra_argument": tool_call("get_weather", {"city": "Paris", "units": "C"}),
    "nan": tool_call("get_weather", '{"city": NaN}'),
    "infinity": tool_call("get_weather", '{"city": "Paris", "x": -Infinity}'),
    "huge_int": tool_call("get_weather", '{"city": ' + HUGE_INT + "}"),
    "duplicate_keys": tool_call("get_weather", '{"city": "Paris", "city": "Rome"}'),
    "megabyte_string": tool_call("get_weather", {"city": "x" * 1_000_000}),
    "arguments_not_object": tool_call("get_weather", "[1, 2, 3]"),
    "call_plus_text": {**GOOD, "content": "Sure, let me check that for you."},
    "raw_tool_call_text": text('<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>'),
    "unclosed_tool_call_text": text('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}'),
    "no_call_at_all": text("I cannot help with that."),
    "empty_message": {"content": None},
    "lone_surrogate": text("\ud800 broken"),
    "arguments_as_object": {
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        ]
    },
    "call_without_name": {"tool_calls": [{"id": "call_1", "type": "function", "function": {"arguments": "{}"}}]},
}


KNOWN_BUGS: dict[str, str] = {}


@pytest.mark.parametrize(
    ("case", "reply"),
    [
        pytest.param(
            name,
            reply,
            id=name,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name])] if name in KNOWN_BUGS else [],
        )
        for name, reply in MALFORMED.items()
    ],
)
def test_malformed_output_becomes_a_verdict_never_a_5xx(rrr: Rrr, case: str, reply: dict[str, Any]) -> None:
    rrr.reset(Script(answer=[reply]))
    response = rrr.chat(tool_choice="required")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert response.headers["x-rrr-verified"] in ("true", "false")
    episode = rrr.episode(body["rrr"]["episode_id"])
    judged = [a for a in episode["attempts"] if a["kind"] != "reflection"]
    assert judged and all(a["verdict"] is not None for a in judged)
    if case not in ("call_plus_text", "megabyte_string", "arguments_as_object"):  # valid calls for the schema
        assert judged[0]["verdict"]["ok"] is False, judged[0]["verdict"]
        assert rrr.upstream.calls() == 3  # the failure drove a reflection and a retry
    # the answer always parses in the SDK
    openai.types.chat.ChatCompletion.model_validate(body)
