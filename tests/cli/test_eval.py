"""`rrr eval score` through the real CLI: reference answers score 100%, changed ones 0%, errors are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli import app
from tests.tools.test_scorers import expected_verdicts, write_quirks
from tools.formats import DatasetItem, load_dataset
from tools.scorers import SCORERS
from tools.spec import ToolCall

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
DATASETS = {
    "xlam": f"xlam:{FIXTURES / 'xlam_sample.json'}",
    "bfcl": f"bfcl:{FIXTURES / 'bfcl' / 'BFCL_v3_sample.json'}",
}
BFCL_ANSWERS = FIXTURES / "bfcl" / "possible_answer" / "BFCL_v3_sample.json"

runner = CliRunner()


def reference_prediction(item: DatasetItem) -> list[ToolCall]:
    """First acceptable value of each parameter, omitted where that is "" (relevance: any call)."""
    if item.extra.get("relevance"):
        return [ToolCall(item.tools[0].name, {"minutes": 5})]
    return item.reference_calls()


def write_predictions(path: Path, preds: dict[str, list[ToolCall]]) -> Path:
    rows = [{"id": k, "tool_calls": [c.to_dict() for c in calls]} for k, calls in preds.items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def score(*args: str) -> Any:
    return runner.invoke(app, ["eval", "score", *args])


def score_json(dataset: str, predictions: Path, *extra: str) -> dict[str, Any]:
    result = score("--dataset", dataset, "--predictions", str(predictions), "--json", *extra)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1  # exactly one JSON object
    report: dict[str, Any] = json.loads(lines[0])
    return report


# ---------------------------------------------------------------- mutations of a reference call


def _wrong_name(call: ToolCall, item: DatasetItem) -> ToolCall | None:
    return ToolCall(call.name + "_v2", call.arguments)


def _wrong_value(call: ToolCall, item: DatasetItem) -> ToolCall | None:
    for name, value in call.arguments.items():
        if isinstance(value, bool):
            changed: Any = not value
        elif isinstance(value, int | float):
            changed = value + 7
        elif isinstance(value, str):
            changed = value + " Nowhere"
        else:
            continue
        return ToolCall(call.name, {**call.arguments, name: changed})
    return None


def _missing_required(call: ToolCall, item: DatasetItem) -> ToolCall | None:
    tool = next(t for t in item.tools if t.name == call.name)
    for name in tool.parameters.get("required", []):
        if name in call.arguments:
            return ToolCall(call.name, {k: v for k, v in call.arguments.items() if k != name})
    return None


def _extra_param(call: ToolCall, item: DatasetItem) -> ToolCall | None:
    return ToolCall(call.name, {**call.arguments, "verbose_mode": True})


CODES = {  # the failure code each mutation must be scored with
    "wrong name": {"unknown_tool"},  # the renamed function is not among the item's tools
    "wrong value": {"wrong_value"},
    "missing required param": {"missing_argument"},
    "extra param": {"unexpected_argument"},
}
MUTATIONS: dict[str, Callable[[ToolCall, DatasetItem], ToolCall | None]] = {
    "wrong name": _wrong_name,
    "wrong value": _wrong_value,
    "missing required param": _missing_required,
    "extra param": _extra_param,
}


@pytest.mark.parametrize("fmt", sorted(DATASETS))
def test_reference_answers_score_100_percent(fmt: str, tmp_path: Path) -> None:
    items = load_dataset(DATASETS[fmt])
    preds = write_predictions(tmp_path / "p.jsonl", {i.id: reference_prediction(i) for i in items})
    report = score_json(DATASETS[fmt], preds)
    assert set(report) == {"scorer", "total", "correct", "accuracy", "failures", "items"}
    assert report["failures"] == {} and report["scorer"] == "reference"
    assert report["total"] == len(items)
    assert report["correct"] == len(items), [r for r in report["items"] if not r["ok"]]
    assert report["accuracy"] == 1.0
    assert all(set(r) == {"id", "ok", "reason", "code", "path"} and r["code"] is None for r in report["items"])


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.parametrize("fmt", sorted(DATASETS))
def test_changed_predictions_score_0_percent(fmt: str, mutation: str, tmp_path: Path) -> None:
    items = load_dataset(DATASETS[fmt])
    preds: dict[str, list[ToolCall]] = {}
    changed: set[str] = set()
    for item in items:
        calls = reference_prediction(item)
        if item.expected:
            mutated = MUTATIONS[mutation](calls[0], item)
            assert mutated is not None, f"{mutation} does not apply to {item.id}"
            calls = [mutated, *calls[1:]]
            changed.add(item.id)
        preds[item.id] = calls
    assert len(changed) >= 4
    report = score_json(DATASETS[fmt], write_predictions(tmp_path / "p.jsonl", preds))
    outcome = {r["id"]: r for r in report["items"]}
    assert [i for i in changed if outcome[i]["ok"]] == []
    assert all(outcome[i]["reason"] for i in changed)
    assert {i: outcome[i]["code"] for i in changed if outcome[i]["code"] not in CODES[mutation]} == {}
    assert report["failures"] == {next(iter(CODES[mutation])): len(changed)}
    unchanged = set(outcome) - changed
    assert all(outcome[i]["ok"] for i in unchanged)
    assert report["correct"] == len(unchanged)


def test_table_output_with_categories(tmp_path: Path) -> None:
    items = load_dataset(DATASETS["bfcl"])
    preds = {i.id: reference_prediction(i) for i in items}
    preds["simple_0"] = []
    path = write_predictions(tmp_path / "p.jsonl", preds)
    result = score("--dataset", DATASETS["bfcl"], "--answers", str(BFCL_ANSWERS), "--predictions", str(path))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["total", "12"]
    assert lines[1].split() == ["correct", "11"]
    assert lines[2].split() == ["accuracy", "91.67%"]
    assert lines[3].split() == ["scorer", "reference"]
    table = {line.split()[0]: line.split()[1:] for line in lines[5:] if line.strip()}
    assert table["simple"] == ["1", "2", "50.00%"]
    assert table["live_parallel_multiple"] == ["1", "1", "100.00%"]
    assert table["no_call"] == ["1", "8.3%"]  # the per-code table: the one wrong item made no call


def test_table_without_categories(tmp_path: Path) -> None:
    items = load_dataset(DATASETS["xlam"])
    path = write_predictions(tmp_path / "p.jsonl", {i.id: reference_prediction(i) for i in items})
    result = score("--dataset", DATASETS["xlam"], "--predictions", str(path))
    assert result.exit_code == 0, result.stderr
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["total", "5"],
        ["correct", "5"],
        ["accuracy", "100.00%"],
        ["scorer", "reference"],
    ]


def test_countdown_through_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 0, "content": "<answer>3*5+7</answer>"}\n{"id": "1", "content": "<answer>8</answer>"}\n')
    report = score_json(f"countdown:{FIXTURES / 'countdown_sample.jsonl'}", path)
    assert [(r["id"], r["ok"]) for r in report["items"]] == [("0", True), ("1", False), ("2", False)]
    assert report["items"][2]["reason"] == "no prediction"


def _good_predictions(tmp_path: Path) -> Path:
    items = load_dataset(DATASETS["xlam"])
    return write_predictions(tmp_path / "good.jsonl", {i.id: reference_prediction(i) for i in items})


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing dataset", "no such file"),
        ("missing predictions", "no such file"),
        ("bad format", "unknown dataset format 'yaml'"),
        ("no format", "must be FORMAT:PATH"),
        ("bad predictions line", "line 2: not valid JSON"),
        ("bad dataset line", "line 1: not valid JSON"),
        ("bfcl without answers", "no reference answers"),
    ],
)
def test_expected_failures_are_one_line(case: str, message: str, tmp_path: Path) -> None:
    good = _good_predictions(tmp_path)
    dataset, predictions = DATASETS["xlam"], str(good)
    if case == "missing dataset":
        dataset = f"xlam:{tmp_path / 'absent.json'}"
    elif case == "missing predictions":
        predictions = str(tmp_path / "absent.jsonl")
    elif case == "bad format":
        dataset = f"yaml:{FIXTURES / 'xlam_sample.json'}"
    elif case == "no format":
        dataset = str(FIXTURES / "xlam_sample.json")
    elif case == "bad predictions line":
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"id": "7", "tool_calls": []}\n{"id": "1", "tool_calls": [\n')
        predictions = str(bad)
    elif case == "bad dataset line":
        bad = tmp_path / "bad_dataset.jsonl"
        bad.write_text("{query: nope}\n")
        dataset = f"xlam:{bad}"
    elif case == "bfcl without answers":
        lone = tmp_path / "BFCL_v3_sample.json"
        lone.write_text((FIXTURES / "bfcl" / "BFCL_v3_sample.json").read_text())
        dataset = f"bfcl:{lone}"
    result = score("--dataset", dataset, "--predictions", predictions, "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]


def test_real_entry_point_in_a_subprocess(tmp_path: Path) -> None:
    good = _good_predictions(tmp_path)
    ok = subprocess.run(
        [sys.executable, "-m", "cli", "eval", "score", "--dataset", DATASETS["xlam"],
         "--predictions", str(good), "--json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["accuracy"] == 1.0
    bad = subprocess.run(
        [sys.executable, "-m", "cli", "eval", "score", "--dataset", "nope:x.json", "--predictions", str(good)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.strip() == "error: unknown dataset format 'nope' (expected one of xlam, bfcl, openai, countdown)"
    assert "Traceback" not in bad.stderr


def test_the_scorer_changes_the_score_of_a_file_built_on_the_quirks(tmp_path: Path) -> None:
    spec, predictions = write_quirks(tmp_path)
    correct = {}
    for scorer in SCORERS:
        report = score_json(spec, predictions, "--scorer", scorer)
        assert report["scorer"] == scorer
        assert {r["id"]: r["ok"] for r in report["items"]} == expected_verdicts(scorer)
        correct[scorer] = report["correct"]
    assert correct == {"reference": 10, "bfcl": 11, "exact": 9}
    assert score_json(spec, predictions)["correct"] == correct["reference"]  # the default
    table = score("--dataset", spec, "--predictions", str(predictions), "--scorer", "bfcl")
    assert table.exit_code == 0, table.stderr
    assert table.stdout.splitlines()[3].split() == ["scorer", "bfcl"]
    bad = score("--dataset", spec, "--predictions", str(predictions), "--scorer", "ast")
    assert bad.exit_code == 1 and bad.stdout == ""
    assert bad.stderr.strip() == "error: unknown scorer 'ast' (expected one of reference, bfcl, exact)"


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_bfcl_and_reference_agree_on_the_bfcl_fixture(mutation: str, tmp_path: Path) -> None:
    items = load_dataset(DATASETS["bfcl"])
    preds = {}
    for item in items:
        calls = reference_prediction(item)
        mutated = MUTATIONS[mutation](calls[0], item) if item.expected else None
        preds[item.id] = [mutated, *calls[1:]] if mutated is not None else calls
    path = write_predictions(tmp_path / "p.jsonl", preds)
    verdicts = {
        scorer: [(r["id"], r["ok"], r["code"]) for r in score_json(DATASETS["bfcl"], path, "--scorer", scorer)["items"]]
        for scorer in ("reference", "bfcl")
    }
    assert verdicts["reference"] == verdicts["bfcl"]


SHARED = Path(os.environ.get("RRR_SHARED_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared")
APIBANK_L2 = SHARED / "data" / "apibank" / "apibank_l2.json"
# Records of apibank_l2.json whose answer calls a tool the record does not offer (a data defect).
APIBANK_L2_DEFECTS = {"26", "66", "81", "104", "105", "117"}


def test_apibank_reference_answers_through_the_cli(tmp_path: Path) -> None:
    if not APIBANK_L2.is_file():
        pytest.skip(f"API-Bank data not found at {APIBANK_L2} (set RRR_SHARED_DIR)")
    items = load_dataset(f"xlam:{APIBANK_L2}")
    preds = write_predictions(tmp_path / "p.jsonl", {i.id: reference_prediction(i) for i in items})
    report = score_json(f"xlam:{APIBANK_L2}", preds)
    assert report["total"] == 127
    wrong = {r["id"] for r in report["items"] if not r["ok"]}
    assert wrong <= APIBANK_L2_DEFECTS
    assert report["correct"] >= 127 - len(APIBANK_L2_DEFECTS)
