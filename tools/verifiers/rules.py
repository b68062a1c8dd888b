"""The `rules` verifier: small declarative cross-argument rules, evaluated without `eval`.

A rule is one expression over a call's arguments and constants: comparisons (``<``, ``<=``, ``>``,
``>=``, ``==``, ``!=``, ``in``, ``not in``, chained as in Python), ``and`` / ``or`` / ``not``,
parentheses, and literals (numbers, strings, booleans, null as ``None``, lists of literals). Names
are argument names; ``arguments.x`` is the same as ``x``. E.g. ``check_in < check_out``,
``amount <= 500``, ``currency in ["EUR", "USD"]``. Rules are parsed when the spec is (a bad rule is
a ValueError naming it) into a small tree walked here; nothing is ever passed to ``eval``. A rule
whose arguments are absent from a call is not applicable (the schema verifier judges missing
arguments); values that cannot be compared (a string against a number) break the rule. A broken
rule is ``rule_violation`` at the path of its first argument.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

from tools.verifiers.base import ModelOutput, Problem, Verdict, clip, failed, failed_with, passed

MAX_RULES = 32
MAX_RULE_CHARS = 500
MAX_NODES = 64

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


class _NotApplicable(Exception):
    """An argument the rule names is not in the call."""


class _Incomparable(Exception):
    pass


def _check_node(node: ast.AST, rule: str) -> None:  # noqa: C901 (one branch per allowed node kind)
    if isinstance(node, ast.Expression):
        _check_node(node.body, rule)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            _check_node(value, rule)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        _check_node(node.operand, rule)
    elif isinstance(node, ast.Compare):
        if not all(type(op) in _COMPARE for op in node.ops):
            raise ValueError(f"rule {rule!r}: only < <= > >= == != in, not in compare")
        for part in [node.left, *node.comparators]:
            _check_node(part, rule)
    elif isinstance(node, ast.Name):
        pass
    elif isinstance(node, ast.Attribute):
        if not (isinstance(node.value, ast.Name) and node.value.id == "arguments"):
            raise ValueError(f"rule {rule!r}: only arguments.<name> may be dotted")
    elif isinstance(node, ast.Constant):
        if not isinstance(node.value, str | int | float | bool) and node.value is not None:
            raise ValueError(f"rule {rule!r}: literals are numbers, strings, booleans or None")
    elif isinstance(node, ast.List | ast.Tuple):
        for item in node.elts:
            _check_node(item, rule)
    else:
        raise ValueError(f"rule {rule!r}: {type(node).__name__} is not allowed in a rule")


def parse_rule(rule: Any) -> ast.Expression:
    """The checked syntax tree of one rule; ValueError says what is wrong with it."""
    if not isinstance(rule, str) or not rule.strip() or len(rule) > MAX_RULE_CHARS:
        raise ValueError(f"a rule is a non-empty string of at most {MAX_RULE_CHARS} characters")
    try:
        tree = ast.parse(rule.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"rule {rule!r} is not a valid expression") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ValueError(f"rule {rule!r} is too long (at most {MAX_NODES} parts)")
    _check_node(tree, rule)
    if not isinstance(tree.body, ast.Compare | ast.BoolOp | ast.UnaryOp):
        raise ValueError(f"rule {rule!r} must be a comparison (e.g. 'amount <= 500')")
    return tree


def names_in(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            found.append(node.attr)
        elif isinstance(node, ast.Name) and node.id != "arguments":
            found.append(node.id)
    return found


def _value(node: ast.AST, arguments: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name | ast.Attribute):
        name = node.id if isinstance(node, ast.Name) else node.attr
        if name not in arguments:
            raise _NotApplicable(name)
        return arguments[name]
    if isinstance(node, ast.List | ast.Tuple):
        return [_value(item, arguments) for item in node.elts]
    if isinstance(node, ast.UnaryOp):
        operand = _value(node.operand, arguments)
        if isinstance(node.op, ast.Not):
            return not operand
        if isinstance(operand, bool) or not isinstance(operand, int | float):
            raise _Incomparable(f"-{clip(operand)}")
        return -operand
    if isinstance(node, ast.BoolOp):
        values = (_value(v, arguments) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    assert isinstance(node, ast.Compare)
    left = _value(node.left, arguments)
    for op, right_node in zip(node.ops, node.comparators, strict=True):
        right = _value(right_node, arguments)
        try:
            if not _COMPARE[type(op)](left, right):
                return False
        except TypeError:
            raise _Incomparable(f"{clip(left)} and {clip(right)} cannot be compared") from None
        left = right
    return True


def verify_rules(output: ModelOutput, rules: list[str], *, tool: str | None = None) -> Verdict:
    """Pass if every rule holds for every call (of ``tool``, if given) where it applies."""
    if output.parse_error:
        return failed(f"malformed tool call: {output.parse_error}", code="parse_error")
    trees = [(rule, parse_rule(rule)) for rule in rules]
    problems: list[Problem] = []
    for index, call in enumerate(output.tool_calls, start=1):
        if (tool is not None and call.name != tool) or not isinstance(call.arguments, dict):
            continue
        for rule, tree in trees:
            names = names_in(tree)
            path = f"arguments.{names[0]}" if names else None
            try:
                holds = bool(_value(tree.body, call.arguments))
            except _NotApplicable:
                continue
            except _Incomparable as exc:
                problems.append(Problem("rule_violation", f"call {index} {call.name}: rule {rule!r}: {exc}", path))
                continue
            if not holds:
                shown = ", ".join(f"{n} = {clip(call.arguments[n])}" for n in dict.fromkeys(names))
                problems.append(Problem("rule_violation", f"call {index} {call.name} breaks {rule!r} ({shown})", path))
    return failed_with(problems) if problems else passed(rules=len(trees))
