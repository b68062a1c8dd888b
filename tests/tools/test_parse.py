"""Hermes parsing (vLLM's non-streaming semantics), strict arguments, OpenAI messages (R9)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tools.parse import (
    MAX_NESTING,
    MAX_STRING_CHARS,
    HermesParse,
    parse_arguments,
    parse_hermes,
    parse_openai_tool_calls,
)
from tools.spec import ToolCall

CALL_F = '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
CALL_G = '<tool_call>\n{"name": "g", "arguments": {"city": "Zürich"}}\n</tool_call>'


# --- parse_hermes: well-formed ---------------------------------------------------------------


def test_text_without_tool_call_tag_is_content() -> None:
    text = "The weather is fine. I used a tool_call earlier."
    assert parse_hermes(text) == HermesParse(False, [], text, None)
    assert parse_hermes("") == HermesParse(False, [], "", None)


def test_one_block_gives_one_call_and_no_content() -> None:
    parsed = parse_hermes(CALL_F)
    assert parsed == HermesParse(True, [ToolCall("f", {"a": 1})], None, None)


def test_text_before_is_content_and_text_after_is_dropped() -> None:
    parsed = parse_hermes("Let me check.\n" + CALL_F + "\nDone, anything else?")
    assert parsed.tools_called and parsed.error is None
    assert parsed.content == "Let me check.\n"
    assert parsed.tool_calls == [ToolCall("f", {"a": 1})]


def test_whitespace_before_the_block_gives_no_content() -> None:
    assert parse_hermes("  \n\t" + CALL_F).content is None


def test_two_blocks_are_parallel_calls_in_order_and_text_between_is_dropped() -> None:
    parsed = parse_hermes(CALL_G + "\nand also\n" + CALL_F)
    assert parsed.tools_called
    assert [c.name for c in parsed.tool_calls] == ["g", "f"]
    assert parsed.tool_calls[0].arguments == {"city": "Zürich"}
    assert parsed.content is None


def test_an_unclosed_trailing_block_is_parsed() -> None:
    parsed = parse_hermes('Sure.<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n')
    assert parsed == HermesParse(True, [ToolCall("f", {"a": 1})], "Sure.", None)


def test_closed_then_unclosed_block() -> None:
    parsed = parse_hermes(CALL_F + '<tool_call>{"name": "g", "arguments": {}}')
    assert [c.name for c in parsed.tool_calls] == ["f", "g"]


# --- parse_hermes: malformed (all or nothing; whole raw text back as content) ----------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('<tool_call>{"name": "f", "arguments": {"a": 1}</tool_call>', "block 1: invalid JSON"),
        ('<tool_call>{"name": "f", "arguments": {"a": ', "block 1 (no closing </tool_call>): invalid JSON"),
        ('<tool_call>{"arguments": {}}</tool_call>', 'missing "name"'),
        ('<tool_call>{"name": "f"}</tool_call>', 'missing "arguments"'),
        ("<tool_call>[1, 2]</tool_call>", "got array"),
        ('<tool_call>{"name": 7, "arguments": {}}</tool_call>', '"name" must be a string'),
        ('<tool_call>{"name": " ", "arguments": {}}</tool_call>', '"name" is empty'),
        ("<tool_call></tool_call>", "invalid JSON"),
        (
            '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>',
            '"arguments" must be a JSON object, got string',
        ),
        ('<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>', "NaN"),
        ('<tool_call>{"name": "f", "arguments": {"x": 1, "x": 2}}</tool_call>', "duplicate key 'x'"),
        ('<tool_call>{"name": "f", "arguments": {"n": 123456789012345678901}}</tool_call>', "too many digits"),
        ('<tool_call>{"name": "f", "arguments": {}} trailing</tool_call>', "invalid JSON"),
    ],
)
def test_a_malformed_block_means_no_calls_and_raw_text_as_content(text: str, reason: str) -> None:
    parsed = parse_hermes("prefix " + text)
    assert not parsed.tools_called
    assert parsed.tool_calls == []
    assert parsed.content == "prefix " + text
    assert parsed.error is not None and reason in parsed.error


def test_a_malformed_second_block_discards_the_good_first_one() -> None:
    text = CALL_F + '\n<tool_call>\n{"name": "g", "arguments": {"city": }}\n</tool_call>'
    parsed = parse_hermes(text)
    assert parsed == HermesParse(False, [], text, parsed.error)
    assert parsed.error is not None and parsed.error.startswith("<tool_call> block 2: invalid JSON")


def test_a_tag_inside_a_block_follows_vllms_lazy_regex() -> None:
    # vLLM's <tool_call>(.*?)</tool_call> makes one body of "x<tool_call>{...}": malformed
    text = 'x<tool_call>oops<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    parsed = parse_hermes(text)
    assert not parsed.tools_called and parsed.content == text
    assert parsed.error is not None and "block 1" in parsed.error


def test_non_text_output_is_an_error_not_an_exception() -> None:
    parsed = parse_hermes(None)  # type: ignore[arg-type]
    assert not parsed.tools_called and parsed.error is not None


# --- parse_arguments ------------------------------------------------------------------------


def test_valid_arguments_parse_to_an_object() -> None:
    raw = '{"city": "Paris", "days": 3, "temp": -1.5, "tags": ["a", null, true], "opt": {"x": {}}, "z": "\\u0000"}'
    assert parse_arguments(raw) == (json.loads(raw), None)
    assert parse_arguments("  {}  ") == ({}, None)


def test_integers_at_the_safe_limit_are_accepted() -> None:
    assert parse_arguments(f'{{"n": {2**53}, "m": {-(2**53)}}}') == ({"n": 2**53, "m": -(2**53)}, None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('{"a": NaN}', "NaN is not valid JSON"),
        ('{"a": Infinity}', "Infinity is not valid JSON"),
        ('{"a": [-Infinity]}', "-Infinity is not valid JSON"),
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ('{"outer": {"k": 1, "k": 1}}', "duplicate key 'k'"),
        (f'{{"a": {2**53 + 1}}}', "outside ±2**53"),
        (f'{{"a": {-(2**53) - 1}}}', "outside ±2**53"),
        ('{"a": ' + "9" * 5000 + "}", "too many digits"),
        ('{"a": 1e400}', "out of range"),
        ('{"a": 0.' + "1" * 100 + "}", "longer than"),
        ("[1, 2]", "must be a JSON object, got array"),
        ('"text"', "got string"),
        ("42", "got integer"),
        ("null", "got null"),
        ('{"a": 1} {"b": 2}', "text after the JSON value"),
        ('{"a": 1}garbage', "text after the JSON value"),
        ('{"a": 1', "invalid JSON"),
        ("{'a': 1}", "invalid JSON"),
        ("", "empty JSON text"),
        ('{"a": "\\ud800"}', "lone surrogate"),
        ('{"\\udc00": 1}', "lone surrogate"),
        ('{"a": "' + "x" * (MAX_STRING_CHARS + 1) + '"}', "characters long"),
        ('{"a": ' + "[" * MAX_NESTING + "]" * MAX_NESTING + "}", "nested more than"),
        ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested more than"),
    ],
)
def test_strict_arguments_reject_with_a_reason(raw: str, reason: str) -> None:
    value, why = parse_arguments(raw)
    assert value is None
    assert why is not None and reason in why


def test_nesting_just_under_the_cap_is_accepted() -> None:
    raw = '{"a": ' + "[" * (MAX_NESTING - 1) + "]" * (MAX_NESTING - 1) + "}"
    assert parse_arguments(raw)[1] is None


@pytest.mark.parametrize("raw", [None, b'{"a": 1}', {"a": 1}, 3])
def test_non_string_arguments_are_a_reason_not_an_exception(raw: Any) -> None:
    value, why = parse_arguments(raw)
    assert value is None and why is not None and "JSON string" in why


# --- parse_openai_tool_calls ----------------------------------------------------------------


def wire(name: Any, arguments: Any, call_id: str = "chatcmpl-tool-0123456789abcdef") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_server_parsed_calls_are_decoded_with_ids() -> None:
    calls, error = parse_openai_tool_calls([wire("f", '{"a": 1}', "id1"), wire("g", '{"city": "Zürich"}', "id2")], None)
    assert error is None
    assert calls == [ToolCall("f", {"a": 1}, "id1"), ToolCall("g", {"city": "Zürich"}, "id2")]


def test_missing_and_empty_tool_calls_mean_no_calls() -> None:
    assert parse_openai_tool_calls(None, "Hello!") == ([], None)
    assert parse_openai_tool_calls([], None) == ([], None)


def test_malformed_arguments_name_the_call_and_the_problem_and_keep_good_calls() -> None:
    calls, error = parse_openai_tool_calls([wire("f", '{"a": 1}'), wire("g", '{"a": NaN}')], None)
    assert calls == [ToolCall("f", {"a": 1}, "chatcmpl-tool-0123456789abcdef")]
    assert error == "tool call 2: g: arguments: NaN is not valid JSON (NaN and Infinity are not allowed)"


@pytest.mark.parametrize(
    ("tool_calls", "reason"),
    [
        ([wire(None, "{}")], "missing function name"),
        ([wire("", "{}")], "missing function name"),
        ([{"id": "x", "type": "function"}], "missing function name"),
        ([wire("f", None)], "missing arguments"),
        ([wire("f", "")], "empty JSON text"),
        ([wire("f", "[]")], "got array"),
        ([wire("f", {"a": float("nan")})], "NaN"),
        ([{"type": "code_interpreter"}], "unsupported tool call type"),
        ([{"function": "f"}], '"function" must be an object'),
        ([42], "expected an object, got int"),
        ("not a list", "tool_calls must be a list"),
    ],
)
def test_bad_tool_call_shapes_give_reasons(tool_calls: Any, reason: str) -> None:
    calls, error = parse_openai_tool_calls(tool_calls, None)
    assert calls == []
    assert error is not None and reason in error


def test_arguments_given_as_an_object_are_accepted() -> None:
    assert parse_openai_tool_calls([wire("f", {"a": [1, 2]})], None) == (
        [ToolCall("f", {"a": [1, 2]}, "chatcmpl-tool-0123456789abcdef")],
        None,
    )


def test_tool_call_text_left_in_content_is_a_malformed_call() -> None:
    content = 'I will call it. <tool_call>\n{"name": "f", "arguments": {"a": }}\n</tool_call>'
    calls, error = parse_openai_tool_calls(None, content)
    assert calls == []
    assert error is not None and error.startswith("malformed tool call in content: <tool_call> block 1: invalid JSON")


def test_well_formed_tool_call_text_left_in_content_is_still_an_error() -> None:
    calls, error = parse_openai_tool_calls([], CALL_F)
    assert calls == []
    assert error is not None and "did not return as a tool call" in error


def test_plain_content_alongside_calls_is_fine() -> None:
    calls, error = parse_openai_tool_calls([wire("f", "{}")], "Calling f now.")
    assert error is None and [c.name for c in calls] == ["f"]


def test_hostile_objects_never_raise() -> None:
    class Hostile:
        def model_dump(self) -> dict[str, Any]:
            raise RuntimeError("boom")

    calls, error = parse_openai_tool_calls([Hostile()], 12)  # type: ignore[list-item, arg-type]
    assert calls == [] and error is not None and "unreadable tool call" in error


def test_sdk_like_objects_are_read_through_model_dump() -> None:
    class SDKCall:
        def model_dump(self) -> dict[str, Any]:
            return wire("f", '{"a": 2}', "sdk")

    assert parse_openai_tool_calls([SDKCall()], None) == ([ToolCall("f", {"a": 2}, "sdk")], None)  # type: ignore[list-item]
