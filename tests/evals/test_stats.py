"""evals/stats.py: Wilson intervals, Newcombe's paired interval, the paper's rates from statuses."""

from __future__ import annotations

import pytest

from evals.stats import Rate, paired_difference, paired_interval, status_rates, wilson_interval


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and round(hi, 4) == 0.1611
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and round(lo, 4) == 0.8389
    for k, n in ((3, 7), (1, 50), (49, 50)):  # Rate is the same interval
        assert wilson_interval(k, n) == pytest.approx(Rate(k, n).wilson(), abs=1e-6)


def test_paired_interval_matches_newcombes_method_10() -> None:
    # Bentur et al. (Newcombe 1998 / Fagerland et al. ch. 8): 1 both, 1 only before, 7 only after, 12 neither.
    lo, hi = paired_interval(1, 1, 7, 12)
    assert (round(lo, 4), round(hi, 4)) == (0.0256, 0.5069)
    # Strongly concordant pairs give a much tighter interval than the same margins unpaired.
    tight = paired_interval(50, 2, 6, 42)
    loose = paired_interval(26, 26, 30, 18)
    assert tight[1] - tight[0] < 0.6 * (loose[1] - loose[0])
    assert paired_interval(0, 0, 0, 0) == (-1.0, 1.0)


def test_paired_difference_counts_fixed_and_broken_items_only_on_shared_ids() -> None:
    before = {"a": True, "b": False, "c": True, "d": False}
    after = {"a": False, "b": True, "c": True, "d": True, "only_after": True}
    diff = paired_difference(before, after)
    assert (diff["n"], diff["fixed"], diff["broken"]) == (4, 2, 1)
    assert diff["difference"] == pytest.approx(0.25)
    lo, hi = diff["ci95"]
    assert lo < 0.25 < hi


def test_status_rates_separate_first_attempts_from_rescues() -> None:
    rates = status_rates(["first_ok", "retry_ok", "failed", "failed", "upstream_error"])
    assert rates["first_attempt"] == Rate(1, 5)
    assert rates["after_retry"] == Rate(2, 5)
    assert rates["retry_rescued"] == Rate(1, 4)
