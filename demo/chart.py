"""The demo's PNG: the before/after rates with their 95% intervals, and the training reward per step.

Who calls it: ``demo.run`` once the table exists. matplotlib is imported lazily and used
through its object API (``Figure`` rendered by Agg), so no GUI backend or global pyplot state is
touched. This module computes nothing: the numbers come from ``demo.report``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from demo.report import METRICS


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _points(diff: Mapping[str, Any]) -> str:
    lo, hi = diff["ci95"]
    return f"{100 * diff['difference']:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def write_chart(
    path: str | Path,
    table: Mapping[str, Any],
    *,
    before_label: str,
    after_label: str,
    steps: Sequence[Mapping[str, Any]],
    title: str = "rrr demo",
) -> Path:
    """Two panels: grouped bars (before/after x first attempt/after retry) with Wilson intervals,
    and the GRPO reward (retry success of sampled reflections) per training step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.3), dpi=110)
    bars, curve = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    width = 0.38
    for offset, (key, label, color) in enumerate(
        (("before", before_label, "#9aa5b1"), ("after", after_label, "#2f7ed8"))
    ):
        rows = [table[key][metric] for metric, _ in METRICS]
        xs = [i + (offset - 0.5) * width for i in range(len(METRICS))]
        heights = [100 * r["rate"] for r in rows]
        errors = [[100 * (r["rate"] - r["ci95"][0]) for r in rows], [100 * (r["ci95"][1] - r["rate"]) for r in rows]]
        bars.bar(xs, heights, width, yerr=errors, capsize=4, color=color, label=f"{label} (n={table[key]['n']})")
        for x, r in zip(xs, rows, strict=True):
            bars.text(x, 100 * r["ci95"][1] + 1.5, f"{100 * r['rate']:.1f}%", ha="center", va="bottom", fontsize=8)
    bars.set_xticks(range(len(METRICS)), [name for _, name in METRICS])
    bars.set_ylabel("held-out success (%), 95% Wilson interval")
    bars.set_ylim(0, 100)
    bars.legend(loc="lower right", fontsize=8)
    diffs = "; ".join(f"{name}: {_points(table['difference'][metric])}" for metric, name in METRICS)
    bars.set_title(f"held-out tasks through the rrr API\nafter - before, {diffs}", fontsize=9)

    numbered = [(int(s["step"]), float(s["reward_mean"])) for s in steps if "reward_mean" in s and "step" in s]
    if numbered:
        xs_steps = [s for s, _ in numbered]
        rewards = [r for _, r in numbered]
        curve.plot(xs_steps, rewards, color="#9cc0ee", linewidth=1, label="reward per step")
        curve.plot(
            xs_steps,
            _moving_average(rewards, max(1, len(rewards) // 10)),
            color="#2f7ed8",
            linewidth=2,
            label="moving average",
        )
        curve.set_ylim(0, max(0.1, 1.8 * max(rewards)))  # headroom for the legend
        handles, labels = curve.get_legend_handles_labels()
        zero = [(int(s["step"]), float(s["frac_reward_zero_std"])) for s in steps if "frac_reward_zero_std" in s]
        if zero:
            share = curve.twinx()
            share.plot(
                [s for s, _ in zero],
                [z for _, z in zero],
                color="#e8a33d",
                linewidth=1,
                alpha=0.7,
                label="groups with zero reward variance (right axis)",
            )
            share.set_ylim(0, 1.8)
            share.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
            share.set_ylabel("share of groups with zero reward variance", fontsize=8)
            more_handles, more_labels = share.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        curve.legend(handles, labels, loc="upper left", fontsize=8)
    else:
        curve.text(0.5, 0.5, "no training steps", ha="center", va="center", transform=curve.transAxes)
    curve.set_xlabel("GRPO step")
    curve.set_ylabel("reward = retry success after a sampled reflection", fontsize=8)
    curve.set_title("training reward", fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
