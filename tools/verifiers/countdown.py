"""Countdown verifier (TinyZero's rules): combine the given numbers with + - * / to hit the target.

The answer is the LAST ``<answer>...</answer>`` in the content. It may hold only digits,
``+ - * / ( )`` and whitespace; the numbers in it must be exactly the given numbers (as a multiset,
each used once); it must evaluate to within 1e-5 of the target. The expression is parsed with
``ast`` and evaluated over exact fractions, allowing only those four operators and unary signs, so
``**``, ``//`` and anything else are refused rather than evaluated (no ``eval``).
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

from tools.verifiers.base import Verdict, clip, failed, passed

TOLERANCE = 1e-5
MAX_ANSWER_CHARS = 1000
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ALLOWED_RE = re.compile(r"[\d+\-*/()\s]+")
_OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


class _Refused(ValueError):
    pass


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise _Refused("division by zero")
        return left / right
    if isinstance(node, ast.BinOp):
        raise _Refused(f"operator {type(node.op).__name__} is not allowed; use only + - * /")
    raise _Refused(f"{type(node).__name__} is not allowed in the equation")


def verify_countdown(content: str | None, nums: list[int], target: float) -> Verdict:
    """Pass if the last ``<answer>`` uses each of ``nums`` once and equals ``target`` (±1e-5)."""
    answers = _ANSWER_RE.findall(content) if isinstance(content, str) else []
    if not answers:
        return failed("no <answer>...</answer> in the response", code="parse_error")
    equation = answers[-1].strip()
    details = {"equation": equation[:MAX_ANSWER_CHARS]}
    if len(equation) > MAX_ANSWER_CHARS:
        return failed(f"the answer is longer than {MAX_ANSWER_CHARS} characters", code="rule_violation", **details)
    if not _ALLOWED_RE.fullmatch(equation):
        bad = ", ".join(repr(c) for c in sorted({c for c in equation if not _ALLOWED_RE.fullmatch(c)}))
        return failed(
            f"the answer may only contain digits, + - * / ( ) and spaces; found {bad}", code="rule_violation", **details
        )
    used = Counter(int(n) for n in re.findall(r"\d+", equation))
    given = Counter(int(n) for n in nums)
    if used != given:
        missing, extra = given - used, used - given
        parts = []
        if missing:
            parts.append(f"not used: {sorted(missing.elements())}")
        if extra:
            parts.append(f"not given or used too often: {sorted(extra.elements())}")
        text = f"each of {sorted(given.elements())} must be used exactly once ({'; '.join(parts)})"
        return failed(text, code="rule_violation", **details)
    try:
        value = _evaluate(ast.parse(" ".join(equation.split()), mode="eval"))  # newlines are spaces too
    except SyntaxError:
        return failed(f"{clip(equation)} is not a valid arithmetic expression", code="parse_error", **details)
    except _Refused as exc:
        return failed(f"{clip(equation)}: {exc}", code="rule_violation", **details)
    except RecursionError:
        return failed("the equation is nested too deeply", code="rule_violation", **details)
    try:
        result = float(value)
    except OverflowError:
        return failed("the equation's value is out of range", code="wrong_value", **details)
    if abs(result - float(target)) >= TOLERANCE:
        return failed(
            f"{equation} = {result:g}, not the target {float(target):g}", code="wrong_value", value=result, **details
        )
    return passed(value=result, **details)
