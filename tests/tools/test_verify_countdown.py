"""Countdown (TinyZero rules): last answer, numbers used once, allowed characters, safe evaluation."""

from __future__ import annotations

import pytest

from tools.verify import verify_countdown

NUMS = [3, 7, 25, 50]  # target 96 = 50 + 25 + 3 * 7


def answer(equation: str, before: str = "Let me think.\n") -> str:
    return f"{before}<answer>{equation}</answer>"


@pytest.mark.parametrize("equation", ["(50 + 25) + 3 * 7", "3*7+25+50", " 7 * 3 +\n (50 + 25) "])
def test_a_correct_equation_passes(equation: str) -> None:
    verdict = verify_countdown(answer(equation), NUMS, 96)
    assert verdict.ok, verdict.reason
    assert verdict.details["value"] == 96


def test_division_is_exact_and_unary_minus_is_allowed() -> None:
    assert verify_countdown(answer("3 / (1 / 3)"), [1, 3, 3], 9).ok
    assert verify_countdown(answer("-(2 - 8) * 4"), [2, 8, 4], 24).ok
    assert verify_countdown(answer("7 / 2"), [7, 2], 3.5).ok


def test_a_wrong_value_fails_with_the_computed_value() -> None:
    verdict = verify_countdown(answer("50 + 25 + 3 + 7"), NUMS, 96)
    assert not verdict.ok and verdict.reason == "50 + 25 + 3 + 7 = 85, not the target 96"
    assert verdict.details["value"] == 85


def test_within_tolerance_passes_and_outside_fails() -> None:
    assert verify_countdown(answer("1 / 3"), [1, 3], 0.333333).ok
    assert not verify_countdown(answer("1 / 3"), [1, 3], 0.3333).ok


@pytest.mark.parametrize(
    ("equation", "fragment"),
    [
        ("50 + 25 + 21", "not used: [3, 7]"),  # a number not given
        ("50 + 25 + 3 * 7 + 3", "not given or used too often: [3]"),  # used twice
        ("50 + 25 + 3", "not used: [7]"),  # one left out
        ("50 + 25 + 37", "not used: [3, 7]"),  # digits glued together
    ],
)
def test_each_number_must_be_used_exactly_once(equation: str, fragment: str) -> None:
    verdict = verify_countdown(answer(equation), NUMS, 96)
    assert not verdict.ok and fragment in verdict.reason


@pytest.mark.parametrize(
    ("equation", "fragment"),
    [
        ("50 + 25 + 3.0 * 7", "'.'"),
        ("__import__('os')", "'_'"),
        ("50 + 25 + 3 * 7 # x", "'#'"),
        ("abs(50) + 25 + 3 * 7", "'a', 'b', 's'"),
        ("50 + 25 + 3 ^ 7", "'^'"),
    ],
)
def test_only_digits_operators_parentheses_and_spaces_are_allowed(equation: str, fragment: str) -> None:
    verdict = verify_countdown(answer(equation), NUMS, 96)
    assert not verdict.ok and verdict.reason.startswith("the answer may only contain") and fragment in verdict.reason


@pytest.mark.parametrize(("equation", "fragment"), [("3 ** 7", "Pow"), ("50 // 7", "FloorDiv"), ("3 7", "not a valid")])
def test_allowed_characters_that_form_other_operators_are_refused(equation: str, fragment: str) -> None:
    verdict = verify_countdown(answer(equation), [3, 7] if "50" not in equation else [50, 7], 2187)
    assert not verdict.ok and fragment in verdict.reason


def test_division_by_zero_fails() -> None:
    verdict = verify_countdown(answer("5 / (1 - 1)"), [5, 1, 1], 5)
    assert not verdict.ok and "division by zero" in verdict.reason


def test_the_last_answer_wins() -> None:
    right_then_wrong = answer("50 + 25 + 3 * 7") + " wait, no: <answer>50 + 25 + 3 + 7</answer>"
    wrong_then_right = answer("50 + 25 + 3 + 7") + " fixed: <answer>50 + 25 + 3 * 7</answer>"
    assert not verify_countdown(right_then_wrong, NUMS, 96).ok
    assert verify_countdown(wrong_then_right, NUMS, 96).ok


def test_no_answer_fails() -> None:
    assert verify_countdown("50 + 25 + 3 * 7 = 96", NUMS, 96).reason == "no <answer>...</answer> in the response"
    assert not verify_countdown(None, NUMS, 96).ok
    assert not verify_countdown("<answer>50 + 25 + 3 * 7", NUMS, 96).ok
