"""The paper-style report of an evaluation: accuracy at attempt 1, 2, ... per model, with 95% intervals.

Who calls it: ``evals.run`` at the end of a run (and anyone holding ``ItemResult``s,
such as the demo). Accuracy at attempt k is the share of items solved within the first k attempts,
the numbers the paper reports as first-try and second-try (after reflection) accuracy; each comes
with a 95% Wilson score interval (`evals.stats`).

Outputs: ``summarize`` (a JSON-able dict, saved as summary.json), ``format_table`` (the table the
CLI prints), ``format_markdown`` (table.md) and ``write_reports`` (all files, the chart through
``evals.chart``). No model runs here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.results import ItemResult
from evals.stats import Rate


def accuracy(rate: Rate) -> dict[str, Any]:
    """A `Rate` as the report writes it: ``{"correct", "total", "accuracy", "ci95"}``."""
    lo, hi = rate.wilson()
    return {
        "correct": rate.successes,
        "total": rate.total,
        "accuracy": round(rate.rate, 6),
        "ci95": [round(lo, 6), round(hi, 6)],
    }


def _accuracies(rows: Sequence[ItemResult], attempts: int) -> list[dict[str, Any]]:
    return [accuracy(Rate(sum(r.ok_at(k) for r in rows), len(rows))) for k in range(1, attempts + 1)]


def summarize(
    results: Iterable[ItemResult],
    *,
    models: Sequence[str],
    item_ids: Sequence[str],
    attempts: int,
    dataset: str,
    target: str | None = None,
    scorer: str = "reference",
) -> dict[str, Any]:
    """Per model: n, accuracy at each attempt (with intervals), per category, and rrr's statuses.

    Only results of ``item_ids`` count (a run with --limit reports on its items); models are
    reported in the order given, a model with no results yet as n = 0. ``scorer`` names how the
    attempts were scored (``tools.scorers``).
    """
    wanted = set(item_ids)
    by_model: dict[str, list[ItemResult]] = {m: [] for m in models}
    for result in results:
        if result.id in wanted and result.model in by_model:
            by_model[result.model].append(result)
    rows = []
    for model, items in by_model.items():
        categories: dict[str, list[ItemResult]] = {}
        for item in items:
            if item.category is not None:
                categories.setdefault(item.category, []).append(item)
        rows.append(
            {
                "model": model,
                "n": len(items),
                "accuracy": _accuracies(items, attempts),
                "categories": {c: _accuracies(r, attempts) for c, r in sorted(categories.items())},
                "statuses": dict(sorted(Counter(i.status or "unknown" for i in items).items())),
                "first_failures": failure_counts(items),
                "adapters": sorted({i.adapter for i in items if i.adapter}),
            }
        )
    return {
        "dataset": dataset,
        "target": target,
        "scorer": scorer,
        "items": len(item_ids),
        "attempts": attempts,
        "models": rows,
    }


def failure_counts(items: Iterable[ItemResult]) -> dict[str, int]:
    """How many items failed their first attempt with each failure code, biggest first."""
    codes = Counter(i.attempts[0].code or "unknown" for i in items if i.attempts and not i.attempts[0].ok)
    return dict(sorted(codes.items(), key=lambda kv: (-kv[1], kv[0])))


def format_failures(counts: dict[str, int], total: int, title: str = "first-attempt failures") -> str:
    """A per-code table: code, count, share of all items."""
    if not counts:
        return ""
    width = max(len(title), *(len(code) for code in counts))
    lines = [f"{title:<{width}}  {'items':>5}  share"]
    lines += [f"{code:<{width}}  {n:>5}  {n / total:.1%}" for code, n in counts.items()]
    return "\n".join(lines)


def _cell(acc: dict[str, Any]) -> str:
    lo, hi = acc["ci95"]
    return f"{100 * acc['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    attempts = int(summary["attempts"])
    header = ["model", "n", *[f"attempt {k}" for k in range(1, attempts + 1)]]
    if attempts > 1:
        header.append(f"gain 1->{attempts}")
    body = []
    for row in summary["models"]:
        accs = row["accuracy"]
        n = f"{row['n']}" if row["n"] == summary["items"] else f"{row['n']}/{summary['items']}"
        line = [row["model"], n, *[_cell(a) for a in accs]]
        if attempts > 1:
            line.append(f"{100 * (accs[-1]['accuracy'] - accs[0]['accuracy']):+.1f} pts")
        body.append(line)
    return header, body


def format_table(summary: dict[str, Any]) -> str:
    """A caption naming the scorer, then a plain-text table: accuracy at each attempt with [95% interval], per model."""
    header, body = _rows(summary)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [header, *body]
    ]
    return "\n".join([f"scorer: {summary.get('scorer', 'reference')}", *(line.rstrip() for line in lines)])


def format_markdown(summary: dict[str, Any]) -> str:
    """The same table in Markdown, with a line saying what was measured."""
    header, body = _rows(summary)
    out = [
        f"Accuracy on `{summary['dataset']}` at attempt 1..{summary['attempts']} "
        "(attempt k = solved within k attempts; a retry follows a self-reflection), 95% Wilson intervals; "
        f"scored by the `{summary.get('scorer', 'reference')}` scorer.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Reports:
    """The files written; ``chart`` is None when it could not be drawn (``chart_note`` says why)."""

    summary: Path
    table: Path
    chart: Path | None
    chart_note: str | None = None


def write_reports(folder: str | Path, summary: dict[str, Any]) -> Reports:
    """summary.json, table.md and chart.png in ``folder``."""
    from evals.chart import write_chart

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    table_path = out / "table.md"
    table_path.write_text(format_markdown(summary), encoding="utf-8")
    try:
        chart: Path | None = write_chart(out / "chart.png", summary)
        note = None
    except ImportError:
        chart, note = None, "matplotlib is not installed (pip install matplotlib); no chart was drawn"
    return Reports(summary=summary_path, table=table_path, chart=chart, chart_note=note)
