"""Tool-call formats by vLLM parser name: render -> parse round trips, and vLLM's verdicts on malformed output.

The malformed cases follow vLLM's non-streaming parsers (vllm/tool_parsers/llama_tool_parser.py,
mistral_tool_parser.py, pythonic_tool_parser.py + utils.py): what vLLM returns as content is the
content here; where vLLM gives up, ``error`` says why and there are no calls.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent import prompts
from tools.parse import parse_hermes
from tools.spec import ToolCall
from tools.toolcall_formats import (
    SUPPORTED_TOOL_CALL_PARSERS,
    TOOL_CALL_FORMATS,
    ToolCallParse,
    check_tool_call_parser,
    parse_llama3_json,
    parse_mistral,
    parse_pythonic,
    tool_call_format,
)

WEATHER = ToolCall("get_weather", {"city": "Paris"})
EDGE_CALLS = [
    [WEATHER],
    [WEATHER, ToolCall("get_time", {"zone": "Europe/Oslo"}), ToolCall("ping", {})],  # several, one without args
    [
        ToolCall(
            "book", {"party": {"adults": 2, "kids": [3, 7], "names": ["Ann", "Bo"]}, "deep": {"a": {"b": {"c": []}}}}
        )
    ],
    [ToolCall("say", {"text": "Grüße, 東京 🌧 — naïve"})],  # unicode
    [
        ToolCall("say", {"text": "He said \"hi\" and 'bye'", "path": "C:\\temp\\new", "nl": "a\nb\tc"})
    ],  # quotes, escapes
    [ToolCall("say", {"text": "brackets [x] (y) {z} ]; ) }", "json": '{"name": "f", "arguments": {}}'})],
    [ToolCall("mix", {"n": -3, "f": -0.5, "big": 2**53, "e": 1e-7, "t": True, "f2": False, "none": None, "s": ""})],
]
FORMATS = list(SUPPORTED_TOOL_CALL_PARSERS)


def same(parsed: ToolCallParse, calls: list[ToolCall]) -> bool:
    return [(c.name, c.arguments) for c in parsed.tool_calls] == [(c.name, c.arguments) for c in calls]


# --- registry -----------------------------------------------------------------------------------


def test_the_registry_has_vllms_parser_names_and_hermes_is_the_default() -> None:
    assert FORMATS == ["hermes", "llama3_json", "mistral", "pythonic"]
    assert tool_call_format().name == "hermes" and tool_call_format().parse is parse_hermes


def test_an_unknown_parser_name_lists_the_supported_ones() -> None:
    with pytest.raises(ValueError, match="hermes, llama3_json, mistral, pythonic"):
        check_tool_call_parser("llama3")
    with pytest.raises(ValueError, match="unknown tool-call parser 'Hermes'"):
        tool_call_format("Hermes")


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("calls", EDGE_CALLS, ids=[f"case{i}" for i in range(len(EDGE_CALLS))])
def test_render_then_parse_gives_the_calls_back(name: str, calls: list[ToolCall]) -> None:
    fmt = tool_call_format(name)
    text = fmt.render(calls)
    parsed = fmt.parse(text)
    assert parsed.error is None, (text, parsed.error)
    assert parsed.tools_called and same(parsed, calls), text
    assert parsed.content is None


def test_renderings_look_like_each_family_writes_them() -> None:
    calls = [WEATHER, ToolCall("get_time", {})]
    assert tool_call_format("hermes").render(calls) == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    )
    assert tool_call_format("llama3_json").render(calls) == (
        '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "parameters": {}}'
    )
    assert tool_call_format("mistral").render(calls) == (
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]'
    )
    assert tool_call_format("pythonic").render(calls) == "[get_weather(city='Paris'), get_time()]"


@pytest.mark.parametrize("name", ["mistral"])
def test_content_before_the_calls_is_kept_where_vllm_keeps_it(name: str) -> None:
    text = "Let me check." + tool_call_format(name).render([WEATHER])
    parsed = tool_call_format(name).parse(text)
    assert same(parsed, [WEATHER]) and parsed.content == "Let me check."


def test_llama3_json_drops_text_around_the_objects() -> None:
    parsed = parse_llama3_json('Calling now: {"name": "get_weather", "arguments": {"city": "Paris"}} done.')
    assert same(parsed, [WEATHER]) and parsed.content is None


# --- plain text is content, not an error --------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
def test_text_without_a_call_is_content(name: str) -> None:
    text = "The weather in Paris is mild today."
    assert tool_call_format(name).parse(text) == ToolCallParse(False, [], text, None)
    assert tool_call_format(name).parse("") == ToolCallParse(False, [], "", None)


@pytest.mark.parametrize("name", FORMATS)
def test_other_formats_calls_are_not_calls(name: str) -> None:
    """Each format reads only its own calls; another family's call text is content (or its error)."""
    for other in FORMATS:
        if other == name or {name, other} == {"llama3_json", "hermes"} or {name, other} == {"llama3_json", "mistral"}:
            continue  # llama3_json reads any JSON object with a name, wherever it is
        parsed = tool_call_format(name).parse(tool_call_format(other).render([WEATHER]))
        assert not parsed.tool_calls, (name, other)


@pytest.mark.parametrize("name", FORMATS)
def test_non_text_is_an_error(name: str) -> None:
    parsed = tool_call_format(name).parse(None)  # type: ignore[arg-type]
    assert not parsed.tools_called and parsed.error


# --- llama3_json: vLLM's malformed cases --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"name": "get_weather", "arguments": {"city": }}', "invalid JSON"),
        ('{"arguments": {"city": "Paris"}}', 'missing "name"'),
        ('{"name": "get_weather"}', 'missing "arguments" (or "parameters")'),
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}; {"name": "f", "arguments": {"a": }}', "object 2"),
        ("Use {city} as the key.", "invalid JSON"),  # a stray brace: vLLM logs and returns the text
        # strict rules (vLLM would pass these on; the arguments check rejects them downstream)
        ('{"name": "get_weather", "arguments": "Paris"}', "must be a JSON object"),
        ('{"name": 7, "arguments": {}}', '"name" must be a string'),
        ('{"name": " ", "arguments": {}}', '"name" is empty'),
        ('{"name": "f", "arguments": {"a": 1, "a": 2}}', "duplicate key"),
        ('{"name": "f", "arguments": {"a": NaN}}', "NaN"),
    ],
)
def test_llama3_json_malformed_is_content_with_a_reason(text: str, reason: str) -> None:
    parsed = parse_llama3_json(text)
    assert parsed.tools_called is False and parsed.tool_calls == [] and parsed.content == text
    assert parsed.error is not None and reason in parsed.error


def test_llama3_json_needs_a_gap_between_objects_as_vllm_does() -> None:
    """vLLM skips a "{" right at the end of the previous object, then fails on the next one inside it."""
    glued = '{"name": "a", "arguments": {}}{"name": "b", "arguments": {"x": {}}}'
    assert parse_llama3_json(glued).error is not None
    spaced = '{"name": "a", "arguments": {}} {"name": "b", "arguments": {"x": {}}}'
    assert [c.name for c in parse_llama3_json(spaced).tool_calls] == ["a", "b"]


def test_llama3_json_accepts_the_python_tag_and_either_key() -> None:
    text = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert same(parse_llama3_json(text), [WEATHER])
    assert parse_llama3_json("<|python_tag|>no json") == ToolCallParse(False, [], "<|python_tag|>no json", None)


# --- mistral: vLLM's malformed cases ------------------------------------------------------------


def test_mistral_undecodable_calls_leave_the_text_after_the_token_as_content() -> None:
    parsed = parse_mistral('Sure. [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": }}]  ')
    assert not parsed.tool_calls and parsed.content == '[{"name": "get_weather", "arguments": {"city": }}]'
    assert parsed.error is not None and "invalid JSON" in parsed.error


def test_mistral_recovers_the_list_from_trailing_text_when_arguments_are_strings() -> None:
    text = '[TOOL_CALLS] [{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}] hope that helps'
    assert same(parse_mistral(text), [WEATHER])
    # vLLM keeps a recovered list's arguments decoded, which its FunctionCall (a string) refuses
    refused = parse_mistral('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}] thanks')
    assert not refused.tool_calls and refused.error is not None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('[TOOL_CALLS] [{"name": "a", "arguments": {}}] [TOOL_CALLS] [{"name": "b", "arguments": {}}]', "2 times"),
        ('[TOOL_CALLS] {"name": "a", "arguments": {}}', "expected a JSON list"),
        ('[TOOL_CALLS] [{"name": "a"}]', '"name" and "arguments"'),
        ('[TOOL_CALLS] [{"name": "a", "arguments": [1]}]', "must be a JSON object"),
        ('[TOOL_CALLS] [{"name": "a", "arguments": {"x": 9007199254740993}}]', "2**53"),
    ],
)
def test_mistral_wrong_shapes_are_errors_with_the_whole_text(text: str, reason: str) -> None:
    parsed = parse_mistral(text)
    assert not parsed.tools_called and parsed.content == text
    assert parsed.error is not None and reason in parsed.error


def test_mistral_an_empty_list_calls_nothing() -> None:
    parsed = parse_mistral("[TOOL_CALLS] []")
    assert parsed.tools_called and parsed.tool_calls == [] and parsed.error is None


# --- pythonic: vLLM's malformed cases -----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "get_weather(city='Paris')",  # not a list
        " [get_weather(city='Paris')]",  # vLLM's pattern must match from the first character
        "I will call [get_weather(city='Paris')]",
        "[get_weather('Paris')]",  # a positional argument first: not vLLM's pattern
        "[_private(x=1)]",  # names start with a letter
        "[weather.get(city='Paris')]",  # a dotted first call
        "[]",
        "[get_weather() , get_time()]",  # a space before the comma
        "[get_weather(**{'city': 'Paris'})]",
        "[get_weather(city='Paris'), 'oops']",  # no ")]" at the end
    ],
)
def test_pythonic_text_outside_vllms_pattern_is_content(text: str) -> None:
    assert parse_pythonic(text) == ToolCallParse(False, [], text, None)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[get_weather(city='Paris')] I hope that helps.", "not valid Python"),
        ("[get_weather(city='Paris'), 'oops', get_time()]", "list of function calls"),
        ("[get_weather(city=paris)]", "must be literals"),
        ("[get_weather(city='Par' + 'is')]", "must be literals"),
        ("[get_weather(city=b'Paris')]", "not JSON"),
        ("[get_time(zone='UTC'), get_weather(**{'city': 'Paris'})]", "** arguments"),
        ("[get_weather(city={x: 1})]", "keys must be literals"),
        ("[get_weather(n=1e999)]", "Infinity"),
        ("[get_weather(n=12345678901234567890)]", "2**53"),
    ],
)
def test_pythonic_malformed_is_content_with_a_reason(text: str, reason: str) -> None:
    parsed = parse_pythonic(text)
    assert not parsed.tools_called and parsed.content == text
    assert parsed.error is not None and reason in parsed.error


def test_pythonic_literals_as_vllm_reads_them() -> None:
    parsed = parse_pythonic("[f(a=(1, 2), b={'x'}, c=null, d=true, e=false, g=-1, h=+2.5, i=f'hi', j={1: 'one'})]")
    assert parsed.error is None
    assert parsed.tool_calls[0].arguments == {
        "a": [1, 2],
        "b": ["x"],
        "c": None,
        "d": True,
        "e": False,
        "g": -1,
        "h": 2.5,
        "i": "hi",
        "j": {"1": "one"},
    }


def test_pythonic_ignores_positional_arguments_after_the_first_call_as_vllm_does() -> None:
    parsed = parse_pythonic("[get_weather(city='Paris'), get_time('UTC')]")
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("get_weather", {"city": "Paris"}), ("get_time", {})]


def test_pythonic_pattern_check_is_fast_on_hostile_text() -> None:
    text = "[f(a=" + "x=1, " * 20000  # no closing ")]": vLLM's regex would backtrack here
    assert parse_pythonic(text) == ToolCallParse(False, [], text, None)
    nested = "[f(a=" + "[" * 500 + "]" * 500 + ")]"
    assert parse_pythonic(nested).error is not None  # too deep for Python's parser: an error, no crash


# --- quoting a failed attempt (agent.prompts) ---------------------------------------------------


def openai_call(name: Any, arguments: Any) -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize("name", FORMATS)
def test_a_failed_attempts_calls_are_quoted_in_the_models_format(name: str) -> None:
    calls = EDGE_CALLS[1] + EDGE_CALLS[4]
    message = prompts.failed_assistant_message(
        None, [openai_call(c.name, json.dumps(c.arguments)) for c in calls], tool_call_parser=name
    )
    parsed = tool_call_format(name).parse(message["content"])
    assert parsed.error is None and same(parsed, calls)


def test_hermes_quoting_is_unchanged() -> None:
    raw = openai_call("get_weather", '{"city": "Rome"}')
    text = 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    assert prompts.failed_assistant_message("Checking.", [raw])["content"] == text
    assert prompts.failed_assistant_message("Checking.", [raw], tool_call_parser="hermes")["content"] == text


@pytest.mark.parametrize("name", FORMATS)
def test_quoting_malformed_calls_never_raises(name: str) -> None:
    odd = [
        "not a call",
        openai_call("get_weather", '{"city": '),  # broken JSON arguments, quoted as sent
        openai_call(7, {"city": "Oslo"}),
        {"function": "nope"},
    ]
    content = prompts.failed_assistant_message("text", odd, tool_call_parser=name)["content"]
    assert content.startswith("text\n") and '{"city": ' in content and "not a call" in content
    tool_call_format(name).parse(content)  # whatever it makes of it, it does not raise


def test_quoting_with_an_unknown_parser_fails() -> None:
    with pytest.raises(ValueError, match="supported"):
        prompts.failed_assistant_message(None, [], tool_call_parser="json")


def test_every_format_has_a_marker_or_none() -> None:
    for fmt in TOOL_CALL_FORMATS.values():
        if fmt.marker is not None:
            assert fmt.marker in fmt.render([WEATHER])
