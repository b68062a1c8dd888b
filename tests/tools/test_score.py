"""score_predictions and the predictions file, on the hand-written fixtures and the real verifiers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.formats import DatasetItem, load_dataset
from tools.score import PredictionsError, load_predictions, score_predictions
from tools.spec import ToolCall
from tools.verify import ModelOutput

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
XLAM = f"xlam:{FIXTURES / 'xlam_sample.json'}"
BFCL = f"bfcl:{FIXTURES / 'bfcl' / 'BFCL_v3_sample.json'}"
OPENAI = f"openai:{FIXTURES / 'openai_sample.jsonl'}"
COUNTDOWN = f"countdown:{FIXTURES / 'countdown_sample.jsonl'}"


def perfect(items: list[DatasetItem]) -> dict[str, list[ToolCall]]:
    """Reference answers as predictions (BFCL relevance items: any call to an offered tool)."""
    preds = {item.id: item.reference_calls() for item in items}
    for item in items:
        if item.extra.get("relevance"):
            preds[item.id] = [ToolCall(item.tools[0].name, {"minutes": 5})]
    return preds


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("spec", [XLAM, BFCL, OPENAI])
def test_reference_answers_score_100_percent(spec: str) -> None:
    items = load_dataset(spec)
    report = score_predictions(items, perfect(items))
    assert report.total == len(items) > 0
    assert report.correct == report.total, [r for r in report.items if not r["ok"]]
    assert report.accuracy == 1.0
    assert [r["id"] for r in report.items] == [i.id for i in items]


def test_missing_predictions_are_wrong() -> None:
    items = load_dataset(XLAM)
    preds = perfect(items)
    del preds["7"]
    report = score_predictions(items, preds)
    assert report.correct == report.total - 1
    row = next(r for r in report.items if r["id"] == "7")
    assert row == {"id": "7", "ok": False, "reason": "no prediction", "code": "no_call", "path": None}


def test_wrong_predictions_are_wrong_with_a_reason() -> None:
    items = load_dataset(BFCL)
    preds = perfect(items)
    preds["simple_0"] = [ToolCall("calculate_triangle_area", {"base": 10, "height": 6})]
    preds["irrelevance_0"] = [ToolCall("calculate_triangle_area", {"base": 1, "height": 2})]
    preds["parallel_0"] = preds["parallel_0"][:1]
    preds["live_relevance_0-0-0"] = []
    report = score_predictions(items, preds)
    wrong = {r["id"]: r["reason"] for r in report.items if not r["ok"]}
    assert set(wrong) == {"simple_0", "irrelevance_0", "parallel_0", "live_relevance_0-0-0"}
    assert "height" in wrong["simple_0"]
    assert report.categories["simple"] == {"total": 2, "correct": 1, "accuracy": 0.5}
    assert report.categories["multiple"] == {"total": 1, "correct": 1, "accuracy": 1.0}
    assert report.to_dict() == {
        "scorer": "reference",
        "total": 12,
        "correct": 8,
        "accuracy": 8 / 12,
        "failures": {"no_call": 1, "unexpected_call": 1, "wrong_call_count": 1, "wrong_value": 1},
        "items": report.items,
    }
    codes = {r["id"]: (r["code"], r["path"]) for r in report.items if not r["ok"]}
    assert codes == {
        "simple_0": ("wrong_value", "arguments.height"),
        "irrelevance_0": ("unexpected_call", None),
        "parallel_0": ("wrong_call_count", None),
        "live_relevance_0-0-0": ("no_call", None),
    }


def test_bfcl_alternatives_and_omittable_params() -> None:
    items = load_dataset(BFCL)
    preds = perfect(items)
    # Another acceptable value, the optional unit given explicitly, parallel calls swapped, int for float.
    preds["multiple_0"] = [
        ToolCall("currency_convert", {"amount": 100, "from_currency": "US dollars", "to_currency": "euros"})
    ]
    preds["simple_0"] = [ToolCall("calculate_triangle_area", {"base": 10, "height": 5, "unit": "units"})]
    preds["parallel_0"] = [
        ToolCall("weather_get", {"location": "Lima, Peru"}),
        ToolCall("weather_get", {"location": "Oslo", "unit": "celsius"}),
    ]
    # BFCL's original dotted name is accepted too.
    preds["simple_1"] = [ToolCall("math.factorial", {"number": 5})]
    report = score_predictions(items, preds)
    assert report.correct == report.total, [r for r in report.items if not r["ok"]]


def test_countdown_uses_content() -> None:
    items = load_dataset(COUNTDOWN)
    preds = {
        "0": ModelOutput(tool_calls=[], content="<think>3*5=15</think><answer>3 * 5 + 7</answer>"),
        "1": ModelOutput(tool_calls=[], content="<answer>2 * 4 + 6 + 8</answer>"),  # 22, not 20
        "2": ModelOutput(tool_calls=[], content=None),
    }
    report = score_predictions(items, preds)
    assert [r["ok"] for r in report.items] == [True, False, False]
    assert report.items[1]["reason"]


def test_bfcl_without_answers_refuses_to_score(tmp_path: Path) -> None:
    lone = tmp_path / "BFCL_v3_sample.json"
    lone.write_text((FIXTURES / "bfcl" / "BFCL_v3_sample.json").read_text())
    items = load_dataset(f"bfcl:{lone}")
    with pytest.raises(ValueError, match="no reference answers"):
        score_predictions(items, {})


def test_predictions_file_shapes(tmp_path: Path) -> None:
    items = load_dataset(OPENAI)
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "o1", "tool_calls": [{"name": "get_weather", "arguments": '{"city": "Rome"}'}]},
            {
                "id": "o2",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "kiev", "unit": "f"}},
                    },
                    {"name": "set_timer", "arguments": {"minutes": 5}},
                ],
            },
            {"id": 2, "tool_calls": [], "content": "Hi!"},
            {"id": "o4", "tool_calls": [{"name": "set_timer", "arguments": "{'minutes': 3"}]},
            {"id": "stray", "tool_calls": []},
        ],
    )
    report = score_predictions(items, path)
    assert [r["ok"] for r in report.items] == [True, True, True, False]
    assert "malformed" in report.items[3]["reason"]
    assert report.unmatched == ["stray"]
    assert score_predictions(items, str(path)).to_dict() == report.to_dict()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ('["a"]', "line 2: expected a JSON object"),
        ('{"tool_calls": []}', "line 2: missing 'id'"),
        ('{"id": "a", "tool_calls": []}', "line 2: duplicate id 'a'"),
        ('{"id": "b", "tool_calls": {"name": "x"}}', "line 2: 'tool_calls' must be a list"),
        ('{"id": "b", "content": 3}', "line 2: 'content' must be a string"),
    ],
)
def test_bad_predictions_lines_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "tool_calls": []}\n' + line + "\n")
    with pytest.raises(PredictionsError) as info:
        load_predictions(path)
    assert message in str(info.value)
    assert "p.jsonl" in str(info.value)


def test_missing_predictions_file(tmp_path: Path) -> None:
    with pytest.raises(PredictionsError, match="no such file"):
        load_predictions(tmp_path / "absent.jsonl")
