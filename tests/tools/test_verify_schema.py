"""The schema verifier: offered tools, argument schemas, every tool_choice mode."""

from __future__ import annotations

from typing import Any

import pytest

from tools.schema import SchemaError
from tools.spec import ToolCall, ToolSpec
from tools.verify import ModelOutput, Verdict, verify_schema

TOOLS = [
    ToolSpec(
        "get_weather",
        parameters={
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    ),
    ToolSpec("get_time", parameters={"type": "object", "properties": {"tz": {"type": "string"}}}),
]
WEATHER = ToolCall("get_weather", {"city": "Paris"})
TIME = ToolCall("get_time", {"tz": "UTC"})
NAMED_WEATHER = {"type": "function", "function": {"name": "get_weather"}}


def out(*calls: ToolCall, content: str | None = None, parse_error: str | None = None) -> ModelOutput:
    return ModelOutput(tool_calls=list(calls), content=content, parse_error=parse_error)


def test_valid_calls_pass() -> None:
    verdict = verify_schema(out(WEATHER, TIME), TOOLS)
    assert verdict == Verdict(True, "", {"calls": 2})
    assert verdict.to_dict() == {"ok": True, "reason": "", "details": {"calls": 2}, "code": None, "path": None}


def test_a_parse_error_fails_with_its_reason() -> None:
    verdict = verify_schema(out(parse_error="<tool_call> block 1: invalid JSON"), TOOLS)
    assert not verdict.ok
    assert verdict.reason == "malformed tool call: <tool_call> block 1: invalid JSON"


def test_an_unknown_tool_fails_and_lists_the_offered_ones() -> None:
    verdict = verify_schema(out(ToolCall("get_wether", {"city": "Paris"})), TOOLS)
    assert not verdict.ok
    assert verdict.reason == "call 1 names unknown tool 'get_wether'; offered tools: get_weather, get_time"


def test_schema_violations_name_the_call_the_param_and_the_rule() -> None:
    verdict = verify_schema(out(TIME, ToolCall("get_weather", {"city": "Paris", "unit": "kelvin"})), TOOLS)
    assert not verdict.ok
    assert verdict.reason.startswith("call 2 get_weather: $.unit: 'kelvin' is not one of")
    assert verdict.reason.endswith("(enum)")


def test_missing_required_and_extra_params_are_all_reported() -> None:
    verdict = verify_schema(out(ToolCall("get_weather", {"town": "Paris", "city": 3})), TOOLS)
    assert not verdict.ok
    errors = verdict.details["errors"]
    assert any("$.city: 3 is not of type 'string' (type)" in e for e in errors)
    assert any("'town' was unexpected" in e for e in errors)
    assert all(e.startswith("call 1 get_weather: ") for e in errors)
    assert verdict.reason == errors[0]


def test_missing_required_param_is_named() -> None:
    verdict = verify_schema(out(ToolCall("get_weather", {})), TOOLS)
    assert verdict.reason == "call 1 get_weather: $: 'city' is a required property (required)"


# --- tool_choice ----------------------------------------------------------------------------


def test_auto_allows_calls_or_none() -> None:
    assert verify_schema(out(content="It is sunny."), TOOLS, "auto").ok
    assert verify_schema(out(WEATHER), TOOLS, "auto").ok


def test_none_forbids_calls() -> None:
    assert verify_schema(out(content="No tools needed."), TOOLS, "none").ok
    verdict = verify_schema(out(WEATHER), TOOLS, "none")
    assert not verdict.ok and verdict.reason == 'tool_choice is "none" but the model called get_weather'


def test_required_needs_at_least_one_call() -> None:
    assert verify_schema(out(TIME), TOOLS, "required").ok
    verdict = verify_schema(out(content="I don't know."), TOOLS, "required")
    assert not verdict.ok and "made no tool call" in verdict.reason


def test_named_choice_allows_only_that_function_and_needs_a_call() -> None:
    assert verify_schema(out(WEATHER), TOOLS, NAMED_WEATHER).ok
    assert verify_schema(out(WEATHER, ToolCall("get_weather", {"city": "Rome"})), TOOLS, NAMED_WEATHER).ok
    other = verify_schema(out(WEATHER, TIME), TOOLS, NAMED_WEATHER)
    assert not other.ok and other.reason == "call 2 is to 'get_time' but tool_choice allows only 'get_weather'"
    nothing = verify_schema(out(content="hi"), TOOLS, NAMED_WEATHER)
    assert not nothing.ok and "requires a call to 'get_weather'" in nothing.reason


def test_named_choice_still_checks_the_arguments() -> None:
    verdict = verify_schema(out(ToolCall("get_weather", {"city": 1})), TOOLS, NAMED_WEATHER)
    assert not verdict.ok and "(type)" in verdict.reason


@pytest.mark.parametrize(
    "choice",
    ["sometimes", {"type": "function"}, {"type": "function", "function": {"name": "nope"}}, {"type": "tool"}, 3],
)
def test_invalid_tool_choice_is_a_value_error(choice: Any) -> None:
    with pytest.raises(ValueError):
        verify_schema(out(WEATHER), TOOLS, choice)


def test_unsafe_tool_schemas_raise_schema_error_rather_than_verify() -> None:
    bad = [ToolSpec("f", parameters={"type": "object", "properties": {"a": {"$ref": "https://x/y"}}})]
    with pytest.raises(SchemaError):
        verify_schema(out(ToolCall("f", {})), bad)


# --- ModelOutput from raw text and from OpenAI messages ---------------------------------------


def test_model_output_from_hermes_text_feeds_the_verifier() -> None:
    good = ModelOutput.from_text('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    assert good.tool_calls == [WEATHER] and good.parse_error is None
    assert verify_schema(good, TOOLS, "required").ok
    bad = ModelOutput.from_text('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris",}}</tool_call>')
    verdict = verify_schema(bad, TOOLS)
    assert not verdict.ok and verdict.reason.startswith("malformed tool call: <tool_call> block 1: invalid JSON")


def test_model_output_from_an_openai_message() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'}}
        ],
    }
    output = ModelOutput.from_openai_message(message)
    assert output == ModelOutput([ToolCall("get_time", {"tz": "UTC"}, "c1")], None, None)
    malformed = ModelOutput.from_openai_message({"role": "assistant", "content": "<tool_call>{oops</tool_call>"})
    assert malformed.tool_calls == [] and malformed.parse_error is not None
    assert not verify_schema(malformed, TOOLS).ok
    assert ModelOutput.from_openai_message("nope").parse_error is not None  # type: ignore[arg-type]
