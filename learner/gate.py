"""The promotion gate: is a trained candidate better than the policy in service, without forgetting?

Called by the learner cycle after training. `evaluate_gate` runs both policies through the same
reflect/retry loop the API serves with (`evals.run.run_items`: temperature 0, one reflection and
one retry) on two sets: the held-out failures of the batch (their task messages, judged by each
row's own stored verifier and expected calls) and the regression set of past successes (never drawn
from the batch, R20). It measures first-attempt success and retry success (solved on the first
attempt or after the retry) item by item, and `decide` compares the two policies on the SAME items,
paired (Newcombe's interval for paired proportions, `evals.stats.paired_difference`):

* promote only if the lower end of the 95% paired interval of the held-out retry-success gain
  (candidate minus incumbent) is above `margin` (default 0: the gain must be distinguishable from
  noise, however small the set), and
* the lower end of the 95% paired interval of the regression set's first-attempt difference is above
  `-tolerance` (a forgetting the data cannot rule out blocks promotion), and
* there are at least `min_items` held-out items and no evaluation call failed on the engine.

The counts, the discordant items (fixed, broken), both differences with their intervals and the rule
that decided are in `GateDecision.numbers`, which the cycle stores on the run.

The evaluation engine is any `Engine`. The learner's default is a `LocalEngine` in its own process
with the candidate (and the adapter in service) loaded under temporary names, so candidates never
reach the serving engines before the gate has passed and `publish` has verified them. Pointing the
gate at serving engines works too (the temporary names are unloaded afterwards), at the cost of
serving capacity. This module does not store anything (the cycle stores the decision on the run)
and does not publish.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.loop import LoopConfig
from engines.base import Engine
from evals.items import EvalItem, gate_item
from evals.run import run_items
from evals.stats import SUCCESS_AFTER, SUCCESS_FIRST, Rate, paired_difference, status_rates
from learner.config import GateConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyScores:
    """One policy's episode status on every held-out and regression item, in item order (so two
    policies' scores pair up item by item). `errors` counts episodes the engine failed to serve."""

    policy: str
    heldout: tuple[str, ...]
    regression: tuple[str, ...]

    @property
    def heldout_first(self) -> Rate:
        return status_rates(self.heldout)["first_attempt"]

    @property
    def heldout_retry(self) -> Rate:
        return status_rates(self.heldout)["after_retry"]

    @property
    def regression_first(self) -> Rate:
        return status_rates(self.regression)["first_attempt"]

    @property
    def regression_retry(self) -> Rate:
        return status_rates(self.regression)["after_retry"]

    @property
    def errors(self) -> int:
        return sum(s == "upstream_error" for s in (*self.heldout, *self.regression))

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "heldout_first": self.heldout_first.to_dict(),
            "heldout_retry": self.heldout_retry.to_dict(),
            "regression_first": self.regression_first.to_dict(),
            "regression_retry": self.regression_retry.to_dict(),
            "errors": self.errors,
        }


@dataclass
class GateDecision:
    """The verdict, every reason for it (for the run's record), and the numbers behind it."""

    promote: bool
    reasons: list[str]
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reasons": list(self.reasons), **self.numbers}


RULE = (
    "promote iff n_heldout >= min_items, no engine errors, lower 95% bound of the paired held-out "
    "retry-success gain > margin, and lower 95% bound of the paired regression first-attempt difference "
    "> -tolerance (Newcombe's paired interval)"
)


def _paired(incumbent: Sequence[str], candidate: Sequence[str], success: Sequence[str]) -> dict[str, Any]:
    if len(incumbent) != len(candidate):
        raise ValueError("the gate compares two policies on the same items: the status lists differ in length")
    before = {str(i): s in success for i, s in enumerate(incumbent)}
    after = {str(i): s in success for i, s in enumerate(candidate)}
    return paired_difference(before, after)


def _points(diff: dict[str, Any]) -> str:
    lo, hi = diff["ci95"]
    return (
        f"{100 * diff['difference']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}], "
        f"fixed {diff['fixed']}, broke {diff['broken']}, n={diff['n']}"
    )


def decide(candidate: PolicyScores, incumbent: PolicyScores, config: GateConfig) -> GateDecision:
    """Apply the promotion rule (module docstring) to measured, paired statuses."""
    reasons: list[str] = []
    ok = True
    n = len(candidate.heldout)
    if n < config.min_items:
        ok = False
        reasons.append(f"only {n} held-out items; at least {config.min_items} are needed to judge")
    gain = _paired(incumbent.heldout, candidate.heldout, SUCCESS_AFTER)
    text = f"held-out retry success {_points(gain)}"
    if gain["ci95"][0] > config.margin or config.margin <= -1:  # -1: no requirement
        reasons.append(f"{text}: the lower bound is above the margin of {config.margin * 100:+.1f}")
    else:
        ok = False
        reasons.append(f"{text}: the lower bound is not above the margin of {config.margin * 100:+.1f}")
    regression = _paired(incumbent.regression, candidate.regression, SUCCESS_FIRST)
    if not candidate.regression:
        reasons.append("the regression set is empty: forgetting was not measured")
    else:
        text = f"regression first-attempt difference {_points(regression)}"
        if regression["ci95"][0] > -config.tolerance or config.tolerance >= 1:  # 1: no requirement
            reasons.append(f"{text}: the lower bound is above -{config.tolerance * 100:.1f}")
        else:
            ok = False
            reasons.append(f"{text}: a drop of more than {config.tolerance * 100:.1f} points is not ruled out")
    for scores in (candidate, incumbent):
        if scores.errors:
            ok = False
            reasons.append(f"{scores.errors} evaluation episodes of {scores.policy} failed on the engine")
    numbers = {
        "candidate": candidate.to_dict(),
        "incumbent": incumbent.to_dict(),
        "heldout_retry_gain": gain,
        "regression_first_difference": regression,
        "rule": RULE,
        "config": {"margin": config.margin, "tolerance": config.tolerance, "min_items": config.min_items},
    }
    return GateDecision(promote=ok, reasons=reasons, numbers=numbers)


# --- evaluation -------------------------------------------------------------------------------------


async def score_policy(
    engine: Engine,
    model: str | None,
    heldout: Sequence[EvalItem],
    regression: Sequence[EvalItem],
    *,
    config: GateConfig = GateConfig(),
    loop: LoopConfig = LoopConfig(),
    label: str | None = None,
    on_item: Callable[[], None] | None = None,
) -> PolicyScores:
    """Evaluate one policy (`model` = an adapter name on `engine`, None = the base) on both sets."""
    kw: dict[str, Any] = {
        "max_tokens": config.max_tokens,
        "concurrency": config.concurrency,
        "loop": loop,
        "on_item": on_item,
    }
    held = await run_items(engine, model, heldout, **kw)
    reg = await run_items(engine, model, regression, **kw)
    return PolicyScores(policy=label or model or "base", heldout=tuple(held), regression=tuple(reg))


async def evaluate_gate(
    engine: Engine,
    *,
    candidate_dir: str,
    heldout: Sequence[Any],
    regression: Sequence[Any],
    incumbent: tuple[str, str] | None = None,
    config: GateConfig = GateConfig(),
    loop: LoopConfig = LoopConfig(),
    on_item: Callable[[], None] | None = None,
) -> GateDecision:
    """Score the candidate folder and the incumbent (`(name, verified path)`, None = base model) and decide.

    Both are loaded on `engine` under temporary names and unloaded afterwards; the candidate folder
    must already have passed `folder.check_adapter_source` (no pickles).
    """
    held = [gate_item(r) for r in heldout]
    reg = [gate_item(r) for r in regression]
    tag = uuid.uuid4().hex[:8]
    cand_name = f"rrr-gate-candidate-{tag}"
    inc_name = f"rrr-gate-incumbent-{tag}" if incumbent else None
    loaded: list[str] = []
    try:
        await engine.load_adapter(cand_name, candidate_dir)
        loaded.append(cand_name)
        if incumbent is not None and inc_name is not None:
            await engine.load_adapter(inc_name, incumbent[1])
            loaded.append(inc_name)
        cand = await score_policy(
            engine, cand_name, held, reg, config=config, loop=loop, label="candidate", on_item=on_item
        )
        inc = await score_policy(
            engine,
            inc_name,
            held,
            reg,
            config=config,
            loop=loop,
            label=incumbent[0] if incumbent else "base",
            on_item=on_item,
        )
    finally:
        for name in loaded:
            try:
                await engine.unload_adapter(name)
            except Exception:  # the evaluation engine is private to the learner: log and go on
                log.warning("could not unload %s from the evaluation engine", name, exc_info=True)
    decision = decide(cand, inc, config)
    log.info("gate: %s (%s)", "promote" if decision.promote else "reject", "; ".join(decision.reasons))
    return decision
