"""The demo's before/after table: rates with 95% Wilson intervals, paired differences, and its text.

Who calls it: ``demo.run`` (after the held-out split went through the API once per policy)
and ``demo.chart``. Input is one status per task and policy, exactly as the API reported it
in the ``rrr`` object of each answer (``first_ok``, ``retry_ok``, ``failed``, or ``error`` when the
request itself failed); the same task ids for both policies, so differences are paired.

* ``summarize_statuses``: n, first-attempt success, success after reflection and retry, and the
  share of first-attempt failures the retry rescued, each ``{"rate", "successes", "n", "ci95"}``.
* ``difference``: after minus before on the same tasks, with Newcombe's paired interval
  (``evals.stats.paired_difference``) and the discordant counts (tasks fixed / broken).

This module does no I/O and imports nothing heavy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from evals.stats import SUCCESS_AFTER, SUCCESS_FIRST, Rate, paired_difference, status_rates, succeeded

METRICS = (("first_attempt", "first attempt"), ("after_retry", "after reflection + retry"))


def rate_dict(rate: Rate) -> dict[str, Any]:
    """A `Rate` as the demo's JSON writes it: ``{"rate", "successes", "n", "ci95"}``."""
    lo, hi = rate.wilson()
    return {
        "rate": round(rate.rate, 6),
        "successes": rate.successes,
        "n": rate.total,
        "ci95": [round(lo, 6), round(hi, 6)],
    }


def summarize_statuses(statuses: Mapping[str, str]) -> dict[str, Any]:
    """Rates over `statuses` (task id -> status); `errors` counts requests that got no answer."""
    counts = Counter(statuses.values())
    rates = status_rates(statuses.values())
    return {
        "n": len(statuses),
        **{key: rate_dict(rate) for key, rate in rates.items()},
        "statuses": dict(sorted(counts.items())),
        "errors": counts["error"],
    }


def difference(before: Mapping[str, str], after: Mapping[str, str], success: Sequence[str]) -> dict[str, Any]:
    """After minus before on the tasks both policies answered, with its paired interval and the flips."""
    return paired_difference(succeeded(before, success), succeeded(after, success))


def compare(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, Any]:
    """Both summaries and the differences of both metrics."""
    return {
        "before": summarize_statuses(before),
        "after": summarize_statuses(after),
        "difference": {
            "first_attempt": difference(before, after, SUCCESS_FIRST),
            "after_retry": difference(before, after, SUCCESS_AFTER),
        },
    }


def format_rate(rate: Mapping[str, Any]) -> str:
    """A rate as the demo prints it: ``91.6% [88.8, 93.7]`` (its 95% Wilson interval)."""
    lo, hi = rate["ci95"]
    return f"{100 * rate['rate']:5.1f}% [{100 * lo:4.1f}, {100 * hi:4.1f}]"


def _points(diff: Mapping[str, Any]) -> str:
    lo, hi = diff["ci95"]
    return f"{100 * diff['difference']:+5.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def format_table(table: Mapping[str, Any], before_label: str, after_label: str) -> str:
    """The before/after table as aligned text (rates with 95% Wilson intervals, n, difference)."""
    width = max(len(before_label), len(after_label), len("difference (after - before)")) + 2
    head = f"{'policy':<{width}}{'n':>5}  {METRICS[0][1]:<24}{METRICS[1][1]}"
    lines = [head, "-" * (len(head) + 6)]
    for label, key in ((before_label, "before"), (after_label, "after")):
        row = table[key]
        lines.append(
            f"{label:<{width}}{row['n']:>5}  {format_rate(row['first_attempt']):<24}{format_rate(row['after_retry'])}"
        )
    diff = table["difference"]
    lines.append(
        f"{'difference (after - before)':<{width}}{diff['after_retry']['n']:>5}  "
        f"{_points(diff['first_attempt']):<24}{_points(diff['after_retry'])}"
    )
    flips = [f"fixed {diff[m]['fixed']}, broke {diff[m]['broken']}" for m, _ in METRICS]
    lines.append(f"{'':<{width}}{'':>5}  {flips[0]:<24}{flips[1]}")
    return "\n".join(lines)
