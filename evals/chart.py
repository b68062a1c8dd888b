"""The evaluation's PNG: accuracy at each attempt per model, as grouped bars with 95% Wilson intervals.

Who calls it: ``evals.report.write_reports``. matplotlib is imported lazily (it is an
optional dependency: ImportError tells the caller to skip the chart) and used through its object
API on the Agg canvas, so no GUI backend and no global pyplot state is touched. The numbers come
from ``evals.report.summarize``; nothing is computed here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = ("#9aa5b1", "#2f7ed8", "#1b4f8f", "#0b2a52")


def write_chart(path: str | Path, summary: dict[str, Any], *, title: str | None = None) -> Path:
    """Bars: one group per model, one bar per attempt, each labelled with its accuracy."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = summary["models"]
    attempts = int(summary["attempts"])
    fig = Figure(figsize=(max(5.0, 1.6 + 1.4 * len(models) * max(1, attempts) / 2), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, attempts)
    for k in range(attempts):
        accs = [m["accuracy"][k] for m in models]
        xs = [i + (k - (attempts - 1) / 2) * width for i in range(len(models))]
        heights = [100 * a["accuracy"] for a in accs]
        errors = [
            [100 * (a["accuracy"] - a["ci95"][0]) for a in accs],
            [100 * (a["ci95"][1] - a["accuracy"]) for a in accs],
        ]
        label = "attempt 1" if k == 0 else f"attempt {k + 1} (after reflection)"
        ax.bar(xs, heights, width, yerr=errors, capsize=4, color=COLORS[k % len(COLORS)], label=label)
        for x, h in zip(xs, heights, strict=True):  # inside the bar, clear of the interval's caps
            ax.text(
                x,
                max(h / 2, 2.0),
                f"{h:.1f}%",
                ha="center",
                va="center",
                fontsize=8,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.8, "linewidth": 0},
            )
    ax.set_xticks(range(len(models)), [f"{m['model']}\n(n={m['n']})" for m in models])
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("accuracy (%), 95% Wilson interval")
    ax.legend(loc="upper center", ncol=min(attempts, 3), fontsize=8, frameon=False)
    ax.set_title(
        title or f"rrr eval: {Path(str(summary['dataset']).partition(':')[2]).name or summary['dataset']}", fontsize=10
    )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
