"""ToolSpec / ToolCall conversions and the stable hashes everyone keys on."""

from __future__ import annotations

import json

import pytest

from tools.spec import ToolCall, ToolSpec, canonical_json

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_canonical_json_sorts_keys_and_refuses_nan() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": "é"}]}) == '{"a":[1,{"c":"é","d":2}],"b":1}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_toolspec_from_openai_accepts_wrapped_and_bare_function() -> None:
    wrapped = ToolSpec.from_openai(WEATHER)
    bare = ToolSpec.from_openai(WEATHER["function"])
    assert wrapped == bare
    assert wrapped.name == "get_weather"
    assert wrapped.parameters["required"] == ["city"]
    assert ToolSpec.from_openai(wrapped.to_openai()) == wrapped


def test_toolspec_defaults_missing_parameters_to_empty_object() -> None:
    spec = ToolSpec.from_openai({"name": "ping"})
    assert spec.parameters == {"type": "object", "properties": {}}
    assert spec.description == ""


@pytest.mark.parametrize(
    "bad",
    [
        "not an object",
        {"type": "retrieval"},
        {"function": {"description": "no name"}},
        {"function": {"name": ""}},
        {"function": {"name": "f", "parameters": "nope"}},
        {"function": {"name": "f", "description": 3}},
    ],
)
def test_toolspec_from_openai_rejects_bad_shapes(bad: object) -> None:
    with pytest.raises(ValueError):
        ToolSpec.from_openai(bad)  # type: ignore[arg-type]


def test_schema_hash_is_stable_under_key_order_and_changes_with_content() -> None:
    a = ToolSpec("f", "d", {"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "integer"}}})
    b = ToolSpec("f", "d", {"properties": {"y": {"type": "integer"}, "x": {"type": "string"}}, "type": "object"})
    c = ToolSpec("f", "d", {"type": "object", "properties": {"x": {"type": "integer"}}})
    assert a.schema_hash == b.schema_hash
    assert a.schema_hash != c.schema_hash
    assert len(a.schema_hash) == 16


def test_toolcall_from_dict_accepts_plain_and_openai_shapes() -> None:
    plain = ToolCall.from_dict({"name": "f", "arguments": {"a": 1}})
    as_string = ToolCall.from_dict({"name": "f", "arguments": '{"a": 1}'})
    openai = ToolCall.from_dict(
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    )
    assert plain.arguments == as_string.arguments == openai.arguments == {"a": 1}
    assert openai.id == "call_1" and plain.id is None
    assert ToolCall.from_dict({"name": "f", "arguments": ""}).arguments == {}


def test_toolcall_from_dict_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        ToolCall.from_dict({"arguments": {}})
    with pytest.raises(ValueError):
        ToolCall.from_dict({"name": "f", "arguments": "[1, 2]"})


def test_toolcall_to_openai_serialises_arguments_as_a_string() -> None:
    wire = ToolCall("f", {"city": "Zürich"}).to_openai("call_9")
    assert wire["id"] == "call_9" and wire["type"] == "function"
    assert json.loads(wire["function"]["arguments"]) == {"city": "Zürich"}
    assert "Zürich" in wire["function"]["arguments"]  # non-ASCII kept, as vLLM does
