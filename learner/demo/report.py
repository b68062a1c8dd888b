"""The demo's before/after table: rates with 95% Wilson intervals, paired differences, and its text.

Who calls it: ``learner.demo.run`` (after the held-out split went through the API once per policy)
and ``learner.demo.chart``. Input is one status per task and policy, exactly as the API reported it
in the ``rrr`` object of each answer (``first_ok``, ``retry_ok``, ``failed``, or ``error`` when the
request itself failed); the same task ids for both policies, so differences are paired.

* ``summarize_statuses``: n, first-attempt success, success after reflection and retry, and the
  share of first-attempt failures the retry rescued, each ``{"rate", "successes", "n", "ci95"}``.
* ``difference``: after minus before on the same tasks, with Newcombe's hybrid score interval for
  paired proportions (Newcombe 1998, Stat. Med. 17:2635, method 10: built from the two Wilson
  intervals and the phi correlation of the paired outcomes, with its continuity correction). The
  discordant counts (tasks the new policy fixed / broke) are reported alongside.

This module does no I/O and imports nothing heavy.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from evals.stats import Rate

SUCCESS_FIRST = ("first_ok",)
SUCCESS_AFTER = ("first_ok", "retry_ok")
METRICS = (("first_attempt", "first attempt"), ("after_retry", "after reflection + retry"))


def rate_dict(rate: Rate) -> dict[str, Any]:
    lo, hi = rate.wilson()
    return {"rate": round(rate.rate, 6), "successes": rate.successes, "n": rate.total,
            "ci95": [round(lo, 6), round(hi, 6)]}


def summarize_statuses(statuses: Mapping[str, str]) -> dict[str, Any]:
    """Rates over `statuses` (task id -> status); `errors` counts requests that got no answer."""
    counts = Counter(statuses.values())
    n = len(statuses)
    first = sum(counts[s] for s in SUCCESS_FIRST)
    after = sum(counts[s] for s in SUCCESS_AFTER)
    return {
        "n": n,
        "first_attempt": rate_dict(Rate(first, n)),
        "after_retry": rate_dict(Rate(after, n)),
        "retry_rescued": rate_dict(Rate(counts["retry_ok"], n - first)),
        "statuses": dict(sorted(counts.items())),
        "errors": counts["error"],
    }


def paired_interval(both: int, only_before: int, only_after: int, neither: int,
                    z: float = 1.96) -> tuple[float, float]:
    """95% interval of p_after - p_before for paired binary outcomes (Newcombe's method 10)."""
    n = both + only_before + only_after + neither
    if n == 0:
        return (-1.0, 1.0)
    before, after = Rate(both + only_before, n), Rate(both + only_after, n)
    p1, p2 = before.rate, after.rate
    l1, u1 = before.wilson(z)
    l2, u2 = after.wilson(z)
    margins = (both + only_before) * (only_after + neither) * (both + only_after) * (only_before + neither)
    cross = float(both * neither - only_before * only_after)
    if cross > 0:  # Newcombe's continuity correction of phi
        cross = max(cross - n / 2, 0.0)
    phi = cross / math.sqrt(margins) if margins else 0.0
    diff = p2 - p1
    lower = math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    upper = math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return (max(-1.0, diff - lower), min(1.0, diff + upper))


def difference(before: Mapping[str, str], after: Mapping[str, str], success: Sequence[str]) -> dict[str, Any]:
    """After minus before on the tasks both policies answered, with its paired interval and the flips."""
    ids = sorted(set(before) & set(after))
    pairs = Counter((before[i] in success, after[i] in success) for i in ids)
    both, only_before = pairs[(True, True)], pairs[(True, False)]
    only_after, neither = pairs[(False, True)], pairs[(False, False)]
    lo, hi = paired_interval(both, only_before, only_after, neither)
    n = len(ids)
    return {"difference": round((only_after - only_before) / n, 6) if n else 0.0,
            "ci95": [round(lo, 6), round(hi, 6)], "n": n, "fixed": only_after, "broken": only_before,
            "method": "Newcombe's paired hybrid score interval (method 10)"}


def compare(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, Any]:
    """Both summaries and the differences of both metrics."""
    return {"before": summarize_statuses(before), "after": summarize_statuses(after),
            "difference": {"first_attempt": difference(before, after, SUCCESS_FIRST),
                           "after_retry": difference(before, after, SUCCESS_AFTER)}}


def _pct(rate: Mapping[str, Any]) -> str:
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
        lines.append(f"{label:<{width}}{row['n']:>5}  {_pct(row['first_attempt']):<24}{_pct(row['after_retry'])}")
    diff = table["difference"]
    lines.append(f"{'difference (after - before)':<{width}}{diff['after_retry']['n']:>5}  "
                 f"{_points(diff['first_attempt']):<24}{_points(diff['after_retry'])}")
    flips = [f"fixed {diff[m]['fixed']}, broke {diff[m]['broken']}" for m, _ in METRICS]
    lines.append(f"{'':<{width}}{'':>5}  {flips[0]:<24}{flips[1]}")
    return "\n".join(lines)
