"""The evaluation report on hand-made results: Wilson intervals, accuracy at attempt k, the tables, the chart."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from evals import (
    AttemptResult,
    ItemResult,
    format_markdown,
    format_table,
    summarize,
    write_reports,
)


def _result(model: str, item: str, oks: list[bool], category: str | None = None) -> ItemResult:
    return ItemResult(
        model=model,
        id=item,
        task="tool_call",
        category=category,
        attempts=[AttemptResult(number=i + 1, ok=ok, reason="" if ok else "wrong") for i, ok in enumerate(oks)],
    )


def test_accuracy_at_attempt_k_is_solved_within_k() -> None:
    results = [
        _result("a", "1", [True], "simple"),
        _result("a", "2", [False, True], "simple"),
        _result("a", "3", [False, False], "parallel"),
        _result("a", "9", [True]),  # 9: not selected
        _result("b", "1", [False, False]),
    ]
    summary = summarize(results, models=["a", "b", "c"], item_ids=["1", "2", "3"], attempts=2, dataset="xlam:x")
    a, b, c = summary["models"]
    assert [(x["correct"], x["total"]) for x in a["accuracy"]] == [(1, 3), (2, 3)]
    assert a["categories"]["simple"][1]["accuracy"] == 1.0 and a["categories"]["parallel"][0]["correct"] == 0
    assert (b["n"], c["n"]) == (1, 0)
    caption, *table = format_table(summary).splitlines()
    assert caption == "scorer: reference" and summary["scorer"] == "reference"
    assert table[0].split() == ["model", "n", "attempt", "1", "attempt", "2", "gain", "1->2"]
    assert table[1].split() == ["a", "3", "33.3%", "[6.1,", "79.2]", "66.7%", "[20.8,", "93.9]", "+33.3", "pts"]
    assert table[2].split()[1] == "1/3" and table[3].split()[1] == "0/3"  # incomplete rows say so
    assert "scored by the `reference` scorer" in format_markdown(summary)
    other = summarize(results, models=["a"], item_ids=["1"], attempts=2, dataset="xlam:x", scorer="bfcl")
    assert format_table(other).splitlines()[0] == "scorer: bfcl" and "`bfcl` scorer" in format_markdown(other)
    assert "| a | 3 | 33.3% [6.1, 79.2] | 66.7% [20.8, 93.9] | +33.3 pts |" in format_markdown(summary)


def test_reports_without_matplotlib_skip_only_the_chart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = summarize([_result("a", "1", [True])], models=["a"], item_ids=["1"], attempts=1, dataset="xlam:x")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.delitem(sys.modules, "matplotlib.figure", raising=False)
    monkeypatch.delitem(sys.modules, "matplotlib.backends.backend_agg", raising=False)
    reports = write_reports(tmp_path, summary)
    assert reports.chart is None and reports.chart_note and "matplotlib" in reports.chart_note
    assert json.loads(reports.summary.read_text())["models"][0]["n"] == 1
    assert reports.table.read_text().count("| a |") == 1
    assert not (tmp_path / "chart.png").exists()
