"""Compare tool calls with a reference answer using BFCL's AST-checker semantics (rrr's own rules).

Expected calls have BFCL's ground-truth shape ``[{fname: {param: [acceptable values]}}]``; an
empty list means the request is irrelevant to the tools and only "no call" is correct. Rules (the
BFCL checker for Python, made consistent at every depth):

* the function name matches exactly; required parameters (the tool schema's ``required`` when the
  tool is known, else every parameter whose acceptable list lacks ``""``) are present;
* a parameter the reference does not list (or the schema does not define) is an error; a ``""``
  among the acceptable values lets the parameter be omitted, and lets an array parameter be ``[]``;
* strings compare after BFCL's normalisation (drop spaces and ``,./-_*^``, lower-case, ``'`` as ``"``);
* an int is accepted where a float is expected (schema type ``number``, or a float among the
  acceptable values); a bool is never an int or a float;
* a value of a type the schema does not allow is accepted only if it equals one acceptable value
  exactly (BFCL's "variable" case: a placeholder such as ``"dontcare"`` for an integer parameter);
* lists compare in order, element by element with these rules; a dict in the acceptable values
  maps each key to its own list of acceptable values (``""`` = the key may be left out);
* parallel calls match in any order, with equal counts.

Deliberate deviations from BFCL's own checker (``tools.scorers.verify_bfcl`` reproduces those,
``rrr eval score --scorer bfcl``), each because BFCL's behaviour depends on where a value sits:

* types are strict at every depth: BFCL compares values inside a dict and inside nested lists
  with Python ``==`` (``20.0 == 20``, ``False == 0``); here a bool is never a number and a float is
  never an integer anywhere;
* int for float is accepted at every depth: BFCL converts only a top-level value (``[1, 3]`` fails
  against ``[1.0, 3.0]`` when the items are floats);
* strings are normalised at every depth: BFCL normalises a top-level string, the strings of a
  top-level list and the string values of a dict, but not a list inside a dict or a nested list;
* a dict inside a dict compares key by key (BFCL compares it with ``==`` against the wrapped form);
* parallel calls are paired by a full bipartite match: BFCL pairs greedily, expected call by
  expected call with the first model call that fits, and so fails some answers a pairing exists for;
* a dotted BFCL name is accepted in its original form as well (``math.factorial`` besides the
  ``math_factorial`` rrr offers; ``tools.score``); BFCL accepts one of the two, per model;
* an output that does not parse fails, irrelevance items included (BFCL counts it as "no call",
  which is right for an irrelevance item).
"""

from __future__ import annotations

import re
from typing import Any

from tools.spec import ToolCall, ToolSpec
from tools.verifiers.base import ModelOutput, Problem, Verdict, clip, failed, failed_problem, failed_with, passed

Expected = list[dict[str, dict[str, list[Any]]]]
MAX_CALLS = 128
_BFCL_STRIP = re.compile(r"[ ,./\-_*^]")
_TYPE_ALIASES = {"float": "number", "dict": "object", "tuple": "array", "list": "array", "int": "integer",
                 "str": "string", "bool": "boolean", "any": None}  # fmt: skip


def _wrap(value: Any) -> Any:
    """A plain value as an acceptable value: dict keys get their own acceptable lists."""
    if isinstance(value, dict):
        return {key: [_wrap(item)] for key, item in value.items()}
    if isinstance(value, list):
        return [_wrap(item) for item in value]
    return value


def expected_from_calls(calls: list[ToolCall | dict[str, Any]]) -> Expected:
    """Wrap plain calls (xLAM/OpenAI style, one value per parameter) into BFCL's expected shape."""
    out: Expected = []
    for call in calls:
        tool_call = call if isinstance(call, ToolCall) else ToolCall.from_dict(call)
        out.append({tool_call.name: {param: [_wrap(value)] for param, value in tool_call.arguments.items()}})
    return out


def _is_bfcl_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and len(entry) == 1
        and isinstance(next(iter(entry.values())), dict)
        and all(isinstance(acc, list) for acc in next(iter(entry.values())).values())
    )


def normalize_expected(expected: Any) -> Expected:
    """Accept BFCL-shaped entries and plain calls (mixed); ValueError for anything else."""
    if not isinstance(expected, list):
        raise ValueError(f"expected calls must be a list, got {type(expected).__name__}")
    out: Expected = []
    for index, entry in enumerate(expected, start=1):
        if _is_bfcl_entry(entry):
            out.append(entry)
            continue
        try:
            out += expected_from_calls([entry])
        except ValueError as exc:
            raise ValueError(
                f"expected call {index} is neither {{name: {{param: [values]}}}} nor a tool call: {exc}"
            ) from None
    if len(out) > MAX_CALLS:
        raise ValueError(f"at most {MAX_CALLS} expected calls are supported")
    return out


def normalize_string(text: str) -> str:
    """BFCL's string standardisation."""
    return _BFCL_STRIP.sub("", text).lower().replace("'", '"')


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _schema_types(schema: Any) -> set[str]:
    """The JSON types a (possibly BFCL-typed) schema allows; empty = any."""
    if not isinstance(schema, dict):
        return set()
    declared = schema.get("type")
    types = declared if isinstance(declared, list) else [declared]
    out = set()
    for name in types:
        if isinstance(name, str):
            mapped = _TYPE_ALIASES.get(name, name)
            if mapped is None:
                return set()
            out.add(mapped)
    return out


def _has_type(value: Any, json_type: str) -> bool:
    actual = _json_type(value)
    return actual == json_type or (json_type == "number" and actual == "integer")


def _sub(schema: Any, keyword: str, key: str | None = None) -> Any:
    node = schema.get(keyword) if isinstance(schema, dict) else None
    if key is not None:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _as_list(acceptable: Any) -> list[Any]:
    return acceptable if isinstance(acceptable, list) else [acceptable]


Mismatch = tuple[str, str]
"""(failure code, message): ``type_mismatch`` or ``wrong_value`` for a value, more for a call."""


def _type(message: str) -> Mismatch:
    return ("type_mismatch", message)


def _value(message: str) -> Mismatch:
    return ("wrong_value", message)


def _nested(prefix: str, inner: Mismatch) -> Mismatch:
    return (inner[0], f"{prefix}: {inner[1]}")


# Complexity: BFCL's value rules, one branch each.
def _match(value: Any, acceptable: Any, schema: Any, float_ok: bool) -> Mismatch | None:  # noqa: C901
    """None if ``value`` matches one acceptable value, else the code and why not."""
    float_ok = float_ok or "number" in _schema_types(schema) or isinstance(acceptable, float)
    if isinstance(acceptable, dict):
        if not isinstance(value, dict):
            return _type(f"expected an object, got {_json_type(value)}")
        for key, item in value.items():
            if key not in acceptable:
                return _value(f"unexpected key {clip(key)}")
            reason = _match_any(item, _as_list(acceptable[key]), _sub(schema, "properties", key), False)
            if reason:
                return _nested(f"key {clip(key)}", reason)
        for key, options in acceptable.items():
            if key not in value and "" not in _as_list(options):
                return _value(f"missing key {clip(key)}")
        return None
    if isinstance(acceptable, list):
        if not isinstance(value, list):
            return _type(f"expected an array, got {_json_type(value)}")
        if len(value) != len(acceptable):
            return _value(f"expected {len(acceptable)} items, got {len(value)}")
        items = _sub(schema, "items")
        for index, (item, wanted) in enumerate(zip(value, acceptable, strict=True)):
            reason = _match(item, wanted, items, False)
            if reason:
                return _nested(f"item {index}", reason)
        return None
    if isinstance(acceptable, str):
        if not isinstance(value, str):
            return _type(f"expected a string, got {_json_type(value)}")
        return (
            None
            if normalize_string(value) == normalize_string(acceptable)
            else _value(f"{clip(value)} is not {clip(acceptable)}")
        )
    if isinstance(acceptable, bool) or acceptable is None:
        if type(value) is not type(acceptable):
            return _type(f"expected {_json_type(acceptable)}, got {_json_type(value)}")
        return None if value == acceptable else _value(f"{clip(value)} is not {clip(acceptable)}")
    if isinstance(acceptable, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return _type(f"expected a number, got {_json_type(value)}")
        if isinstance(value, float) and not float_ok:
            return _type(f"expected an integer, got float {clip(value)}")
        return None if value == acceptable else _value(f"{clip(value)} is not {clip(acceptable)}")
    return ("verifier_error", f"unsupported acceptable value {clip(acceptable)}")


def _match_any(value: Any, acceptable: list[Any], schema: Any, float_ok: bool) -> Mismatch | None:
    float_ok = float_ok or any(isinstance(a, float) for a in acceptable)
    reasons: list[Mismatch] = []
    for candidate in acceptable:
        if candidate == "" and not isinstance(value, str):
            continue  # the "may be omitted" marker; only an explicit "" matches it
        reason = _match(value, candidate, schema, float_ok)
        if reason is None:
            return None
        if candidate != "":
            reasons.append(reason)
    if len(reasons) == 1:
        return reasons[0]
    code = "type_mismatch" if reasons and all(r[0] == "type_mismatch" for r in reasons) else "wrong_value"
    return (code, f"{clip(value)} is not one of the acceptable values {clip(acceptable, 160)}")


def same_value(value: Any, acceptable: Any) -> bool:
    """Exact equality of JSON values: no string normalisation, a bool is not a number, 5 == 5.0;
    a dict in BFCL's acceptable shape maps each key to its own acceptable list (``""`` = may be left out)."""
    if isinstance(acceptable, dict):
        if not isinstance(value, dict) or any(key not in acceptable for key in value):
            return False
        return all(
            any(same_value(value[key], option) for option in _as_list(options))
            if key in value
            else "" in _as_list(options)
            for key, options in acceptable.items()
        )
    if isinstance(acceptable, list):
        return (
            isinstance(value, list)
            and len(value) == len(acceptable)
            and all(same_value(v, a) for v, a in zip(value, acceptable, strict=True))
        )
    if isinstance(acceptable, bool) or isinstance(value, bool) or not isinstance(acceptable, int | float):
        return type(value) is type(acceptable) and value == acceptable
    return isinstance(value, int | float) and value == acceptable


def _is_array(schema: Any, acceptable: list[Any]) -> bool:
    """An array parameter: by its schema, or without a schema type by its other acceptable values."""
    types = _schema_types(schema)
    if types:
        return "array" in types
    others = [a for a in acceptable if a != ""]
    return bool(others) and all(isinstance(a, list) for a in others)


def _check_param(value: Any, acceptable: list[Any], schema: Any) -> Mismatch | None:
    if value == [] and "" in acceptable and _is_array(schema, acceptable):
        return None  # an optional array may be given empty (BFCL: "" compares as an empty list)
    types = _schema_types(schema)
    if types and not any(_has_type(value, t) for t in types):
        # BFCL's "variable" case: a value of the reference's own type (a placeholder such as
        # "dontcare" for an integer) is accepted only if it equals an acceptable value exactly
        reference_types = {_json_type(a) for a in acceptable if a != ""}
        if _json_type(value) not in reference_types:
            return _type(f"expected type {'/'.join(sorted(types))}, got {_json_type(value)} {clip(value)}")
        if any(same_value(value, a) for a in acceptable if a != ""):
            return None
        return _value(f"{clip(value)} is not exactly one of the acceptable values {clip(acceptable, 160)}")
    return _match_any(value, acceptable, schema, False)


def check_call(call: ToolCall, name: str, params: dict[str, list[Any]], tool: ToolSpec | None) -> Problem | None:
    """BFCL's simple-function check of one call against one expected call; None when it matches."""
    if call.name != name:
        return Problem("wrong_tool", f"expected a call to {name!r}, got {clip(call.name)}")
    if not isinstance(call.arguments, dict):
        return Problem("type_mismatch", f"{name}: arguments must be an object, got {_json_type(call.arguments)}")
    properties = _sub(tool.parameters, "properties") if tool is not None else None
    if tool is not None:
        declared = tool.parameters.get("required")
        required = [p for p in declared if isinstance(p, str)] if isinstance(declared, list) else []
    else:
        required = [param for param, acceptable in params.items() if "" not in acceptable]
    for param in required:
        if param not in call.arguments:
            return Problem("missing_argument", f"{name}: missing required parameter {param!r}", f"arguments.{param}")
    for param, value in call.arguments.items():
        if param not in params or (isinstance(properties, dict) and param not in properties):
            return Problem("unexpected_argument", f"{name}: unexpected parameter {clip(param)}", f"arguments.{param}")
        schema = properties.get(param) if isinstance(properties, dict) else None
        reason = _check_param(value, params[param], schema)
        if reason:
            return Problem(reason[0], f"{name}: parameter {param!r}: {reason[1]}", f"arguments.{param}")
    for param, acceptable in params.items():
        if param not in call.arguments and "" not in acceptable:
            return Problem("missing_argument", f"{name}: missing parameter {param!r}", f"arguments.{param}")
    return None


def perfect_matching(ok: list[list[bool]]) -> list[int] | None:
    """Kuhn's augmenting paths: for each expected call, the index of its model call, or None."""
    n = len(ok)
    owner = [-1] * n  # model call -> expected call

    def augment(i: int, seen: list[bool]) -> bool:
        for j in range(n):
            if ok[i][j] and not seen[j]:
                seen[j] = True
                if owner[j] == -1 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in range(n):
        if not augment(i, [False] * n):
            return None
    assigned = [0] * n
    for j, i in enumerate(owner):
        assigned[i] = j
    return assigned


def count_mismatch(output: ModelOutput, reference: list[dict[str, Any]], calls: list[ToolCall]) -> Verdict | None:
    """The verdict when the calls cannot match for their number alone; None when the counts agree."""
    if not reference:
        if calls:
            return failed(
                "no tool call was expected (the request is irrelevant to the tools), "
                f"but the model called {output.describe_calls()}",
                code="unexpected_call",
            )
        return passed()
    names = ", ".join(next(iter(entry)) for entry in reference)
    if not calls:
        return failed(f"expected a call to {names}, but the model made no tool call", code="no_call")
    if len(calls) != len(reference) or len(calls) > MAX_CALLS:
        return failed(
            f"expected {len(reference)} tool call(s) ({names}), got {len(calls)} ({output.describe_calls()})",
            code="wrong_call_count",
        )
    return None


# Complexity: BFCL's call-level rules, one branch each.
def verify_reference(output: ModelOutput, expected: Any, tools: list[ToolSpec] | None = None) -> Verdict:
    """Pass if the calls match the reference answer (BFCL AST semantics, parallel order-free).

    ``expected`` is BFCL-shaped (plain calls are wrapped); a malformed reference raises ValueError.
    """
    reference = normalize_expected(expected)
    if output.parse_error:
        return failed(f"malformed tool call: {output.parse_error}", code="parse_error")
    calls = output.tool_calls
    counted = count_mismatch(output, reference, calls)
    if counted is not None:
        return counted
    names = ", ".join(next(iter(entry)) for entry in reference)
    by_name = {tool.name: tool for tool in tools or []}
    reasons = []
    for entry in reference:
        name, params = next(iter(entry.items()))
        reasons.append([_unknown(check_call(call, name, params, by_name.get(name)), call, by_name) for call in calls])
    assignment = perfect_matching([[reason is None for reason in row] for row in reasons])
    if assignment is not None:
        return passed(matching=assignment)
    if len(calls) == 1:
        assert reasons[0][0] is not None
        return failed_problem(reasons[0][0])
    problems = [
        Problem("unknown_tool", f"call {k} names unknown tool {clip(call.name)}")
        for k, call in enumerate(calls, start=1)
        if by_name and call.name not in by_name
    ]
    for i, row in enumerate(reasons):
        if all(reason is not None for reason in row):
            name = next(iter(reference[i]))
            same_name = [reason for call, reason in zip(calls, row, strict=True) if call.name == name]
            closest = (same_name or [r for r in row if r])[0]
            assert closest is not None
            message = f"no call matches expected call {i + 1} ({name}): {closest.message}"
            problems.append(Problem(closest.code, message, closest.path))
    if not problems:  # every expected call matches some call, but not all at once
        message = f"the calls cannot be paired one-to-one with the expected calls ({names})"
        problems.append(Problem("wrong_value", message))
    return failed_with(problems)


def _unknown(problem: Problem | None, call: ToolCall, by_name: dict[str, ToolSpec]) -> Problem | None:
    """A call to a tool the request did not offer is `unknown_tool`, not merely the wrong one."""
    if problem is not None and problem.code == "wrong_tool" and by_name and call.name not in by_name:
        return Problem("unknown_tool", problem.message, problem.path)
    return problem
