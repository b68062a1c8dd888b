"""§8.6, §8.8-§8.10: model routing, tool-call parsing and validation, SSE frames, errors and their paths.

Tool-call answers are deterministic because the server runs the tiny tool model, which memorised
fixed texts for fixed prompts (tests/conftest.py); the server still runs the real hermes parse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ToolModel
from tests.engines.conformance.target import Target, needs_local

TOOL_ID = re.compile(r"^chatcmpl-tool-[0-9a-f]{16}$")
HI = [{"role": "user", "content": "hi"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
NULL_MESSAGE_FIELDS = ("refusal", "annotations", "audio", "function_call", "reasoning")


def chat(http: httpx.Client, **body: Any) -> httpx.Response:
    body.setdefault("messages", HI)
    return http.post("/v1/chat/completions", json=body)


def error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == response.status_code, body
    return dict(body["error"])


def sse(http: httpx.Client, **body: Any) -> list[Any]:
    """The decoded `data:` payloads of a streamed completion, `[DONE]` kept as a string."""
    body.setdefault("messages", HI)
    frames: list[Any] = []
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line:
                assert line.startswith("data: "), line
                frames.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return frames


# --- routing (§2.7) -----------------------------------------------------------------------------------


def test_an_omitted_model_means_the_base_and_the_response_echoes_it(http: httpx.Client, target: Target) -> None:
    body = chat(http, max_tokens=3).json()
    assert body["model"] == target.base_model()
    assert body["object"] == "chat.completion" and re.fullmatch(r"chatcmpl-\S+", body["id"])
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


def test_an_adapter_is_selected_by_model_and_echoed(
    http: httpx.Client, adapter: str, names: Callable[[str], str]
) -> None:
    name = names("route")
    assert http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": adapter}).status_code == 200
    assert chat(http, model=name, max_tokens=3).json()["model"] == name


def test_an_unknown_model_is_404_with_param_model(http: httpx.Client, target: Target) -> None:
    response = chat(http, model="no-such-model", max_tokens=3)
    assert response.status_code == 404
    err = error(response)
    assert (err["type"], err["param"]) == ("NotFoundError", "model")
    assert err["message"].startswith("The model `no-such-model` does not exist.")
    assert "Valid aliases" in err["message"] and target.base_model() in err["message"]


# --- request validation (§3.2) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        (
            {"tools": []},
            "tools",
            "`tools` must not be an empty array. Either provide at least one tool or omit the field entirely.",
        ),
        ({"tool_choice": "auto"}, "tool_choice", "When using `tool_choice`, `tools` must be set."),
        (
            {"tools": [WEATHER], "tool_choice": "sometimes"},
            "tool_choice",
            'Invalid value for `tool_choice`: sometimes! Only named tools, "none", "auto" or "required" are supported.',
        ),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
            "tool_choice",
            "The tool specified in `tool_choice` does not match any of the specified `tools`",
        ),
    ],
)
def test_tool_request_validation(http: httpx.Client, extra: dict[str, Any], param: str, message: str) -> None:
    response = chat(http, model="no-such-model", max_tokens=3, **extra)  # validation comes before routing
    assert response.status_code == 400
    err = error(response)
    assert (err["type"], err["param"]) == ("BadRequestError", param)
    assert err["message"] == f"{message} (parameter={param})"


def test_a_body_without_messages_is_400_bad_request(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json={"max_tokens": 3})
    assert response.status_code == 400
    err = error(response)
    assert err["type"] == "Bad Request" and err["param"] == "body.messages"


def test_invalid_json_is_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", content=b'{"messages": [', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert error(response)["type"] == "Bad Request"


def test_chat_requires_a_json_content_type(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", content=json.dumps({"messages": HI}), headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 400 and "Unsupported Media Type" in error(response)["message"]


def test_stream_options_need_stream(http: httpx.Client) -> None:
    response = chat(http, max_tokens=3, stream_options={"include_usage": True})
    assert response.status_code == 400 and error(response)["param"] == "stream_options"


@needs_local
def test_with_the_tool_parser_off_tool_requests_are_400(locked_engine_server: Any) -> None:
    from tests.engines.conftest import LOCKED_KEY

    with httpx.Client(
        base_url=locked_engine_server.url, headers={"Authorization": f"Bearer {LOCKED_KEY}"}, timeout=60
    ) as http:
        auto = chat(http, tools=[WEATHER], max_tokens=3)
        assert auto.status_code == 400
        assert (
            error(auto)["message"]
            == '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
        )
        required = chat(http, tools=[WEATHER], tool_choice="required", max_tokens=3)
        assert error(required)["message"] == 'tool_choice="required" requires --tool-call-parser to be set'
        named = chat(
            http, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=3
        )
        assert error(named)["message"] == 'tool_choice=function "get_weather" requires --tool-call-parser to be set'
        assert chat(http, tools=[WEATHER], tool_choice="none", max_tokens=3).status_code == 200


# --- tool calls (§3.3-§3.5, §8.8) ---------------------------------------------------------------------


def ask(http: httpx.Client, model: ToolModel, key: str, **extra: Any) -> dict[str, Any]:
    response = chat(http, messages=model.prompt(key), tools=model.tools, temperature=0, max_tokens=60, **extra)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_tool_call_is_parsed_into_vllms_shape(http: httpx.Client, tool_model: ToolModel) -> None:
    body = ask(http, tool_model, "call")
    choice = body["choices"][0]
    message = choice["message"]
    assert choice["finish_reason"] == "tool_calls"
    assert message["content"] is None
    (call,) = message["tool_calls"]
    assert TOOL_ID.match(call["id"]) and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert all(message[k] is None for k in NULL_MESSAGE_FIELDS), "null fields are present"
    assert {"logprobs", "stop_reason"} <= set(choice)


def test_plain_text_omits_tool_calls(http: httpx.Client, tool_model: ToolModel) -> None:
    message = ask(http, tool_model, "hello")["choices"][0]["message"]
    assert message["content"] == tool_model.answers["hello"]
    assert "tool_calls" not in message


def test_a_malformed_call_comes_back_as_raw_content(http: httpx.Client, tool_model: ToolModel) -> None:
    choice = ask(http, tool_model, "broken")["choices"][0]
    assert choice["message"]["content"] == tool_model.answers["broken"]
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"


def test_a_truncated_call_stays_length(http: httpx.Client, tool_model: ToolModel) -> None:
    response = chat(http, messages=tool_model.prompt("call"), tools=tool_model.tools, temperature=0, max_tokens=5)
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert "tool_calls" not in choice["message"]


def test_tool_choice_none_returns_the_raw_text(http: httpx.Client, tool_model: ToolModel) -> None:
    message = ask(http, tool_model, "call", tool_choice="none")["choices"][0]["message"]
    assert message["content"] == tool_model.answers["call"] and "tool_calls" not in message


def test_forced_tool_choices(http: httpx.Client, tool_model: ToolModel) -> None:
    required = ask(http, tool_model, "call", tool_choice="required")["choices"][0]
    assert (required["finish_reason"], required["message"]["content"]) == ("tool_calls", "")
    named = ask(http, tool_model, "call", tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = named["choices"][0]
    assert (choice["finish_reason"], choice["message"]["content"]) == ("stop", ""), "a named function reports stop"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_the_openai_sdk_reads_the_tool_call(target: Target, tool_model: ToolModel) -> None:
    with target.sdk() as client:
        completion = client.chat.completions.create(
            model=target.base_model(),
            messages=tool_model.prompt("call"),  # type: ignore[arg-type]
            tools=tool_model.tools,
            temperature=0,
            max_tokens=60,
        )  # type: ignore[arg-type]
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]


# --- streaming (§3.6, §8.9) ---------------------------------------------------------------------------


def _deltas(frames: list[Any]) -> list[dict[str, Any]]:
    return [f["choices"][0]["delta"] for f in frames if isinstance(f, dict) and f["choices"]]


def test_streamed_text_frames(http: httpx.Client, target: Target) -> None:
    frames = sse(http, max_tokens=8, temperature=0, stream_options={"include_usage": True})
    assert frames[-1] == "[DONE]"
    first = frames[0]
    assert first["object"] == "chat.completion.chunk" and first["model"] == target.base_model()
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    usage = frames[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    finish = frames[-3]["choices"][0]
    assert finish["finish_reason"] in ("stop", "length")
    assert all(f["choices"][0]["finish_reason"] is None for f in frames[:-3])
    assert len({f["id"] for f in frames[:-1]}) == 1


def test_streamed_plain_text_matches_the_model(http: httpx.Client, tool_model: ToolModel) -> None:
    frames = sse(http, messages=tool_model.prompt("hello"), tools=tool_model.tools, temperature=0, max_tokens=60)
    text = "".join(d.get("content") or "" for d in _deltas(frames))
    assert text == tool_model.answers["hello"]
    assert frames[-2]["choices"][0]["finish_reason"] == "stop"
    assert not any("tool_calls" in d for d in _deltas(frames))


def test_streamed_tool_call_frame_order(http: httpx.Client, tool_model: ToolModel) -> None:
    frames = sse(
        http,
        messages=tool_model.prompt("call"),
        tools=tool_model.tools,
        temperature=0,
        max_tokens=60,
        stream_options={"include_usage": True},
    )
    deltas = _deltas(frames)
    assert deltas[0] == {"role": "assistant", "content": ""}
    calls = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    head, fragments = calls[0], calls[1:]
    assert head["index"] == 0 and head["type"] == "function" and TOOL_ID.match(head["id"])
    assert head["function"]["name"] == "get_weather"
    assert fragments and all(set(f) == {"index", "function"} and f["index"] == 0 for f in fragments)
    assert json.loads("".join(f["function"]["arguments"] for f in fragments)) == {"city": "Paris"}
    assert not any(d.get("content") for d in deltas), "no tool-call text leaks into content"
    assert frames[-3]["choices"][0]["finish_reason"] == "tool_calls"
    assert frames[-2]["choices"] == [] and "usage" in frames[-2]
    assert frames[-1] == "[DONE]"


def test_the_openai_sdk_assembles_a_streamed_call(target: Target, tool_model: ToolModel) -> None:
    with target.sdk() as client:
        stream = client.chat.completions.create(
            model=target.base_model(),
            messages=tool_model.prompt("call"),  # type: ignore[arg-type]
            tools=tool_model.tools,
            temperature=0,
            max_tokens=60,  # type: ignore[arg-type]
            stream=True,
        )
        name, arguments, finish = "", "", None
        for chunk in stream:
            choice = chunk.choices[0]
            for call in choice.delta.tool_calls or []:
                name += call.function.name or "" if call.function else ""
                arguments += call.function.arguments or "" if call.function else ""
            finish = choice.finish_reason or finish
    assert (name, json.loads(arguments), finish) == ("get_weather", {"city": "Paris"}, "tool_calls")


def test_a_streamed_request_error_before_output_is_json(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json={"messages": HI, "model": "no-such-model", "stream": True})
    assert response.status_code == 404 and error(response)["param"] == "model"


# --- the error shape and paths (§4, §8.10) -------------------------------------------------------------


def test_paths_in_errors_are_sanitised(http: httpx.Client, adapter: str) -> None:
    response = http.post("/v1/load_lora_adapter", json={"lora_name": "sanitise-check", "lora_path": "/tmp/adapters/v3"})
    err = error(response)
    assert response.status_code == 404
    assert "/tmp/adapters/v3" not in err["message"] and "<path>" in err["message"]


def test_the_sdk_maps_errors_to_its_exceptions(target: Target) -> None:
    with target.sdk() as client, pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=HI, max_tokens=2)  # type: ignore[arg-type]
    assert info.value.status_code == 404 and info.value.param == "model"
