"""The failure taxonomy: every failed verdict carries one code of `FAILURE_CODES` (and the argument
path where one applies); each verifier gives the code its examples call for; `rrr eval score` on
mutated BFCL predictions maps each mutation to its code."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tools.formats import load_dataset
from tools.score import score_predictions
from tools.spec import ToolCall, ToolSpec
from tools.verifiers.base import FAILURE_CODES, Verdict, VerificationBudget, failed
from tools.verify import (
    ModelOutput,
    VerifierSpec,
    run_verifier,
    verify_countdown,
    verify_execution,
    verify_reference,
    verify_relevance,
    verify_schema,
)

WEATHER = ToolSpec(
    "get_weather",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer"},
        },
        "required": ["city"],
        "additionalProperties": False,
    },
)
TIME = ToolSpec("get_time", parameters={"type": "object", "properties": {"tz": {"type": "string"}}})
TOOLS = [WEATHER, TIME]
PARIS = {"get_weather": {"city": ["Paris"], "unit": ["", "celsius"]}}


def out(*calls: ToolCall, content: str | None = None, parse_error: str | None = None) -> ModelOutput:
    return ModelOutput(tool_calls=list(calls), content=content, parse_error=parse_error)


def call(name: str = "get_weather", **arguments: Any) -> ToolCall:
    return ToolCall(name, arguments)


def code_of(verdict: Verdict) -> tuple[str | None, str | None]:
    assert not verdict.ok and verdict.code in FAILURE_CODES, verdict
    return verdict.code, verdict.path


SCHEMA_CASES = [
    ("parse_error", out(parse_error="invalid JSON"), "auto", None),
    ("unexpected_call", out(call(city="Paris")), "none", None),
    ("no_call", out(content="It is sunny."), "required", None),
    ("no_call", out(content="It is sunny."), {"type": "function", "function": {"name": "get_weather"}}, None),
    ("wrong_tool", out(call("get_time", tz="UTC")), {"type": "function", "function": {"name": "get_weather"}}, None),
    ("unknown_tool", out(call("get_wether", city="Paris")), "auto", None),
    ("missing_argument", out(call(unit="celsius")), "auto", "arguments.city"),
    ("unexpected_argument", out(call(city="Paris", country="FR")), "auto", "arguments.country"),
    ("type_mismatch", out(call(city="Paris", days="3")), "auto", "arguments.days"),
    ("schema_violation", out(call(city="Paris", unit="kelvin")), "auto", "arguments.unit"),
    ("schema_violation", out(call(city="P" * 41)), "auto", "arguments.city"),
]


@pytest.mark.parametrize(("code", "output", "tool_choice", "path"), SCHEMA_CASES)
def test_schema_gives_each_code_with_its_argument_path(
    code: str, output: ModelOutput, tool_choice: Any, path: Any
) -> None:
    assert code_of(verify_schema(output, TOOLS, tool_choice)) == (code, path)


def test_schema_reasons_are_unchanged_by_the_codes() -> None:
    verdict = verify_schema(out(call(unit="celsius")), TOOLS)
    assert verdict.reason == "call 1 get_weather: $: 'city' is a required property (required)"
    verdict = verify_schema(out(call(city="Paris", country="FR")), TOOLS)
    assert "call 1 get_weather: $: Additional properties are not allowed" in verdict.reason


REFERENCE_CASES = [
    ("parse_error", out(parse_error="invalid JSON"), [PARIS], None),
    ("unexpected_call", out(call(city="Paris")), [], None),
    ("no_call", out(content="Sunny."), [PARIS], None),
    ("wrong_call_count", out(call(city="Paris"), call("get_time", tz="UTC")), [PARIS], None),
    ("wrong_tool", out(call("get_time", tz="UTC")), [PARIS], None),
    ("unknown_tool", out(call("weather", city="Paris")), [PARIS], None),
    ("missing_argument", out(call(unit="celsius")), [PARIS], "arguments.city"),
    ("unexpected_argument", out(call(city="Paris", days=3)), [PARIS], "arguments.days"),
    ("type_mismatch", out(call(city=7)), [PARIS], "arguments.city"),
    ("wrong_value", out(call(city="London")), [PARIS], "arguments.city"),
    ("wrong_value", out(call(city="Paris", unit="fahrenheit")), [PARIS], "arguments.unit"),
]


@pytest.mark.parametrize(("code", "output", "expected", "path"), REFERENCE_CASES)
def test_reference_gives_each_code_with_its_argument_path(
    code: str, output: ModelOutput, expected: Any, path: Any
) -> None:
    assert code_of(verify_reference(output, expected, TOOLS)) == (code, path)


def test_reference_without_the_tool_list_calls_a_renamed_function_the_wrong_tool() -> None:
    assert code_of(verify_reference(out(call("weather", city="Paris")), [PARIS])) == ("wrong_tool", None)


def test_a_parallel_mismatch_keeps_the_code_of_the_closest_call() -> None:
    expected = [PARIS, {"get_time": {"tz": ["UTC"]}}]
    verdict = verify_reference(out(call("get_time", tz="CET"), call(city="Paris")), expected, TOOLS)
    assert code_of(verdict) == ("wrong_value", "arguments.tz") and "expected call 2" in verdict.reason


def test_execution_relevance_countdown_and_specs_codes() -> None:
    functions = {"add": "tools.catalog.examples:add", "divide": "tools.catalog.examples:divide"}
    assert code_of(verify_execution(out(content="no"), functions)) == ("no_call", None)
    assert code_of(verify_execution(out(parse_error="bad"), functions)) == ("parse_error", None)
    assert code_of(verify_execution(out(call("mul", a=1, b=2)), functions)) == ("unknown_tool", None)
    assert code_of(verify_execution(out(call("divide", a=1, b=0)), functions)) == ("execution_error", None)
    wait = {"wait": "tools.catalog.examples:wait"}
    assert code_of(verify_execution(out(call("wait", seconds=5)), wait, timeout_s=0.5)) == ("timeout", None)
    assert verify_execution(out(call("add", a=1, b=2)), functions).ok

    assert code_of(verify_relevance(out())) == ("no_call", None)
    assert code_of(verify_relevance(out(parse_error="bad"))) == ("parse_error", None)

    assert code_of(verify_countdown("no answer here", [1, 2], 3)) == ("parse_error", None)
    assert code_of(verify_countdown("<answer>1 + 1</answer>", [1, 2], 3)) == ("rule_violation", None)
    assert code_of(verify_countdown("<answer>2 - 1</answer>", [1, 2], 3)) == ("wrong_value", None)
    assert verify_countdown("<answer>1 + 2</answer>", [1, 2], 3).ok

    reference = VerifierSpec.parse({"type": "reference"})
    assert code_of(run_verifier(reference, out(call(city="Paris")), tools=TOOLS)) == ("verifier_error", None)
    spent = VerificationBudget(total_s=0.0)
    schema = VerifierSpec.parse({"type": "schema"})
    assert code_of(run_verifier(schema, out(call(city="Paris")), tools=TOOLS, budget=spent)) == ("timeout", None)
    both = VerifierSpec.parse({"type": "all", "of": [{"type": "schema"}, {"type": "reference"}]})
    verdict = run_verifier(both, out(call(city="Paris", days="3")), tools=TOOLS, expected=[PARIS])
    assert code_of(verdict) == ("type_mismatch", "arguments.days") and verdict.details["failed"] == "schema"


def test_a_truncated_output_is_truncated_not_a_parse_error() -> None:
    from agent.loop import TaskOptions, verify_message

    cut = {"role": "assistant", "content": '<tool_call>\n{"name": "get_weather", "argu'}
    options = TaskOptions(verifier=VerifierSpec.parse({"type": "schema"}))
    verdict = verify_message(cut, "length", tools=TOOLS, tool_choice="auto", options=options)
    assert code_of(verdict) == ("truncated", None)
    verdict = verify_message(
        {"role": "assistant", "content": "<tool_call>{oops</tool_call>"},
        "stop",
        tools=TOOLS,
        tool_choice="auto",
        options=options,
    )
    assert code_of(verdict) == ("parse_error", None)


def test_the_set_is_closed_and_round_trips() -> None:
    with pytest.raises(ValueError, match="unknown failure code"):
        failed("something", code="bad_vibes")
    verdict = verify_schema(out(call(unit="celsius")), TOOLS)
    again = Verdict.from_dict(verdict.to_dict())
    assert again == verdict and again.code == "missing_argument"
    assert Verdict.from_dict({"ok": False, "reason": "old row", "code": "made_up"}).code is None


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BFCL = f"bfcl:{FIXTURES / 'bfcl' / 'BFCL_v3_sample.json'}"


def test_eval_score_maps_each_bfcl_mutation_to_its_code() -> None:
    items = [i for i in load_dataset(BFCL) if not i.extra.get("relevance") and len(i.reference_calls()) == 1]
    assert items
    for item in items:
        good = item.reference_calls()[0]
        tool = next(t for t in item.tools if t.name == good.name)
        required = [p for p in tool.parameters.get("required", []) if p in good.arguments]
        mutations: dict[str, list[ToolCall]] = {"renamed": [ToolCall(good.name + "_v2", good.arguments)]}
        if required:
            dropped = copy.deepcopy(good.arguments)
            del dropped[required[0]]
            mutations["dropped"] = [ToolCall(good.name, dropped)]
        mutations["added"] = [ToolCall(good.name, {**good.arguments, "zz_extra": 1})]
        changed = next(
            (k for k, v in good.arguments.items() if isinstance(v, str | int) and not isinstance(v, bool)), None
        )
        if changed is not None:
            value = good.arguments[changed]
            other = value + "_x" if isinstance(value, str) else value + 1
            mutations["changed"] = [ToolCall(good.name, {**good.arguments, changed: other})]
        wanted = {
            "renamed": ("unknown_tool", None),
            "dropped": ("missing_argument", f"arguments.{required[0]}" if required else None),
            "added": ("unexpected_argument", "arguments.zz_extra"),
            "changed": ("wrong_value", f"arguments.{changed}"),
        }
        for name, calls in mutations.items():
            (row,) = score_predictions([item], {item.id: calls}).items
            assert (row["code"], row["path"]) == wanted[name], (item.id, name, row)


def test_calling_the_same_tool_again_right_after_its_result_is_a_repeated_call() -> None:
    from agent.loop import TaskOptions, verify_message

    options = TaskOptions(verifier=VerifierSpec.parse({"type": "schema"}))
    asked = [{"role": "user", "content": "Weather in Paris?"}]
    called = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    }
    result = {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 21}'}
    again = {"role": "assistant", "content": None, "tool_calls": called["tool_calls"]}

    def judge(message: dict[str, Any], conversation: list[dict[str, Any]]) -> Verdict:
        return verify_message(
            message, "stop", tools=TOOLS, tool_choice="auto", options=options, conversation=conversation
        )

    loop = judge(again, [*asked, called, result])
    assert code_of(loop) == ("repeated_call", None) and "answer from the result" in loop.reason
    assert judge({"role": "assistant", "content": "It is 21 °C in Paris."}, [*asked, called, result]).ok
    other = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'}}
        ],
    }
    assert judge(other, [*asked, called, result]).ok  # the next call, not the same one
    assert judge(again, asked).ok  # no result yet: the first call is no repeat
