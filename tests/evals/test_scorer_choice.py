"""The scorer of an evaluation: kept in run.json, taken by a resumed run, applied to every attempt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals import EvalConfig, EvalOutput, OutputError, eval_task, score_trace
from evals.runners import Step, Trace
from tests.support.upstream import tool_call
from tools.formats import load_dataset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_a_new_folder_records_the_scorer_and_a_rerun_without_one_takes_it(tmp_path: Path) -> None:
    output = EvalOutput(tmp_path / "out")
    output.open({"dataset": "d", "attempts": 2, "scorer": "exact"})
    assert json.loads(output.manifest_path.read_text())["scorer"] == "exact"
    again = EvalOutput(tmp_path / "out")
    again.open({"dataset": "d", "attempts": 2, "scorer": None})
    assert again.manifest["scorer"] == "exact"
    with pytest.raises(OutputError, match=r"\(scorer 'exact', now 'bfcl'\); give --scorer exact"):
        EvalOutput(tmp_path / "out").open({"dataset": "d", "attempts": 2, "scorer": "bfcl"})


def test_a_folder_from_before_the_scorer_choice_is_reference(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"dataset": "d", "attempts": 2}))
    output = EvalOutput(tmp_path)
    output.open({"dataset": "d", "attempts": 2, "scorer": None})
    assert output.manifest["scorer"] == "reference"
    EvalOutput(tmp_path).open({"dataset": "d", "attempts": 2, "scorer": "reference"})
    with pytest.raises(OutputError, match="scorer 'reference', now 'bfcl'"):
        EvalOutput(tmp_path).open({"dataset": "d", "attempts": 2, "scorer": "bfcl"})
    new = EvalOutput(tmp_path / "new")
    new.open({"dataset": "d", "attempts": 2, "scorer": None})
    assert new.manifest["scorer"] == "reference"


def test_every_attempt_is_scored_by_the_chosen_scorer() -> None:
    items = load_dataset(f"bfcl:{FIXTURES / 'bfcl' / 'BFCL_v3_sample.json'}")
    task = eval_task(next(i for i in items if i.id == "simple_1"))  # math.factorial, offered as math_factorial
    dotted, offered = tool_call("math.factorial", {"number": 5}), tool_call("math_factorial", {"number": 5})
    trace = Trace(steps=[Step("answer", dotted, "tool_calls"), Step("retry", offered, "tool_calls")])
    assert [a.ok for a in score_trace(task, "m", trace, 2).attempts] == [True, True]
    bfcl = score_trace(task, "m", trace, 2, "bfcl").attempts
    assert [a.ok for a in bfcl] == [False, True] and bfcl[0].code == "unknown_tool"
    assert [a.ok for a in score_trace(task, "m", trace, 2, "exact").attempts] == [False, True]


def test_an_unknown_scorer_is_refused_by_the_config() -> None:
    assert EvalConfig(scorer="bfcl").scorer == "bfcl" and EvalConfig().scorer is None
    with pytest.raises(ValueError, match="unknown scorer 'ast'"):
        EvalConfig(scorer="ast")
