"""Interval statistics for success rates, shared by `rrr eval`, the learner's gate and the demo.

* `Rate`: `successes` out of `total` with its 95% Wilson score interval, which stays inside [0, 1]
  and is honest for small n (the gate judges on a few dozen items).
* `paired_interval` / `paired_difference`: the difference of two policies' success rates measured
  on the SAME items, with Newcombe's hybrid score interval for paired proportions (Newcombe 1998,
  Stat. Med. 17:2635, method 10: built from the two Wilson intervals and the phi correlation of the
  paired outcomes, with its continuity correction). The discordant counts (items the second policy
  fixed / broke) are reported alongside: with few items they say more than the rates.
* `status_rates`: the paper's two numbers from episode statuses (`first_ok`, `retry_ok`, `failed`,
  ...): first-attempt success, success after reflection and retry, and the retry's rescue rate
  among first-attempt failures.

Pure arithmetic: no I/O, no model.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Z95 = 1.96  # the two-sided 95% normal quantile
SUCCESS_FIRST = ("first_ok",)
SUCCESS_AFTER = ("first_ok", "retry_ok")


def wilson_interval(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of `successes` out of `total` ((0, 1) when `total` is 0)."""
    if total <= 0:
        return (0.0, 1.0)
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Rate:
    """`successes` out of `total`, with a 95% Wilson score interval."""

    successes: int
    total: int

    @property
    def rate(self) -> float:
        return self.successes / self.total if self.total else 0.0

    def wilson(self, z: float = Z95) -> tuple[float, float]:
        return wilson_interval(self.successes, self.total, z)

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.wilson()
        return {
            "successes": self.successes,
            "total": self.total,
            "rate": round(self.rate, 6),
            "ci95": [round(lo, 6), round(hi, 6)],
        }


def paired_interval(both: int, only_before: int, only_after: int, neither: int, z: float = Z95) -> tuple[float, float]:
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


def paired_difference(before: Mapping[str, bool], after: Mapping[str, bool]) -> dict[str, Any]:
    """After minus before on the items both have (item id -> success), with its paired interval."""
    ids = sorted(set(before) & set(after))
    pairs = Counter((before[i], after[i]) for i in ids)
    both, only_before = pairs[(True, True)], pairs[(True, False)]
    only_after, neither = pairs[(False, True)], pairs[(False, False)]
    lo, hi = paired_interval(both, only_before, only_after, neither)
    n = len(ids)
    return {
        "difference": round((only_after - only_before) / n, 6) if n else 0.0,
        "ci95": [round(lo, 6), round(hi, 6)],
        "n": n,
        "fixed": only_after,
        "broken": only_before,
        "method": "Newcombe's paired hybrid score interval (method 10)",
    }


def succeeded(statuses: Mapping[str, str], success: Sequence[str]) -> dict[str, bool]:
    """Item id -> whether its status counts as a success (`SUCCESS_FIRST` or `SUCCESS_AFTER`)."""
    return {key: status in success for key, status in statuses.items()}


def status_rates(statuses: Iterable[str]) -> dict[str, Rate]:
    """`first_attempt`, `after_retry` and `retry_rescued` (retry successes among first failures)."""
    counts = Counter(statuses)
    n = sum(counts.values())
    first = sum(counts[s] for s in SUCCESS_FIRST)
    after = sum(counts[s] for s in SUCCESS_AFTER)
    return {
        "first_attempt": Rate(first, n),
        "after_retry": Rate(after, n),
        "retry_rescued": Rate(after - first, n - first),
    }
