"""Serialisable verifier specs: canonical forms, clear errors, dispatch, composition, re-runnability."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tools.catalog.examples import FUNCTIONS
from tools.spec import ToolCall, ToolSpec
from tools.verify import ModelOutput, Verdict, is_rerunnable, normalize_spec, run_verifier

TOOLS = [
    ToolSpec(
        "add",
        parameters={
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    ),
    ToolSpec("divide", parameters={"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}),
]
EXECUTION = {
    "type": "execution",
    "functions": {"add": FUNCTIONS["add"], "divide": FUNCTIONS["divide"]},
    "timeout_s": 10,
}


def out(*calls: ToolCall, content: str | None = None, parse_error: str | None = None) -> ModelOutput:
    return ModelOutput(tool_calls=list(calls), content=content, parse_error=parse_error)


# --- normalize_spec -------------------------------------------------------------------------


def test_names_and_objects_normalise_to_canonical_json() -> None:
    assert normalize_spec("schema") == {"type": "schema"}
    assert normalize_spec({"type": "reference"}) == {"type": "reference"}
    assert normalize_spec('{"type": "countdown", "nums": [1, 2], "target": 3}') == {
        "type": "countdown",
        "nums": [1, 2],
        "target": 3,
    }
    assert normalize_spec({"type": "execution", "functions": {"b": FUNCTIONS["add"], "a": FUNCTIONS["divide"]}}) == {
        "type": "execution",
        "functions": {"a": FUNCTIONS["divide"], "b": FUNCTIONS["add"]},
        "timeout_s": 5.0,
    }
    composed = normalize_spec({"type": "all", "of": ["schema", {"type": "reference"}]})
    assert composed == {"type": "all", "of": [{"type": "schema"}, {"type": "reference"}]}
    assert json.loads(json.dumps(composed)) == composed
    assert normalize_spec(composed) == composed


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("magic", "unknown verifier type 'magic'"),
        ({"type": "schema", "strict": True}, "does not take 'strict'"),
        ({"kind": "schema"}, "unknown verifier type None"),
        (3, "a verifier spec is a name or an object"),
        ("{not json", "not valid JSON"),
        ("execution", 'needs "functions"'),
        ({"type": "execution", "functions": {"f": "no_colon"}}, "is not of the form"),
        ({"type": "execution", "functions": {"f": "os:system"}}, "outside the registered tool modules"),
        ({"type": "execution", "functions": {"f": FUNCTIONS["add"]}, "timeout_s": 0}, "timeout_s"),
        ({"type": "execution", "functions": {"f": FUNCTIONS["add"]}, "timeout_s": 3600}, "timeout_s"),
        ({"type": "execution", "functions": {"f": FUNCTIONS["add"]}, "timeout_s": True}, "timeout_s"),
        ({"type": "countdown", "nums": [], "target": 3}, "nums"),
        ({"type": "countdown", "nums": [1, "2"], "target": 3}, "nums"),
        ({"type": "countdown", "nums": [1, -2], "target": 3}, "nums"),
        ({"type": "countdown", "nums": [1, 2], "target": "3"}, "target"),
        ({"type": "countdown", "nums": [1, 2], "target": float("inf")}, "target"),
        ({"type": "all", "of": []}, '"of"'),
        ({"type": "all", "of": ["schema", "bogus"]}, "unknown verifier type 'bogus'"),
        (
            {
                "type": "all",
                "of": [
                    {
                        "type": "all",
                        "of": [{"type": "all", "of": [{"type": "all", "of": [{"type": "all", "of": ["schema"]}]}]}],
                    }
                ],
            },
            "nest at most",
        ),
    ],
)
def test_bad_specs_raise_value_errors_that_say_what_to_change(spec: Any, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_spec(spec)
    assert fragment in str(info.value)


# --- run_verifier ---------------------------------------------------------------------------


def test_schema_spec_dispatches_with_tool_choice() -> None:
    good = out(ToolCall("add", {"a": 1, "b": 2}))
    assert run_verifier("schema", good, tools=TOOLS).ok
    verdict = run_verifier("schema", good, tools=TOOLS, tool_choice="none")
    assert not verdict.ok and 'tool_choice is "none"' in verdict.reason
    assert not run_verifier("schema", out(ToolCall("add", {"a": "1"})), tools=TOOLS).ok


def test_reference_spec_needs_expected_calls() -> None:
    verdict = run_verifier("reference", out(ToolCall("add", {"a": 1, "b": 2})), tools=TOOLS)
    assert verdict == Verdict(False, "no expected calls", code="verifier_error")
    assert run_verifier(
        "reference", out(ToolCall("add", {"a": 1, "b": 2})), tools=TOOLS, expected=[{"add": {"a": [1], "b": [2]}}]
    ).ok
    assert run_verifier("reference", out(content="Not a math question."), tools=TOOLS, expected=[]).ok


def test_execution_and_countdown_specs_dispatch() -> None:
    assert run_verifier(EXECUTION, out(ToolCall("add", {"a": 1, "b": 2})), tools=TOOLS).ok
    failing = run_verifier(EXECUTION, out(ToolCall("divide", {"a": 1, "b": 0})), tools=TOOLS)
    assert not failing.ok and "ZeroDivisionError" in failing.reason
    countdown = {"type": "countdown", "nums": [2, 3], "target": 6}
    assert run_verifier(countdown, out(content="<answer>2*3</answer>"), tools=[]).ok
    assert not run_verifier(countdown, out(content="<answer>2+3</answer>"), tools=[]).ok


def test_composition_needs_every_part_and_reports_the_first_failure() -> None:
    spec = {"type": "all", "of": ["schema", EXECUTION]}
    assert run_verifier(spec, out(ToolCall("add", {"a": 1, "b": 2})), tools=TOOLS).ok

    schema_fails = run_verifier(spec, out(ToolCall("add", {"a": 1})), tools=TOOLS)
    assert not schema_fails.ok and "'b' is a required property" in schema_fails.reason
    assert schema_fails.details["failed"] == "schema" and schema_fails.details["failed_index"] == 0

    execution_fails = run_verifier(spec, out(ToolCall("divide", {"a": 1, "b": 0})), tools=TOOLS)
    assert not execution_fails.ok and execution_fails.reason.startswith("call 1 divide raised ZeroDivisionError")
    assert execution_fails.details["failed"] == "execution" and execution_fails.details["failed_index"] == 1


def test_composition_with_reference_and_no_expected_fails() -> None:
    verdict = run_verifier(
        {"type": "all", "of": ["schema", "reference"]}, out(ToolCall("add", {"a": 1, "b": 2})), tools=TOOLS
    )
    assert not verdict.ok and verdict.reason == "no expected calls" and verdict.details["failed"] == "reference"


@pytest.mark.parametrize(
    "spec",
    [
        "schema",
        "reference",
        EXECUTION,
        {"type": "countdown", "nums": [1], "target": 1},
        {"type": "all", "of": ["schema", "reference"]},
    ],
)
@pytest.mark.parametrize(
    "output",
    [
        out(parse_error="<tool_call> block 1: invalid JSON"),
        out(ToolCall("nope", {"x": float("nan")})),
        out(ToolCall("add", {"a": {"deep": [[[]]]}, "b": None, "c": "x" * 10_000}), content="<answer>"),
        out(content=None),
    ],
)
def test_bad_model_output_never_raises(spec: Any, output: ModelOutput) -> None:
    verdict = run_verifier(spec, output, tools=TOOLS, tool_choice="required", expected=[{"add": {"a": [1], "b": [2]}}])
    assert not verdict.ok and verdict.reason
    json.dumps(verdict.to_dict(), allow_nan=True)


def test_a_bad_spec_raises_even_for_good_output() -> None:
    with pytest.raises(ValueError):
        run_verifier({"type": "execution", "functions": {"add": "os:system"}}, out(ToolCall("add", {})), tools=TOOLS)


# --- is_rerunnable --------------------------------------------------------------------------


def test_is_rerunnable() -> None:
    assert is_rerunnable("schema", None)
    assert is_rerunnable(EXECUTION, None)
    assert is_rerunnable({"type": "countdown", "nums": [1], "target": 1}, None)
    assert is_rerunnable("reference", [{"f": {}}])
    assert is_rerunnable("reference", [])  # irrelevance is a reference too
    assert not is_rerunnable("reference", None)
    assert is_rerunnable({"type": "all", "of": ["schema", EXECUTION]}, None)
    assert not is_rerunnable({"type": "all", "of": ["schema", "reference"]}, None)
    assert not is_rerunnable("magic", None)
    assert not is_rerunnable({"type": "execution", "functions": {"f": "os:system"}}, None)


def test_a_verifier_spec_is_parsed_once_into_a_typed_value_that_round_trips() -> None:
    from tools.verify import SCHEMA, VerifierSpec

    spec = VerifierSpec.parse({"type": "all", "of": ["schema", {"type": "countdown", "nums": [1, 2], "target": 3}]})
    assert (spec.kind, [p.kind for p in spec.parts]) == ("all", ["schema", "countdown"])
    assert VerifierSpec.parse(spec.to_json()) == spec and VerifierSpec.parse(spec) is spec
    assert spec.to_json() == normalize_spec(spec.to_json())
    assert VerifierSpec.parse("schema") == SCHEMA and not SCHEMA.math and not SCHEMA.needs_reference
    # math: countdown problems only, the same rule for serving and for training prompts
    assert VerifierSpec.parse({"type": "countdown", "nums": [1], "target": 1}).math
    assert spec.math  # the server policy's schema check rides along with a client's countdown
    assert not VerifierSpec.parse(
        {"type": "all", "of": ["reference", {"type": "countdown", "nums": [1], "target": 1}]}
    ).math
    reference = VerifierSpec.parse({"type": "all", "of": ["schema", "reference"]})
    assert reference.needs_reference and not reference.rerunnable(None) and reference.rerunnable([])
    assert SCHEMA.rerunnable(None)
    with pytest.raises(ValueError, match="unknown verifier type"):
        VerifierSpec.parse("nope")


def test_the_tool_choice_default_lives_in_one_place() -> None:
    from tools.verify import effective_tool_choice

    assert effective_tool_choice(None, True) == "auto" and effective_tool_choice(None, False) == "none"
    assert effective_tool_choice("required", True) == "required"
