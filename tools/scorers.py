"""The scorers of ``rrr eval``: ``reference`` (rrr's rules), ``bfcl`` (BFCL's verdict), ``exact`` (the paper's).

* ``reference`` — ``tools.verifiers.reference.verify_reference``, the verifier rrr serves with:
  BFCL's AST-checker rules made consistent at every depth (its module docstring lists each
  deliberate deviation from BFCL).
* ``bfcl`` — ``verify_bfcl``: the verdict of BFCL's own AST checker (gorilla's
  ``bfcl_eval.eval_checker.ast_eval.ast_checker`` with the relevance rules of its ``eval_runner``),
  quirks included, so a score compares with the leaderboard's. Written from its rules, not its code.
* ``exact`` — ``verify_exact``: the paper's exact match, the name and every argument equal to the
  reference's after JSON decoding.

BFCL's rules as ``verify_bfcl`` applies them (Python categories):

* no call expected (irrelevance): correct when the output holds no call, or does not parse;
* otherwise equal counts, then expected call by expected call the *first* unused model call that
  matches it (greedy, so an answer can fail although a one-to-one pairing exists);
* a call matches when its name is the offered one (rrr offers ``math_factorial`` for BFCL's
  ``math.factorial``, as BFCL expects of models whose API forbids dots; the dotted name fails),
  the schema's required parameters are present, every parameter is in both the schema and the
  reference, and each listed parameter without ``""`` among its acceptable values is given;
* a parameter's type comes from the schema (JSON ``number`` is BFCL's ``float``, ``object`` its
  ``dict``, no type its ``any``, which BFCL checks as a string); a top-level int becomes a float
  where a float is expected, and nowhere else; the value's Python type must be that type, or the
  type of the first acceptable value (BFCL's "variable": then the value is compared with ``==``,
  so ``"DontCare"`` is not ``"dontcare"``); an array's items must each have the items' type (or
  that of the first item of an acceptable list) unless an acceptable value is not a list (``""``);
* strings, the strings of a top-level list and the string values of a dict (of a dict parameter,
  or of the dicts of a list-of-dicts parameter) compare after BFCL's normalisation; everything
  else, inside dicts and nested lists included, with Python ``==`` (``20.0 == 20``, ``False == 0``,
  a nested dict never equals its wrapped acceptable form);
* ``""`` among an array parameter's acceptable values compares as ``[]``.

Not reproduced: BFCL's Java and JavaScript categories convert each (string) value from Java or
JavaScript source before comparing it; rrr types those parameters as strings and ``bfcl`` judges
them by the Python rules above. A union type in a schema counts as its first non-null member.

``exact``: the name equals the offered name (no dotted form); each given argument equals one
acceptable value exactly (``tools.verifiers.reference.same_value``: strings unnormalised, a bool
is never a number, numbers equal by value so ``5`` is ``5.0`` as in JSON, lists in order, dicts
with the same keys); no argument beyond the reference's; one that the reference marks with ``""``
may be left out. Parallel calls pair one-to-one in any order. The tool schemas are not consulted.
"""

from __future__ import annotations

from typing import Any

from tools.spec import ToolCall, ToolSpec
from tools.verifiers.base import ModelOutput, Problem, Verdict, clip, failed, failed_problem, failed_with, passed
from tools.verifiers.reference import (
    count_mismatch,
    normalize_expected,
    normalize_string,
    perfect_matching,
    same_value,
)

SCORERS = ("reference", "bfcl", "exact")
"""The scorers ``rrr eval score --scorer`` and ``rrr eval run --scorer`` take; ``reference`` is the default."""

_PY_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "array": list,
    "object": dict,
    "null": type(None),
}
_NO_SCHEMA = object()
"""The parameter's tool is unknown: its type is the type of its first acceptable value."""


def check_scorer(name: str) -> str:
    """``name`` if it is a scorer, else ValueError naming the choices."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r} (expected one of {', '.join(SCORERS)})")
    return name


def _py_type(schema: Any) -> type:
    """BFCL's Python type of a (JSON Schema) parameter; no type or an unknown one is BFCL's ``any``: str."""
    declared = schema.get("type") if isinstance(schema, dict) else None
    names = declared if isinstance(declared, list) else [declared]
    known = [n for n in names if isinstance(n, str) and n in _PY_TYPES]
    non_null = [n for n in known if n != "null"]
    return _PY_TYPES[(non_null or known or ["string"])[0]]


def _first_type(acceptable: list[Any]) -> type | None:
    """The type of the first acceptable value that is not the ``""`` marker (BFCL's "possible answer type")."""
    return next((type(a) for a in acceptable if a != ""), None)


def _types(schema: Any, acceptable: list[Any]) -> tuple[type, type | None]:
    """(expected type, items type or None) of a parameter."""
    if schema is _NO_SCHEMA:
        return _first_type(acceptable) or str, None
    expected = _py_type(schema)
    items = schema.get("items") if isinstance(schema, dict) else None
    return expected, _py_type(items) if expected is list and isinstance(items, dict) else None


def _std(value: Any) -> Any:
    return normalize_string(value) if type(value) is str else value


Mismatch = tuple[str, str]


def _items_typed(value: list[Any], acceptable: list[Any], items_type: type) -> bool:
    """BFCL's one-level nested type check: some acceptable value is not a list, or every item has
    the items' type or the type of that list's first item."""
    for candidate in acceptable:
        if not isinstance(candidate, list):
            return True
        own = _first_type(candidate)
        if all(type(v) is items_type or (own is not None and type(v) is own) for v in value):
            return True
    return False


def _dict_candidate(value: dict[str, Any], candidate: Any) -> Mismatch | None:
    if not isinstance(candidate, dict):
        return ("wrong_value", f"{clip(candidate)} is not an object")
    for key, item in value.items():
        if key not in candidate:
            return ("wrong_value", f"unexpected key {clip(key)}")
        options = candidate[key] if isinstance(candidate[key], list) else [candidate[key]]
        if _std(item) not in [_std(o) for o in options]:
            return ("wrong_value", f"key {clip(key)}: {clip(item)} is not one of {clip(options)}")
    for key, options in candidate.items():
        if key not in value and "" not in (options if isinstance(options, list) else [options]):
            return ("wrong_value", f"missing key {clip(key)}")
    return None


def _dict_check(value: dict[str, Any], acceptable: list[Any]) -> Mismatch | None:
    """A dict against each acceptable dict but ``""``: keys known, values (strings normalised) ``in`` their lists."""
    reason: Mismatch = ("wrong_value", f"{clip(value)} is not one of the acceptable values {clip(acceptable, 160)}")
    for candidate in acceptable:
        if candidate == "":
            continue
        found = _dict_candidate(value, candidate)
        if found is None:
            return None
        reason = found
    return reason


def _list_dict_check(value: list[Any], acceptable: list[Any]) -> Mismatch | None:
    """A list of dicts against each acceptable list, dict by dict in order (``""`` has length 0)."""
    reason: Mismatch = ("wrong_value", f"{clip(value)} is not one of the acceptable values {clip(acceptable, 160)}")
    for candidate in acceptable:
        if not isinstance(candidate, list | str):
            continue
        if len(value) != len(candidate):
            reason = ("wrong_value", f"expected {len(candidate)} objects, got {len(value)}")
            continue
        for index, (item, wanted) in enumerate(zip(value, candidate, strict=True)):
            found = _dict_check(item, [wanted]) if isinstance(item, dict) else ("wrong_value", "not an object")
            if found is not None:
                reason = (found[0], f"item {index}: {found[1]}")
                break
        else:
            return None
    return reason


def _list_check(value: list[Any], acceptable: list[Any]) -> Mismatch | None:
    """The list (top-level strings normalised) equals an acceptable one with ``==``; ``""`` is ``[]``."""
    given = [_std(v) for v in value]
    if any(isinstance(c, list | str) and given == [_std(v) for v in c] for c in acceptable):
        return None
    return ("wrong_value", f"{clip(value)} is not one of the acceptable values {clip(acceptable, 160)}")


def _check_value(value: Any, acceptable: list[Any], schema: Any) -> Mismatch | None:
    """BFCL's type check, then its comparison for the type; None when the value is accepted."""
    expected, items_type = _types(schema, acceptable)
    if expected is float and type(value) is int:
        value = float(value)
    answer_type = _first_type(acceptable)
    variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        if items_type is not None and isinstance(value, list) and not _items_typed(value, acceptable, items_type):
            return ("type_mismatch", f"expected an array of {items_type.__name__}, got {clip(value)}")
    elif answer_type is not None and type(value) is answer_type:
        variable = True
    else:
        return ("type_mismatch", f"expected type {expected.__name__}, got {type(value).__name__} {clip(value)}")
    if not variable:  # the value has the expected type
        if isinstance(value, dict):
            return _dict_check(value, acceptable)
        if isinstance(value, list) and items_type is dict:
            return _list_dict_check(value, acceptable)
        if isinstance(value, str):
            if normalize_string(value) in [normalize_string(a) for a in acceptable if type(a) is str]:
                return None
            return ("wrong_value", f"{clip(value)} is not one of the acceptable values {clip(acceptable, 160)}")
        if isinstance(value, list):
            return _list_check(value, acceptable)
    if value in acceptable:
        return None
    return ("wrong_value", f"{clip(value)} is not one of the acceptable values {clip(acceptable, 160)}")


def _bfcl_call(call: ToolCall, name: str, params: dict[str, list[Any]], tool: ToolSpec | None) -> Problem | None:
    """BFCL's simple-function check of one call against one expected call; None when it matches."""
    if call.name != name:
        return Problem("wrong_tool", f"expected a call to {name!r}, got {clip(call.name)}")
    if not isinstance(call.arguments, dict):
        return Problem("type_mismatch", f"{name}: arguments must be an object")
    properties: dict[str, Any] | None = None
    if tool is not None:
        found = tool.parameters.get("properties")
        properties = found if isinstance(found, dict) else {}
        declared = tool.parameters.get("required")
        required = [p for p in declared if isinstance(p, str)] if isinstance(declared, list) else []
    else:
        required = [param for param, acceptable in params.items() if "" not in acceptable]
    for param in required:
        if param not in call.arguments:
            return Problem("missing_argument", f"{name}: missing required parameter {param!r}", f"arguments.{param}")
    for param, value in call.arguments.items():
        if param not in params or (properties is not None and param not in properties):
            return Problem("unexpected_argument", f"{name}: unexpected parameter {clip(param)}", f"arguments.{param}")
        schema = properties[param] if properties is not None else _NO_SCHEMA
        reason = _check_value(value, params[param], schema)
        if reason:
            return Problem(reason[0], f"{name}: parameter {param!r}: {reason[1]}", f"arguments.{param}")
    for param, acceptable in params.items():
        if param not in call.arguments and "" not in acceptable:
            return Problem("missing_argument", f"{name}: missing parameter {param!r}", f"arguments.{param}")
    return None


def _exact_call(call: ToolCall, name: str, params: dict[str, list[Any]]) -> Problem | None:
    """The call is the expected one exactly; None when it is."""
    if call.name != name:
        return Problem("wrong_tool", f"expected a call to {name!r}, got {clip(call.name)}")
    if not isinstance(call.arguments, dict):
        return Problem("type_mismatch", f"{name}: arguments must be an object")
    for param, value in call.arguments.items():
        path = f"arguments.{param}"
        if param not in params:
            return Problem("unexpected_argument", f"{name}: unexpected parameter {clip(param)}", path)
        acceptable = params[param]
        if not any(same_value(value, a) for a in acceptable):
            types = {type(a) for a in acceptable if a != ""}
            numbers = {int, float}
            same_kind = type(value) in types or (type(value) in numbers and bool(types & numbers))
            code = "wrong_value" if same_kind or not types else "type_mismatch"
            message = f"{name}: parameter {param!r}: {clip(value)} is not exactly {clip(acceptable, 160)}"
            return Problem(code, message, path)
    for param, acceptable in params.items():
        if param not in call.arguments and "" not in acceptable:
            return Problem("missing_argument", f"{name}: missing parameter {param!r}", f"arguments.{param}")
    return None


def _unknown(problem: Problem, call: ToolCall, offered: set[str]) -> Problem:
    if problem.code == "wrong_tool" and offered and call.name not in offered:
        return Problem("unknown_tool", problem.message, problem.path)
    return problem


def _unmatched(
    index: int, name: str, calls: list[ToolCall], tried: list[tuple[ToolCall, Problem]], offered: set[str]
) -> Verdict:
    """The failed verdict for the expected call ``index`` (0-based) that no model call matches; a
    call to a tool the request did not offer comes first, as ``verify_reference`` reports it."""
    if len(calls) == 1:
        return failed_problem(tried[0][1])
    closest = next((p for c, p in tried if c.name == name), tried[0][1])
    problems = [
        Problem("unknown_tool", f"call {k} names unknown tool {clip(call.name)}")
        for k, call in enumerate(calls, start=1)
        if offered and call.name not in offered
    ]
    message = f"no call matches expected call {index + 1} ({name}): {closest.message}"
    problems.append(Problem(closest.code, message, closest.path))
    return failed_with(problems)


def verify_bfcl(output: ModelOutput, expected: Any, tools: list[ToolSpec] | None = None) -> Verdict:
    """BFCL's AST-checker verdict (see the module docstring); a malformed reference raises ValueError."""
    reference = normalize_expected(expected)
    if output.parse_error and not reference:
        return passed()  # BFCL: output that does not decode holds no call, right for an irrelevance item
    if output.parse_error:
        return failed(f"malformed tool call: {output.parse_error}", code="parse_error")
    calls = output.tool_calls
    counted = count_mismatch(output, reference, calls)
    if counted is not None:
        return counted
    by_name = {tool.name: tool for tool in tools or []}
    matched: list[int] = []
    for index, entry in enumerate(reference):
        name, params = next(iter(entry.items()))
        tried: list[tuple[ToolCall, Problem]] = []
        for k, call in enumerate(calls):
            if k in matched:
                continue
            problem = _bfcl_call(call, name, params, by_name.get(name))
            if problem is None:
                matched.append(k)
                break
            tried.append((call, _unknown(problem, call, set(by_name))))
        else:
            return _unmatched(index, name, calls, tried, set(by_name))
    return passed(matching=matched)


def verify_exact(output: ModelOutput, expected: Any, tools: list[ToolSpec] | None = None) -> Verdict:
    """The paper's exact match (see the module docstring); ``tools`` only tells unknown tools apart."""
    reference = normalize_expected(expected)
    if output.parse_error:
        return failed(f"malformed tool call: {output.parse_error}", code="parse_error")
    calls = output.tool_calls
    counted = count_mismatch(output, reference, calls)
    if counted is not None:
        return counted
    offered = {tool.name for tool in tools or []}
    rows = [
        [_exact_call(call, *next(iter(entry.items()))) for call in calls]
        for entry in reference  # (name, params) of each expected call
    ]
    assignment = perfect_matching([[problem is None for problem in row] for row in rows])
    if assignment is not None:
        return passed(matching=assignment)
    for index, row in enumerate(rows):
        if all(problem is not None for problem in row):
            name = next(iter(reference[index]))
            tried = [(c, _unknown(p, c, offered)) for c, p in zip(calls, row, strict=True) if p is not None]
            return _unmatched(index, name, calls, tried, offered)
    names = ", ".join(next(iter(entry)) for entry in reference)
    return failed(f"the calls cannot be paired one-to-one with the expected calls ({names})", code="wrong_value")
