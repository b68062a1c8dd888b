"""The three scorers (`reference`, `bfcl`, `exact`) on the cases where BFCL's checker and rrr's rules differ.

`QUIRKS` is one BFCL-format dataset: each item hits one difference (or is its control), with the
verdict each scorer must give. `tests/cli/test_eval.py` scores the same file through the CLI.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from tools.formats import DatasetItem, load_dataset
from tools.score import score_predictions
from tools.scorers import SCORERS, check_scorer, verify_bfcl, verify_exact
from tools.spec import ToolCall, ToolSpec
from tools.verify import ModelOutput, verify_reference

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BFCL = f"bfcl:{FIXTURES / 'bfcl' / 'BFCL_v3_sample.json'}"


def _fn(name: str, required: list[str] | None = None, **properties: Any) -> dict[str, Any]:
    params = {"type": "dict", "properties": properties, "required": required or []}
    return {"name": name, "description": name, "parameters": params}


STR, INT, FLOAT, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "float"}, {"type": "boolean"}
FACTORIAL = _fn("math.factorial", ["number"], number=INT)
CONFIGURE = _fn("configure", ["opts"], opts={"type": "dict", "properties": {"size": INT, "flag": BOOL}})
GRID = _fn("grid", ["matrix"], matrix={"type": "array", "items": {"type": "array", "items": INT}})
WEIGH = _fn("weigh", ["weights"], weights={"type": "array", "items": FLOAT})
SCALE = _fn("scale", ["factor"], factor=FLOAT)
SEARCH = _fn("search", ["filter"], filter={"type": "dict", "properties": {"tags": {"type": "array", "items": STR}}})
COUNT = _fn("count_items", ["limit"], limit=INT)
EMAIL = _fn("send_email", ["to"], to=STR, cc={"type": "array", "items": STR})
WEATHER = _fn("get_weather", ["city"], city=STR)

PARIS_OR_ROME = [{"get_weather": {"city": ["Paris", "Rome"]}}, {"get_weather": {"city": ["Paris"]}}]
PARIS, ROME = ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})
Case = tuple[str, dict[str, Any], list[dict[str, Any]], Any, tuple[bool, bool, bool]]
QUIRKS: list[Case] = [
    # (id, function, ground truth, predicted calls or a malformed-arguments string, (reference, bfcl, exact))
    ("dotted_0", FACTORIAL, [{"math.factorial": {"number": [5]}}], [("math.factorial", {"number": 5})],
     (True, False, False)),
    ("dotted_1", FACTORIAL, [{"math.factorial": {"number": [5]}}], [("math_factorial", {"number": 5})],
     (True, True, True)),
    ("dict_number_0", CONFIGURE, [{"configure": {"opts": [{"size": [20], "flag": [False]}]}}],
     [("configure", {"opts": {"size": 20.0, "flag": False}})], (False, True, True)),
    ("dict_number_1", CONFIGURE, [{"configure": {"opts": [{"size": [20], "flag": [False]}]}}],
     [("configure", {"opts": {"size": 20, "flag": 0}})], (False, True, False)),
    ("nested_list_0", GRID, [{"grid": {"matrix": [[[1, 2], [3, 4]]]}}], [("grid", {"matrix": [[1.0, 2], [3, 4]]})],
     (False, True, True)),
    ("nested_list_1", GRID, [{"grid": {"matrix": [[[1, 2], [3, 4]]]}}], [("grid", {"matrix": [[True, 2], [3, 4]]})],
     (False, True, False)),
    ("top_float_0", WEIGH, [{"weigh": {"weights": [[1.0, 3.0]]}}], [("weigh", {"weights": [1, 3]})],
     (True, False, True)),
    ("top_float_1", SCALE, [{"scale": {"factor": [2.0]}}], [("scale", {"factor": 2})], (True, True, True)),
    ("dict_strings_0", SEARCH, [{"search": {"filter": [{"tags": [["New York", "Paris"]]}]}}],
     [("search", {"filter": {"tags": ["new york", "paris"]}})], (True, False, False)),
    ("dict_strings_1", SEARCH, [{"search": {"filter": [{"tags": [["New York", "Paris"]]}]}}],
     [("search", {"filter": {"tags": ["New York", "Paris"]}})], (True, True, True)),
    ("placeholder_0", COUNT, [{"count_items": {"limit": ["dontcare"]}}], [("count_items", {"limit": "dont care"})],
     (False, False, False)),
    ("placeholder_1", COUNT, [{"count_items": {"limit": ["dontcare"]}}], [("count_items", {"limit": "dontcare"})],
     (True, True, True)),
    ("optional_array_0", EMAIL, [{"send_email": {"to": ["Ana"], "cc": ["", ["Bo"]]}}],
     [("send_email", {"to": "Ana", "cc": []})], (True, True, False)),
    ("parallel_greedy_0", WEATHER, PARIS_OR_ROME, [PARIS, ROME], (True, False, True)),  # greedy gives Paris to call 1
    ("parallel_greedy_1", WEATHER, PARIS_OR_ROME, [ROME, PARIS], (True, True, True)),
    ("irrelevance_0", WEATHER, [], '{"city": "Par', (False, True, False)),
]  # fmt: skip


def write_quirks(folder: Path) -> tuple[str, Path]:
    """The quirk dataset as BFCL files (questions, possible_answer) and a predictions file: (spec, predictions)."""
    questions = folder / "BFCL_quirks.json"
    (folder / "possible_answer").mkdir(parents=True, exist_ok=True)
    with questions.open("w") as q, (folder / "possible_answer" / questions.name).open("w") as a:
        for item_id, function, truth, _, _ in QUIRKS:
            q.write(
                json.dumps(
                    {"id": item_id, "question": [[{"role": "user", "content": item_id}]], "function": [function]}
                )
                + "\n"
            )
            a.write(json.dumps({"id": item_id, "ground_truth": truth}) + "\n")
    predictions = folder / "quirks.jsonl"
    with predictions.open("w") as p:
        for item_id, function, _, calls, _ in QUIRKS:
            if isinstance(calls, str):  # arguments that do not decode
                rows = [{"name": function["name"].replace(".", "_"), "arguments": calls}]
            else:
                rows = [{"name": name, "arguments": arguments} for name, arguments in calls]
            p.write(json.dumps({"id": item_id, "tool_calls": rows}) + "\n")
    return f"bfcl:{questions}", predictions


def expected_verdicts(scorer: str) -> dict[str, bool]:
    return {item_id: verdicts[SCORERS.index(scorer)] for item_id, _, _, _, verdicts in QUIRKS}


@pytest.mark.parametrize("scorer", SCORERS)
def test_each_quirk_scores_as_documented(scorer: str, tmp_path: Path) -> None:
    spec, predictions = write_quirks(tmp_path)
    report = score_predictions(load_dataset(spec), predictions, scorer)
    assert report.scorer == scorer
    assert {r["id"]: r["ok"] for r in report.items} == expected_verdicts(scorer)
    assert all(r["code"] for r in report.items if not r["ok"])


def test_the_quirks_fail_with_the_right_codes(tmp_path: Path) -> None:
    spec, predictions = write_quirks(tmp_path)
    items = load_dataset(spec)
    codes = {s: {r["id"]: r["code"] for r in score_predictions(items, predictions, s).items} for s in SCORERS}
    assert codes["bfcl"]["dotted_0"] == "unknown_tool"  # math.factorial is not the offered math_factorial
    assert codes["bfcl"]["top_float_0"] == "type_mismatch"
    assert codes["bfcl"]["dict_strings_0"] == codes["bfcl"]["parallel_greedy_0"] == "wrong_value"
    assert codes["reference"]["dict_number_0"] == codes["reference"]["nested_list_1"] == "type_mismatch"
    assert codes["reference"]["placeholder_0"] == codes["bfcl"]["placeholder_0"] == "wrong_value"
    assert codes["reference"]["irrelevance_0"] == codes["exact"]["irrelevance_0"] == "parse_error"
    assert codes["exact"]["optional_array_0"] == "wrong_value"
    assert codes["exact"]["dict_number_1"] == "wrong_value"


# --- the two reference defects, fixed ---------------------------------------------------------


LIMIT = ToolSpec("count_items", parameters={"type": "object", "properties": {"limit": {"type": "integer"}}})


@pytest.mark.parametrize(("given", "ok"), [("dontcare", True), ("DontCare", False), ("dont care", False), (3, False)])
def test_reference_compares_a_placeholder_of_another_type_exactly(given: Any, ok: bool) -> None:
    output = ModelOutput(tool_calls=[ToolCall("count_items", {"limit": given})])
    verdict = verify_reference(output, [{"count_items": {"limit": ["dontcare"]}}], [LIMIT])
    assert verdict.ok is ok, verdict.reason
    assert verify_bfcl(output, [{"count_items": {"limit": ["dontcare"]}}], [LIMIT]).ok is ok


def test_reference_accepts_an_empty_array_for_an_optional_array_parameter() -> None:
    tools = [
        ToolSpec(
            "send",
            parameters={
                "type": "object",
                "properties": {
                    "to": {"type": "string"},
                    "cc": {"type": "array", "items": {"type": "string"}},
                    "rows": {"type": "array", "items": {"type": "object"}},
                },
            },
        )
    ]
    expected = [{"send": {"to": ["Ana"], "cc": ["", ["Bo"]], "rows": ["", [{"n": [1]}]]}}]
    for given in ({"cc": []}, {"rows": []}, {"cc": [], "rows": []}):
        output = ModelOutput(tool_calls=[ToolCall("send", {"to": "Ana", **given})])
        assert verify_reference(output, expected, tools).ok, given
        assert verify_reference(output, expected).ok, given  # without the schema: the other values are lists
        assert verify_bfcl(output, expected, tools).ok, given
    required = [{"send": {"to": ["Ana"], "cc": [["Bo"]]}}]  # not optional: [] is a wrong value
    assert not verify_reference(ModelOutput(tool_calls=[ToolCall("send", {"to": "Ana", "cc": []})]), required).ok
    optional_string = [{"send": {"to": ["Ana", ""]}}]  # an optional string is never []
    assert not verify_reference(ModelOutput(tool_calls=[ToolCall("send", {"to": []})]), optional_string, tools).ok
    assert not verify_bfcl(ModelOutput(tool_calls=[ToolCall("send", {"to": []})]), optional_string, tools).ok


# --- bfcl and exact beyond the table ----------------------------------------------------------


def test_bfcl_skips_the_items_type_check_when_an_acceptable_value_is_not_a_list() -> None:
    tools = [
        ToolSpec(
            "weigh", parameters={"type": "object", "properties": {"w": {"type": "array", "items": {"type": "number"}}}}
        )
    ]
    output = ModelOutput(tool_calls=[ToolCall("weigh", {"w": [1, 3]})])
    assert not verify_bfcl(output, [{"weigh": {"w": [[1.0, 3.0]]}}], tools).ok
    assert verify_bfcl(output, [{"weigh": {"w": ["", [1.0, 3.0]]}}], tools).ok  # BFCL: "" passes the check


def test_bfcl_untyped_parameters_are_strings_and_variables_compare_with_equality() -> None:
    tools = [ToolSpec("f", parameters={"type": "object", "properties": {"x": {}}})]  # BFCL "any"
    assert verify_bfcl(ModelOutput(tool_calls=[ToolCall("f", {"x": "A B"})]), [{"f": {"x": ["ab"]}}], tools).ok
    assert verify_bfcl(ModelOutput(tool_calls=[ToolCall("f", {"x": 5})]), [{"f": {"x": [5]}}], tools).ok
    assert not verify_bfcl(ModelOutput(tool_calls=[ToolCall("f", {"x": 5})]), [{"f": {"x": ["5"]}}], tools).ok


def test_exact_does_not_normalise_strings_or_take_bools_for_numbers() -> None:
    expected = [{"f": {"unit": ["km/h", ""], "n": [1]}}]
    assert verify_exact(ModelOutput(tool_calls=[ToolCall("f", {"unit": "km/h", "n": 1})]), expected).ok
    assert verify_exact(ModelOutput(tool_calls=[ToolCall("f", {"n": 1.0})]), expected).ok  # unit may be omitted
    wrong = verify_exact(ModelOutput(tool_calls=[ToolCall("f", {"unit": "KM/H", "n": 1})]), expected)
    assert not wrong.ok and wrong.code == "wrong_value" and wrong.path == "arguments.unit"
    typed = verify_exact(ModelOutput(tool_calls=[ToolCall("f", {"n": True})]), expected)
    assert not typed.ok and typed.code == "type_mismatch"
    extra = verify_exact(ModelOutput(tool_calls=[ToolCall("f", {"n": 1, "z": 0})]), expected)
    assert not extra.ok and extra.code == "unexpected_argument"
    assert verify_reference(ModelOutput(tool_calls=[ToolCall("f", {"unit": "KM/H", "n": 1})]), expected).ok


def test_every_scorer_gives_a_wrong_call_count_and_no_call() -> None:
    expected = [{"f": {"x": [1]}}]
    for verify in (verify_reference, verify_bfcl, verify_exact):
        assert verify(ModelOutput(tool_calls=[]), expected).code == "no_call"
        two = ModelOutput(tool_calls=[ToolCall("f", {"x": 1}), ToolCall("f", {"x": 1})])
        assert verify(two, expected).code == "wrong_call_count"
        assert verify(ModelOutput(tool_calls=[ToolCall("f", {"x": 1})]), []).code == "unexpected_call"


def test_an_unknown_scorer_is_a_value_error() -> None:
    assert check_scorer("bfcl") == "bfcl"
    with pytest.raises(ValueError, match="unknown scorer 'ast' \\(expected one of reference, bfcl, exact\\)"):
        score_predictions(load_dataset(BFCL), {}, "ast")


# --- no quirk, no difference ------------------------------------------------------------------


@pytest.mark.parametrize("scorer", SCORERS)
def test_reference_answers_of_the_bfcl_fixture_pass_every_scorer(scorer: str) -> None:
    items = load_dataset(BFCL)
    preds = {item.id: item.reference_calls() for item in items}
    for item in items:
        if item.extra.get("relevance"):
            preds[item.id] = [ToolCall(item.tools[0].name, {"minutes": 5})]
    report = score_predictions(items, preds, scorer)
    assert report.correct == report.total, [r for r in report.items if not r["ok"]]


def test_bfcl_and_reference_agree_on_the_fixture_where_no_quirk_applies() -> None:
    items: list[DatasetItem] = []
    preds: dict[str, list[ToolCall]] = {}
    for item in load_dataset(BFCL):
        good = item.reference_calls() or [ToolCall(item.tools[0].name, {})]
        first, rest = good[0], good[1:]
        dropped = {k: v for k, v in list(first.arguments.items())[1:]}
        variants = {
            "right": good,
            "renamed": [ToolCall(first.name + "_v2", first.arguments), *rest],
            "extra": [ToolCall(first.name, {**first.arguments, "zz": 1}), *rest],
            "dropped": [ToolCall(first.name, dropped), *rest],
            "reversed": list(reversed(good)),
            "count": [first] * (len(good) + 1),
            "none": [],
        }
        for name, calls in variants.items():
            items.append(dataclasses.replace(item, id=f"{item.id}#{name}"))
            preds[f"{item.id}#{name}"] = calls
    ref = score_predictions(items, preds, "reference")
    bfcl = score_predictions(items, preds, "bfcl")
    assert [(r["id"], r["ok"], r["code"]) for r in ref.items] == [(r["id"], r["ok"], r["code"]) for r in bfcl.items]
    assert 0 < ref.correct < ref.total
