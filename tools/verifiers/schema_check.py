"""The default verifier: calls name offered tools, arguments satisfy their schemas, tool_choice holds.

Needs no reference answer, so it runs on every request. A wrong tool choice, an unknown tool or a
schema violation is a failed verdict whose reason names the call, the parameter and the rule.
"""

from __future__ import annotations

from typing import Any

from tools.schema import Violation, compile_tools
from tools.spec import ToolSpec
from tools.verifiers.base import ModelOutput, Problem, Verdict, clip, failed, failed_with, passed

MAX_LISTED_TOOLS = 10
KEYWORD_CODES = {
    "required": "missing_argument",
    "dependentRequired": "missing_argument",
    "additionalProperties": "unexpected_argument",
    "unevaluatedProperties": "unexpected_argument",
    "type": "type_mismatch",
    "unvalidated": "verifier_error",
}
"""The failure code of a schema keyword's violation; any other keyword is a `schema_violation`."""


def argument_path(json_path: str) -> str:
    """``$.origin`` (a JSON path inside the arguments) as the verdict's path: ``arguments.origin``."""
    return "arguments" + json_path[1:] if json_path.startswith("$") else f"arguments.{json_path}"


def violation_problem(index: int, name: str, violation: Violation) -> Problem:
    code = "timeout" if violation.timed_out else KEYWORD_CODES.get(violation.keyword, "schema_violation")
    shown = violation.path.rsplit(".", 1)[0] if code in ("missing_argument", "unexpected_argument") else violation.path
    suffix = "" if violation.keyword == "unvalidated" else f" ({violation.keyword})"
    return Problem(code, f"call {index} {name}: {shown}: {violation.message}{suffix}", argument_path(violation.path))


def parse_tool_choice(tool_choice: str | dict[str, Any], tools: list[ToolSpec]) -> str | tuple[str, str]:
    """``"none" | "auto" | "required"`` or ``("function", name)``; ValueError for anything else."""
    if isinstance(tool_choice, str):
        if tool_choice in ("none", "auto", "required"):
            return tool_choice
        raise ValueError(f"invalid tool_choice {tool_choice!r}: use 'none', 'auto', 'required' or a named function")
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str) and name:
            if name not in {tool.name for tool in tools}:
                raise ValueError(f"tool_choice names {name!r}, which is not among the offered tools")
            return ("function", name)
    raise ValueError('invalid tool_choice: a named choice is {"type": "function", "function": {"name": ...}}')


def effective_tool_choice(tool_choice: str | dict[str, Any] | None, has_tools: bool) -> str | dict[str, Any]:
    """OpenAI's (and vLLM's) default when a request leaves `tool_choice` out: `auto` with tools, else `none`.
    The one place rrr applies it (the loop, the learner's reward, the engines' wire rules)."""
    if tool_choice is not None:
        return tool_choice
    return "auto" if has_tools else "none"


def verify_schema(output: ModelOutput, tools: list[ToolSpec], tool_choice: str | dict[str, Any] = "auto") -> Verdict:
    """Pass if the calls are allowed by ``tool_choice``, name offered tools and fit their schemas.

    Raises ValueError (SchemaError) only for a bad ``tool_choice`` or tool list, never for output.
    """
    choice = parse_tool_choice(tool_choice, tools)
    compiled = compile_tools(tools)
    if output.parse_error:
        return failed(f"malformed tool call: {output.parse_error}", code="parse_error")
    calls = output.tool_calls
    if choice == "none" and calls:
        return failed(f'tool_choice is "none" but the model called {output.describe_calls()}', code="unexpected_call")
    if choice == "required" and not calls:
        return failed('tool_choice is "required" but the model made no tool call', code="no_call")
    if isinstance(choice, tuple):
        forced = choice[1]
        if not calls:
            return failed(f"tool_choice requires a call to {forced!r} but the model made no tool call", code="no_call")
        for index, call in enumerate(calls, start=1):
            if call.name != forced:
                code = "wrong_tool" if call.name in compiled else "unknown_tool"
                return failed(f"call {index} is to {clip(call.name)} but tool_choice allows only {forced!r}", code=code)

    problems: list[Problem] = []
    for index, call in enumerate(calls, start=1):
        validator = compiled.get(call.name)
        if validator is None:
            offered = ", ".join(list(compiled)[:MAX_LISTED_TOOLS]) or "none"
            message = f"call {index} names unknown tool {clip(call.name)}; offered tools: {offered}"
            problems.append(Problem("unknown_tool", message))
            continue
        problems += [violation_problem(index, call.name, v) for v in validator.violations(call.arguments)]
    if problems:
        return failed_with(problems)
    return passed(calls=len(calls))
