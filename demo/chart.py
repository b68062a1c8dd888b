"""The demo's PNG: base vs last adapter with 95% intervals, the learning curve across cycles, the training reward.

Who calls it: ``demo.run`` once the table exists. matplotlib is imported lazily and used
through its object API (``Figure`` rendered by Agg), so no GUI backend or global pyplot state is
touched. This module computes nothing: the numbers come from ``demo.report``.
"""

from __future__ import annotations

import itertools
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
    curve: Sequence[Mapping[str, Any]] = (),
    title: str = "rrr demo",
) -> Path:
    """Three panels: grouped bars (base/last adapter x first attempt/after retry) with Wilson intervals,
    the learning curve (held-out rates of the base and of each cycle's adapter), and the GRPO reward
    (retry success of sampled reflections) per training step across cycles."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.5), dpi=110)
    bars, learning, reward = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.1, 1, 1]})
    _bars(bars, table, before_label, after_label)
    _learning_curve(learning, curve)
    _reward_curve(reward, steps)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _learning_curve(ax: Any, curve: Sequence[Mapping[str, Any]]) -> None:
    if not curve:
        ax.text(0.5, 0.5, "no learning curve", ha="center", va="center", transform=ax.transAxes)
        return
    xs = list(range(len(curve)))
    for metric, name, color in (
        ("first_attempt", "first attempt", "#9aa5b1"),
        ("after_retry", "after retry", "#2f7ed8"),
    ):
        rates = [100 * row[metric]["rate"] for row in curve]
        lows = [100 * (row[metric]["rate"] - row[metric]["ci95"][0]) for row in curve]
        highs = [100 * (row[metric]["ci95"][1] - row[metric]["rate"]) for row in curve]
        ax.errorbar(xs, rates, yerr=[lows, highs], marker="o", capsize=4, color=color, label=name)
    labels = ["base"] + [
        f"cycle {i}\n{(row.get('adapter') or '?')}{'' if row.get('kind') == 'promoted' else ' (rejected)'}"
        for i, row in enumerate(curve[1:], start=1)
    ]
    ax.set_xticks(xs, labels, fontsize=8)
    lo = min(100 * row["first_attempt"]["ci95"][0] for row in curve)
    ax.set_ylim(max(0, lo - 10), 100)
    ax.set_ylabel("held-out success (%), 95% Wilson interval", fontsize=8)
    ax.set_title("learning curve across cycles", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)


def _reward_curve(curve: Any, steps: Sequence[Mapping[str, Any]]) -> None:
    numbered = [s for s in steps if "reward_mean" in s and "step" in s]
    xs_steps = list(range(1, len(numbered) + 1))
    rewards = [float(s["reward_mean"]) for s in numbered]
    if numbered:
        curve.plot(xs_steps, rewards, color="#9cc0ee", linewidth=1, label="reward per step")
        curve.plot(
            xs_steps,
            _moving_average(rewards, max(1, len(rewards) // 10)),
            color="#2f7ed8",
            linewidth=2,
            label="moving average",
        )
        for x, (prev, step) in enumerate(itertools.pairwise(numbered), start=1):
            if step.get("cycle") != prev.get("cycle"):
                curve.axvline(x + 0.5, color="#555", linestyle=":", linewidth=1)
        curve.set_ylim(0, min(1.0, max(0.1, 1.8 * max(rewards))))
        handles, labels = curve.get_legend_handles_labels()
        zero = [float(s["frac_reward_zero_std"]) for s in numbered if "frac_reward_zero_std" in s]
        if len(zero) == len(numbered):
            share = curve.twinx()
            share.plot(
                xs_steps,
                zero,
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
    curve.set_xlabel("GRPO step (all cycles; dotted: next cycle)")
    curve.set_ylabel("reward = retry success after a sampled reflection", fontsize=8)
    curve.set_title("training reward", fontsize=10)


def _bars(bars: Any, table: Mapping[str, Any], before_label: str, after_label: str) -> None:
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
    diffs = "\n".join(f"{name}: {_points(table['difference'][metric])}" for metric, name in METRICS)
    bars.set_title(f"held-out tasks through the rrr API (after - before)\n{diffs}", fontsize=8)
