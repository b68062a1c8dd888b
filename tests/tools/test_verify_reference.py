"""The reference verifier against BFCL's AST-checker rules, one known-good and one known-bad per rule."""

from __future__ import annotations

from typing import Any

import pytest

from tools.spec import ToolCall, ToolSpec
from tools.verify import (
    ModelOutput,
    expected_from_calls,
    normalize_expected,
    normalize_string,
    verify_reference,
)

SPEED = ToolSpec(
    "calculate_speed",
    parameters={
        "type": "object",
        "properties": {
            "distance": {"type": "number"},
            "time": {"type": "integer"},
            "unit": {"type": "string"},
            "round_trip": {"type": "boolean"},
        },
        "required": ["distance", "time"],
    },
)
SPEED_EXPECTED = [
    {"calculate_speed": {"distance": [100.0], "time": [5], "unit": ["km/h", ""], "round_trip": ["", False]}}
]


def out(*calls: ToolCall, parse_error: str | None = None) -> ModelOutput:
    return ModelOutput(tool_calls=list(calls), parse_error=parse_error)


def call(name: str, **arguments: Any) -> ToolCall:
    return ToolCall(name, arguments)


def check(expected: Any, *calls: ToolCall, tools: list[ToolSpec] | None = None) -> tuple[bool, str]:
    verdict = verify_reference(out(*calls), expected, tools)
    return verdict.ok, verdict.reason


# --- names and parameters -------------------------------------------------------------------


def test_exact_call_passes_with_and_without_tools() -> None:
    good = call("calculate_speed", distance=100.0, time=5, unit="km/h")
    assert check(SPEED_EXPECTED, good, tools=[SPEED]) == (True, "")
    assert check(SPEED_EXPECTED, good) == (True, "")


def test_function_name_must_match_exactly() -> None:
    ok, reason = check(SPEED_EXPECTED, call("calculate_Speed", distance=100.0, time=5))
    assert not ok and reason == "expected a call to 'calculate_speed', got 'calculate_Speed'"


def test_required_params_from_the_schema_must_be_present() -> None:
    # "" would allow omitting time, but the tool schema requires it
    expected = [{"calculate_speed": {"distance": [100.0], "time": [5, ""]}}]
    ok, reason = check(expected, call("calculate_speed", distance=100.0), tools=[SPEED])
    assert not ok and reason == "calculate_speed: missing required parameter 'time'"
    assert check(expected, call("calculate_speed", distance=100.0))[0]  # without the schema it may be omitted


def test_without_tools_required_means_no_empty_string_among_acceptable_values() -> None:
    ok, reason = check(SPEED_EXPECTED, call("calculate_speed", time=5))
    assert not ok and reason == "calculate_speed: missing required parameter 'distance'"


def test_a_param_not_in_the_expected_set_is_an_error() -> None:
    ok, reason = check(SPEED_EXPECTED, call("calculate_speed", distance=100.0, time=5, speed_of_light=True))
    assert not ok and reason == "calculate_speed: unexpected parameter 'speed_of_light'"


def test_a_param_listed_in_the_reference_but_not_the_schema_is_unexpected() -> None:
    expected = [{"calculate_speed": {"distance": [100.0], "time": [5], "extra": [1]}}]
    ok, reason = check(expected, call("calculate_speed", distance=100.0, time=5, extra=1), tools=[SPEED])
    assert not ok and "unexpected parameter 'extra'" in reason


def test_empty_string_means_optional_and_otherwise_a_listed_param_is_needed() -> None:
    assert check(SPEED_EXPECTED, call("calculate_speed", distance=100.0, time=5))[0]  # unit, round_trip omitted
    expected = [{"calculate_speed": {"distance": [100.0], "time": [5], "unit": ["km/h"]}}]
    ok, reason = check(expected, call("calculate_speed", distance=100.0, time=5), tools=[SPEED])
    assert not ok and reason == "calculate_speed: missing parameter 'unit'"


def test_an_optional_param_still_must_match_when_given() -> None:
    ok, reason = check(SPEED_EXPECTED, call("calculate_speed", distance=100.0, time=5, unit="mph"))
    assert not ok and reason == "calculate_speed: parameter 'unit': 'mph' is not 'km/h'"


# --- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["KM/H", "km h", "km_h", "km-h", "k.m/h*", "km^h"])
def test_strings_compare_after_bfcl_normalisation(given: str) -> None:
    assert check(SPEED_EXPECTED, call("calculate_speed", distance=100.0, time=5, unit=given))[0]


def test_normalisation_is_bfcls() -> None:
    assert normalize_string("April 1, 2024") == normalize_string("april 1 2024") == "april12024"
    assert normalize_string("it's") == 'it"s'
    assert normalize_string("New York") != normalize_string("Newark")


def test_single_quote_compares_as_double_quote() -> None:
    expected = [{"say": {"text": ['he said "hi"']}}]
    assert check(expected, call("say", text="he said 'hi'"))[0]
    assert not check(expected, call("say", text="he said hi!"))[0]


def test_int_accepted_where_a_float_is_expected_by_schema_or_by_acceptable_values() -> None:
    assert check(SPEED_EXPECTED, call("calculate_speed", distance=100, time=5), tools=[SPEED])[0]
    assert check(SPEED_EXPECTED, call("calculate_speed", distance=100, time=5))[0]  # 100.0 among acceptable
    ok, reason = check(SPEED_EXPECTED, call("calculate_speed", distance=101, time=5))
    assert not ok and "101 is not 100.0" in reason


def test_float_not_accepted_where_an_integer_is_expected() -> None:
    ok, reason = check(SPEED_EXPECTED, call("calculate_speed", distance=100.0, time=5.0), tools=[SPEED])
    assert not ok and reason == "calculate_speed: parameter 'time': expected type integer, got number 5.0"
    ok, reason = check(SPEED_EXPECTED, call("calculate_speed", distance=100.0, time=5.0))
    assert not ok and "expected an integer, got float" in reason


def test_bool_is_never_an_int_or_a_float() -> None:
    assert not check([{"f": {"n": [1]}}], call("f", n=True))[0]
    assert not check([{"f": {"x": [1.0]}}], call("f", x=True))[0]
    ok, reason = check(SPEED_EXPECTED, call("calculate_speed", distance=True, time=5), tools=[SPEED])
    assert not ok and "expected type number, got boolean" in reason
    assert not check([{"f": {"flag": [True]}}], call("f", flag=1))[0]
    assert check([{"f": {"flag": [True]}}], call("f", flag=True))[0]


def test_one_of_several_acceptable_values_is_enough() -> None:
    expected = [{"f": {"city": ["New York", "NYC"], "n": [3, 4]}}]
    assert check(expected, call("f", city="nyc", n=4))[0]
    ok, reason = check(expected, call("f", city="Boston", n=4))
    assert not ok and "is not one of the acceptable values" in reason


def test_lists_compare_in_order_element_by_element() -> None:
    expected = [{"f": {"cities": [["Paris", "Rome"]], "weights": [[1.0, 2.5]]}}]
    assert check(expected, call("f", cities=["paris", "ROME"], weights=[1, 2.5]))[0]
    ok, reason = check(expected, call("f", cities=["Rome", "Paris"], weights=[1, 2.5]))
    assert not ok and "parameter 'cities': item 0" in reason
    ok, reason = check(expected, call("f", cities=["Paris"], weights=[1, 2.5]))
    assert not ok and "expected 2 items, got 1" in reason
    assert not check(expected, call("f", cities="Paris, Rome", weights=[1, 2.5]))[0]


def test_nested_dicts_compare_key_by_key_with_their_own_acceptable_lists() -> None:
    expected = [{"book": {"guest": [{"name": ["Ann Lee"], "age": [30, ""], "vip": ["", False]}]}}]
    assert check(expected, call("book", guest={"name": "ann lee", "age": 30}))[0]
    assert check(expected, call("book", guest={"name": "Ann Lee"}))[0]  # optional keys left out
    ok, reason = check(expected, call("book", guest={"name": "Ann Lee", "age": 31}))
    assert not ok and "parameter 'guest': key 'age': 31 is not 30" in reason
    ok, reason = check(expected, call("book", guest={"name": "Ann Lee", "room": 2}))
    assert not ok and "unexpected key 'room'" in reason
    ok, reason = check(expected, call("book", guest={"age": 30}))
    assert not ok and "missing key 'name'" in reason


def test_lists_of_dicts_compare_each_dict_in_order() -> None:
    expected = [{"order": {"items": [[{"sku": ["A1"], "qty": [2]}, {"sku": ["B2"], "qty": [1, ""]}]]}}]
    assert check(expected, call("order", items=[{"sku": "a1", "qty": 2}, {"sku": "B2"}]))[0]
    ok, reason = check(expected, call("order", items=[{"sku": "B2"}, {"sku": "a1", "qty": 2}]))
    assert not ok and "item 0" in reason


# --- parallel calls and irrelevance ---------------------------------------------------------


PARALLEL = [{"get_weather": {"city": ["Paris"]}}, {"get_weather": {"city": ["Rome"]}}, {"get_time": {"tz": ["UTC"]}}]


def test_parallel_calls_match_in_any_order() -> None:
    calls = [call("get_time", tz="utc"), call("get_weather", city="Rome"), call("get_weather", city="Paris")]
    verdict = verify_reference(out(*calls), PARALLEL)
    assert verdict.ok and verdict.details["matching"] == [2, 1, 0]


def test_parallel_count_mismatch_fails() -> None:
    ok, reason = check(PARALLEL, call("get_weather", city="Rome"), call("get_weather", city="Paris"))
    assert not ok and reason.startswith("expected 3 tool call(s)") and "got 2" in reason
    ok, _ = check(PARALLEL[:1], call("get_weather", city="Paris"), call("get_weather", city="Paris"))
    assert not ok


def test_parallel_wrong_value_names_the_unmatched_expected_call() -> None:
    calls = [call("get_time", tz="UTC"), call("get_weather", city="Rome"), call("get_weather", city="Berlin")]
    ok, reason = check(PARALLEL, *calls)
    assert not ok
    assert reason.startswith("no call matches expected call 1 (get_weather): get_weather: parameter 'city'")


def test_parallel_matching_is_a_full_bipartite_match_not_greedy() -> None:
    # expected call 1 accepts either city, expected call 2 only Paris: greedy would give Paris to 1 and fail
    expected = [{"get_weather": {"city": ["Paris", "Rome"]}}, {"get_weather": {"city": ["Paris"]}}]
    verdict = verify_reference(out(call("get_weather", city="Paris"), call("get_weather", city="Rome")), expected)
    assert verdict.ok and verdict.details["matching"] == [1, 0]


def test_parallel_duplicates_need_one_call_each() -> None:
    expected = [{"f": {"x": [1, 2]}}, {"f": {"x": [1]}}]
    ok, reason = check(expected, call("f", x=1), call("f", x=3))
    assert not ok and "x" in reason


def test_irrelevance_is_correct_only_without_calls() -> None:
    assert check(
        [],
    )[0]
    ok, reason = check([], call("get_weather", city="Paris"))
    assert not ok and reason.startswith("no tool call was expected") and "get_weather" in reason


def test_a_missing_call_fails() -> None:
    ok, reason = check(SPEED_EXPECTED)
    assert not ok and reason == "expected a call to calculate_speed, but the model made no tool call"


def test_a_parse_error_fails_with_its_reason() -> None:
    verdict = verify_reference(out(parse_error="tool call 1: f: arguments: duplicate key 'a'"), SPEED_EXPECTED)
    assert not verdict.ok and verdict.reason.endswith("duplicate key 'a'")


# --- expected shapes ------------------------------------------------------------------------


def test_expected_from_calls_wraps_plain_calls() -> None:
    wrapped = expected_from_calls(
        [
            ToolCall("f", {"a": 1, "tags": ["x"], "opts": {"k": "v", "inner": {"z": 2}}}),
            {"type": "function", "function": {"name": "g", "arguments": '{"city": "Paris"}'}},
        ]
    )
    assert wrapped == [
        {"f": {"a": [1], "tags": [["x"]], "opts": [{"k": ["v"], "inner": [{"z": [2]}]}]}},
        {"g": {"city": ["Paris"]}},
    ]
    original = out(
        ToolCall("f", {"a": 1, "tags": ["X"], "opts": {"k": "V", "inner": {"z": 2}}}), call("g", city="paris")
    )
    assert verify_reference(original, wrapped).ok
    assert not verify_reference(out(call("f", a=1, tags=["x"], opts={"k": "v"}), call("g", city="Paris")), wrapped).ok


def test_plain_calls_are_accepted_directly_as_expected() -> None:
    assert check([{"name": "g", "arguments": {"city": "Paris"}}], call("g", city="Paris"))[0]
    assert normalize_expected([{"g": {"city": ["Paris"]}}]) == [{"g": {"city": ["Paris"]}}]


@pytest.mark.parametrize("bad", ["f", [{"f": {"x": 1}, "g": {}}], [3], [{"name": ""}]])
def test_a_malformed_reference_is_a_value_error(bad: Any) -> None:
    with pytest.raises(ValueError):
        verify_reference(out(call("f", x=1)), bad)
