"""The execution verifier runs registered catalog functions in real subprocesses."""

from __future__ import annotations

import time

from tools.catalog.examples import FUNCTIONS
from tools.spec import ToolCall
from tools.verifiers.base import VerificationBudget
from tools.verify import ModelOutput, run_verifier, verify_execution


def out(*calls: ToolCall, parse_error: str | None = None) -> ModelOutput:
    return ModelOutput(tool_calls=list(calls), parse_error=parse_error)


def test_successful_calls_pass_with_their_results() -> None:
    verdict = verify_execution(
        out(ToolCall("add", {"a": 2, "b": 3}), ToolCall("get_weather", {"city": "Oslo", "unit": "fahrenheit"})),
        FUNCTIONS,
        timeout_s=10,
    )
    assert verdict.ok, verdict.reason
    results = verdict.details["results"]
    assert results[0] == {"call": 1, "name": "add", "result": 5}
    assert results[1]["name"] == "get_weather" and results[1]["result"]["unit"] == "fahrenheit"


def test_an_exception_fails_with_its_type_and_message() -> None:
    verdict = verify_execution(
        out(ToolCall("add", {"a": 1, "b": 1}), ToolCall("divide", {"a": 1, "b": 0})), FUNCTIONS, 10
    )
    assert not verdict.ok
    assert verdict.reason == "call 2 divide raised ZeroDivisionError: cannot divide by zero"
    assert verdict.details["results"] == [{"call": 1, "name": "add", "result": 2}]


def test_wrong_arguments_fail_with_the_type_error() -> None:
    verdict = verify_execution(out(ToolCall("add", {"a": 1, "c": 2})), FUNCTIONS, 10)
    assert not verdict.ok
    assert verdict.reason.startswith("call 1 add raised TypeError:") and "'c'" in verdict.reason


def test_a_call_that_runs_too_long_is_killed_and_fails() -> None:
    start = time.monotonic()
    verdict = verify_execution(out(ToolCall("wait", {"seconds": 30})), FUNCTIONS, timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert not verdict.ok
    assert verdict.reason == "call 1 wait: timed out after 1s"
    assert elapsed < 10  # the child was killed, not waited for


def test_an_unregistered_tool_fails() -> None:
    verdict = verify_execution(out(ToolCall("launch_rocket", {})), FUNCTIONS)
    assert not verdict.ok and verdict.reason == "call 1: tool 'launch_rocket' has no registered function"


def test_functions_outside_the_registered_modules_never_run() -> None:
    verdict = verify_execution(out(ToolCall("shell", {"command": "echo pwned"})), {"shell": "os:system"})
    assert not verdict.ok and "outside the registered tool modules" in verdict.reason
    verdict = verify_execution(out(ToolCall("f", {})), {"f": "tools.catalog.examples:_private"})
    assert not verdict.ok and "is not of the form" in verdict.reason


def test_a_missing_function_in_a_registered_module_fails_cleanly() -> None:
    verdict = verify_execution(out(ToolCall("f", {})), {"f": "tools.catalog.examples:nope"}, 10)
    assert not verdict.ok and verdict.reason.startswith("call 1 f raised AttributeError")


def test_tool_output_on_stdout_does_not_corrupt_the_result() -> None:
    verdict = verify_execution(
        out(ToolCall("say", {"sep": "-"})), {"say": "builtins:print"}, 10, allowed_modules=("builtins",)
    )
    assert verdict.ok and verdict.details["results"][0]["result"] is None


def test_no_call_or_a_parse_error_fails() -> None:
    assert verify_execution(out(), FUNCTIONS).reason == "the model made no tool call to execute"
    verdict = verify_execution(out(parse_error="bad json"), FUNCTIONS)
    assert not verdict.ok and verdict.reason == "malformed tool call: bad json"


def test_the_calls_of_one_answer_run_concurrently_and_keep_call_order_in_the_verdict() -> None:
    calls = [ToolCall("wait", {"seconds": 1.0}) for _ in range(4)] + [ToolCall("divide", {"a": 1, "b": 0})]
    start = time.monotonic()
    verdict = verify_execution(out(*calls), FUNCTIONS, 10)
    assert time.monotonic() - start < 3.0  # one after another: more than 4 s
    assert not verdict.ok and verdict.reason.startswith("call 5 divide raised ZeroDivisionError")
    assert [r["call"] for r in verdict.details["results"]] == [1, 2, 3, 4]


def test_distinct_execution_leaves_run_concurrently_and_repeated_ones_once() -> None:
    leaves = [{"type": "execution", "functions": {"wait": FUNCTIONS["wait"]}, "timeout_s": 10 + i} for i in range(6)]
    spec = {"type": "all", "of": leaves + leaves}
    start = time.monotonic()
    verdict = run_verifier(spec, out(ToolCall("wait", {"seconds": 1.0})), tools=[])
    assert verdict.ok, verdict.reason
    assert time.monotonic() - start < 4.0  # one after another: more than 12 s


def test_an_execution_target_is_stopped_when_the_request_budget_is_spent() -> None:
    budget = VerificationBudget(total_s=1.0)
    start = time.monotonic()
    verdict = verify_execution(out(ToolCall("wait", {"seconds": 30})), FUNCTIONS, 60, budget=budget)
    assert time.monotonic() - start < 5.0
    assert not verdict.ok and "verification budget of 1s is spent" in verdict.reason
    again = run_verifier({"type": "all", "of": ["relevance"]}, out(ToolCall("wait", {})), tools=[], budget=budget)
    assert not again.ok and "verification budget" in again.reason  # nothing runs once it is spent
