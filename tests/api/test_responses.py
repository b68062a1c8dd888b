"""``POST /v1/responses`` through the real `openai` SDK: function calls verified on the chat route's own loop,
``function_call_output`` follow-ups, ``previous_response_id`` (and ``store: false``), streaming events, and a
400 naming every field rrr cannot honour (on chat completions too)."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.api.conftest import BAD, GOOD, MESSAGES, OTHER, TOOLS, Rrr
from tests.support.upstream import Script, text

FLAT_TOOLS: list[dict[str, Any]] = [{"type": "function", "strict": True, **TOOLS[0]["function"]}]
QUESTION = "What is the weather in Paris?"


def _create(rrr: Rrr, key: str | None = None, **kw: Any) -> Any:
    client = rrr.client() if key is None else rrr.client(key)
    return client.responses.create(model="rrr", **{"input": QUESTION, "tools": FLAT_TOOLS, **kw})


def _bad_request(call: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    return info.value


def _param(exc: openai.BadRequestError) -> Any:
    body = exc.body
    return body.get("param") if isinstance(body, dict) else None


# --- chat completions: nothing is silently ignored ---


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("logprobs", True),
        ("top_logprobs", 3),
        ("logit_bias", {"50256": -100}),
        ("response_format", {"type": "json_object"}),
        ("modalities", ["text", "audio"]),
        ("audio", {"voice": "alloy", "format": "mp3"}),
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("prediction", {"type": "content", "content": "x"}),
        ("reasoning_effort", "high"),
        ("web_search_options", {}),
        ("store", False),
        ("metadata", {"a": "b"}),
        ("service_tier", "flex"),
        ("verbosity", "low"),
        ("user", 7),
        ("no_such_field", 1),
    ],
)
def test_chat_refuses_each_field_it_cannot_honour(rrr: Rrr, field: str, value: Any) -> None:
    exc = _bad_request(
        lambda: rrr.client().chat.completions.create(
            model="rrr",
            messages=MESSAGES,  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
            extra_body={field: value},
        )
    )
    assert exc.status_code == 400 and _param(exc) == field
    assert field in exc.message
    assert rrr.upstream.calls() == 0


def test_chat_accepts_defaults_and_hints(rrr: Rrr) -> None:
    completion = rrr.client().chat.completions.create(  # type: ignore[call-overload]
        model="rrr",
        messages=MESSAGES,
        tools=TOOLS,
        logprobs=False,
        user="u-1",
        service_tier="auto",
        store=True,
        extra_body={"response_format": {"type": "text"}, "modalities": ["text"], "safety_identifier": "s"},
    )
    assert completion.choices[0].message.tool_calls
    sent = rrr.upstream.requests[0]
    assert not {"logprobs", "user", "store", "response_format", "safety_identifier"} & set(sent)


# --- the Responses API ---


def test_function_call_then_function_call_output_answer(rrr: Rrr) -> None:
    rrr.reset(Script(answer=[GOOD, text("It is sunny in Paris.")]))
    first = _create(rrr, instructions="Use the tools.", max_output_tokens=200, temperature=0.2)
    assert first.id.startswith("resp_") and first.object == "response" and first.status == "completed"
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert first.usage is not None and first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens
    assert first.instructions == "Use the tools." and first.max_output_tokens == 200
    raw = first.model_extra["rrr"]
    assert raw["verified"] is True and first.id == "resp_" + raw["episode_id"].replace("-", "")
    sent = rrr.upstream.requests[0]
    assert sent["messages"] == [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": QUESTION},
    ]
    assert sent["tools"][0]["function"]["name"] == "get_weather" and sent["max_tokens"] == 200
    assert sent["temperature"] == 0.2

    history = [
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny"}'},
    ]
    second = _create(rrr, input=history)
    assert second.output_text == "It is sunny in Paris."
    assert second.output[0].type == "message" and second.output[0].content[0].type == "output_text"
    messages = rrr.upstream.requests[1]["messages"]
    assert messages[0] == {"role": "user", "content": QUESTION}
    assert messages[1]["tool_calls"][0]["id"] == call.call_id
    assert messages[2] == {"role": "tool", "tool_call_id": call.call_id, "content": '{"sky": "sunny"}'}


def test_bad_call_is_reflected_on_and_retried(rrr: Rrr) -> None:
    rrr.reset(Script(answer=[BAD], retry=[GOOD]))
    response = _create(rrr, tool_choice={"type": "function", "name": "get_weather"})
    assert json.loads(response.output[0].arguments) == {"city": "Paris"}
    info = response.model_extra["rrr"]
    assert info["status"] == "retry_ok" and info["attempts"] == 3
    assert rrr.upstream.requests[0]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    episode = rrr.episode(info["episode_id"])
    assert episode["status"] == "retry_ok"


def test_previous_response_id_continues_the_stored_episode(rrr: Rrr) -> None:
    rrr.reset(Script(answer=[GOOD, text("Sunny.")]))
    first = _create(rrr, instructions="Be brief.")
    call = first.output[0]
    output = [{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
    second = _create(rrr, previous_response_id=first.id, input=output, instructions="Be brief.")
    assert second.output_text == "Sunny." and second.previous_response_id == first.id
    messages = rrr.upstream.requests[1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[2]["tool_calls"][0]["id"] == call.call_id
    assert messages[3] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}
    # another key's response is unknown to this one
    exc = _bad_request(lambda: _create(rrr, OTHER, previous_response_id=first.id, input=output))
    assert _param(exc) == "previous_response_id"


def test_store_false_cannot_be_referenced(rrr: Rrr) -> None:
    first = _create(rrr, store=False)
    assert first.store is False and first.output[0].type == "function_call"
    rrr.flush()
    with rrr.http() as http:  # nothing of the episode was kept
        assert http.get(f"/v1/episodes/{first.model_extra['rrr']['episode_id']}").status_code == 404
    for unknown in (first.id, "resp_" + "0" * 32, "resp_nope"):
        exc = _bad_request(lambda unknown=unknown: _create(rrr, previous_response_id=unknown, input="and now?"))
        assert _param(exc) == "previous_response_id"
        assert getattr(exc, "code", None) == "previous_response_not_found"


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"background": True}, "background"),
        ({"truncation": "auto"}, "truncation"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"text": {"format": {"type": "json_object"}}}, "text"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"max_tool_calls": 2}, "max_tool_calls"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, "input"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input"),
        ({"input": []}, "input"),
        ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}}, "tool_choice"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"store": "yes"}, "store"),
        ({"extra_body": {"rrr": {"nope": 1}}}, "rrr"),
    ],
)
def test_responses_refuses_what_it_cannot_honour(rrr: Rrr, kw: dict[str, Any], param: str) -> None:
    exc = _bad_request(lambda: _create(rrr, **kw))
    assert exc.status_code == 400 and _param(exc) == param
    assert rrr.upstream.calls() == 0


def test_streamed_function_call_events(rrr: Rrr) -> None:
    events = list(_create(rrr, stream=True))
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.status == "completed" and json.loads(final.output[0].arguments) == {"city": "Paris"}
    assert final.model_extra["rrr"]["verified"] is True


def test_streamed_text_through_the_sdk_helper(rrr: Rrr) -> None:
    rrr.reset(Script(answer=[text("Hello there.")]))
    with rrr.client().responses.stream(model="rrr", input="Say hello.") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "Hello there." and final.output_text == "Hello there."


def test_stream_that_starts_before_the_loop_ends(start_rrr: Any) -> None:
    slow = start_rrr(Script(answer=[GOOD], delay_s=0.6), stream_start_s=0.1)
    events = list(_create(slow, stream=True))
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed" and events[-1].response.output[0].name == "get_weather"


def test_engine_failure_after_the_stream_started_ends_in_response_failed(start_rrr: Any) -> None:
    slow = start_rrr(Script(answer=["error:400"], delay_s=0.6), stream_start_s=0.1)
    events = list(_create(slow, stream=True))
    assert [e.type for e in events] == ["response.created", "response.in_progress", "response.failed"]
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "engine_rejected_request"


def test_engine_failure_before_the_stream_started_keeps_its_status(rrr: Rrr) -> None:
    rrr.reset(Script(answer=["error:400"]))
    exc = _bad_request(lambda: _create(rrr, stream=True))
    assert getattr(exc, "code", None) == "engine_rejected_request"
