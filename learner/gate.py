"""The promotion gate: is a trained candidate better than the policy in service, without forgetting?

Called by the learner cycle after training. `evaluate_gate` runs both policies through the same
reflect/retry loop the API serves with (`evals.run.run_items`: temperature 0, one reflection and
one retry) on two sets: the held-out failures of the batch (their task messages, judged by each
row's own stored verifier and expected calls) and the regression set of past successes (never drawn
from the batch, R20). It measures first-attempt success and retry success (solved on the first
attempt or after the retry) with counts and 95% Wilson intervals, and `decide` applies the rule:

* promote only if held-out retry success improves by at least `margin`, and
* first-attempt success on the regression set drops by no more than `tolerance`, and
* there are at least `min_items` held-out items and no evaluation call failed on the engine.

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.loop import LoopConfig
from engines.base import Engine
from evals.items import EvalItem, gate_item
from evals.run import run_items
from evals.stats import Rate
from learner.config import GateConfig

log = logging.getLogger(__name__)

EPS = 1e-9  # rates are ratios of small integers: compare with a little slack


@dataclass(frozen=True)
class PolicyScores:
    """One policy's numbers on both sets. `errors` counts episodes the engine failed to serve."""

    policy: str
    heldout_first: Rate
    heldout_retry: Rate
    regression_first: Rate
    regression_retry: Rate
    errors: int = 0

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


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def decide(candidate: PolicyScores, incumbent: PolicyScores, config: GateConfig) -> GateDecision:
    """Apply the promotion rule (module docstring) to measured numbers."""
    reasons: list[str] = []
    ok = True
    n = candidate.heldout_retry.total
    if n < config.min_items:
        ok = False
        reasons.append(f"only {n} held-out items; at least {config.min_items} are needed to judge")
    gain = candidate.heldout_retry.rate - incumbent.heldout_retry.rate
    retry_text = (
        f"held-out retry success {_pct(incumbent.heldout_retry.rate)} -> "
        f"{_pct(candidate.heldout_retry.rate)} ({gain * 100:+.1f} points"
    )
    if gain + EPS < config.margin:
        ok = False
        reasons.append(f"{retry_text}, below the margin of {config.margin * 100:.1f})")
    else:
        reasons.append(f"{retry_text}, margin {config.margin * 100:.1f} met)")
    drop = incumbent.regression_first.rate - candidate.regression_first.rate
    if candidate.regression_first.total == 0:
        reasons.append("the regression set is empty: forgetting was not measured")
    else:
        reg_text = (
            f"regression first-attempt success {_pct(incumbent.regression_first.rate)} -> "
            f"{_pct(candidate.regression_first.rate)} ({-drop * 100:+.1f} points"
        )
        if drop - EPS > config.tolerance:
            ok = False
            reasons.append(f"{reg_text}, more than the tolerance of {config.tolerance * 100:.1f})")
        else:
            reasons.append(f"{reg_text}, within the tolerance of {config.tolerance * 100:.1f})")
    for scores in (candidate, incumbent):
        if scores.errors:
            ok = False
            reasons.append(f"{scores.errors} evaluation episodes of {scores.policy} failed on the engine")
    numbers = {
        "candidate": candidate.to_dict(),
        "incumbent": incumbent.to_dict(),
        "retry_gain": round(gain, 6),
        "regression_drop": round(drop, 6),
        "config": {"margin": config.margin, "tolerance": config.tolerance, "min_items": config.min_items},
    }
    return GateDecision(promote=ok, reasons=reasons, numbers=numbers)


# --- evaluation -------------------------------------------------------------------------------------


def _rates(statuses: Iterable[str]) -> tuple[Rate, Rate, int]:
    statuses = list(statuses)
    first = sum(s == "first_ok" for s in statuses)
    retry = sum(s in ("first_ok", "retry_ok") for s in statuses)
    return Rate(first, len(statuses)), Rate(retry, len(statuses)), sum(s == "upstream_error" for s in statuses)


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
    h_first, h_retry, h_err = _rates(await run_items(engine, model, heldout, **kw))
    r_first, r_retry, r_err = _rates(await run_items(engine, model, regression, **kw))
    return PolicyScores(
        policy=label or model or "base",
        heldout_first=h_first,
        heldout_retry=h_retry,
        regression_first=r_first,
        regression_retry=r_retry,
        errors=h_err + r_err,
    )


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
