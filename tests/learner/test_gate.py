"""learner/gate.py: the paired promotion rule on hand-built statuses (equal, better, degraded candidates,
noise over many seeds), and a real evaluation.

The evaluation test runs the real reflect/retry loop on a `LocalEngine` over the tiny tool model
(it memorised a correct call for one prompt and a malformed one for another), so the incumbent's
numbers are known; the candidate is a noisy LoRA that breaks the memorised answer.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from agent.loop import LoopConfig
from evals.items import EvalItem, gate_item
from evals.stats import Rate
from learner.config import GateConfig
from learner.gate import RULE, PolicyScores, decide, evaluate_gate
from tests.conftest import ToolModel
from tools.verify import VerifierSpec

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


F, R, X, E = "first_ok", "retry_ok", "failed", "upstream_error"


def scores(heldout: list[str], regression: list[str], policy: str = "p") -> PolicyScores:
    return PolicyScores(policy=policy, heldout=tuple(heldout), regression=tuple(regression))


def test_wilson_intervals_match_known_values() -> None:
    lo, hi = Rate(8, 10).wilson()
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = Rate(0, 20).wilson()
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert Rate(0, 0).wilson() == (0.0, 1.0) and Rate(0, 0).rate == 0.0


def test_a_clearly_better_candidate_is_promoted_and_the_numbers_are_stored() -> None:
    incumbent = scores([X] * 40, [F] * 100)
    candidate = scores([R] * 15 + [X] * 25, [F] * 100)  # fixes 15 of 40 held-out failures, breaks nothing
    decision = decide(candidate, incumbent, GateConfig())
    assert decision.promote, decision.reasons
    gain = decision.numbers["heldout_retry_gain"]
    assert (gain["n"], gain["fixed"], gain["broken"]) == (40, 15, 0)
    assert gain["difference"] == pytest.approx(15 / 40) and gain["ci95"][0] > 0
    regression = decision.numbers["regression_first_difference"]
    assert (regression["difference"], regression["fixed"], regression["broken"]) == (0.0, 0, 0)
    assert regression["ci95"][0] > -0.05
    assert decision.numbers["rule"] == RULE and decision.numbers["config"]["margin"] == 0.0
    assert decision.to_dict()["candidate"]["heldout_retry"] == Rate(15, 40).to_dict()


def _noisy_policy_pair(rng: random.Random, flip: float) -> tuple[PolicyScores, PolicyScores]:
    """Two copies of one policy: the same chance of success per item, outcomes drawn independently
    (`flip` = 0: greedy decoding, the same outcome on every item)."""
    held, reg = (
        [rng.uniform(0.05, 0.6) for _ in range(rng.randint(20, 60))],
        [rng.uniform(0.8, 1.0) for _ in range(100)],
    )

    def draw(chances: list[float], success: str, first: list[str] | None = None) -> list[str]:
        out = []
        for k, p in enumerate(chances):
            if first is not None and rng.random() >= flip:
                out.append(first[k])
            else:
                out.append(success if rng.random() < p else X)
        return out

    inc_h, inc_r = draw(held, R), draw(reg, F)
    return scores(inc_h, inc_r, "incumbent"), scores(draw(held, R, inc_h), draw(reg, F, inc_r), "candidate")


def test_a_candidate_equal_to_the_incumbent_is_never_promoted() -> None:
    config = GateConfig()
    rng = random.Random(0)
    for _ in range(300):  # greedy: the same outcomes on 300 different item sets
        incumbent, candidate = _noisy_policy_pair(rng, flip=0.0)
        assert not decide(candidate, incumbent, config).promote
    # Sampling noise (each outcome redrawn with probability 0.5): the rule's one-sided 2.5% error
    # rate bounds false promotions; the old absolute-margin rule promoted on any lucky 2-point swing.
    promoted = 0
    for _ in range(400):
        incumbent, candidate = _noisy_policy_pair(rng, flip=0.5)
        promoted += decide(candidate, incumbent, config).promote
    assert promoted <= 400 * 0.05, promoted


def test_a_degraded_candidate_is_rejected_by_the_regression_rule() -> None:
    incumbent = scores([X] * 40, [F] * 100)
    candidate = scores([R] * 20 + [X] * 20, [F] * 90 + [X] * 10)  # better on held-out, forgets 10 of 100
    decision = decide(candidate, incumbent, GateConfig())
    assert not decision.promote
    assert any("a drop of more than 5.0 points is not ruled out" in r for r in decision.reasons), decision.reasons
    assert decision.numbers["regression_first_difference"]["broken"] == 10


@pytest.mark.parametrize(
    ("cand", "inc", "why"),
    [
        (([R] * 2 + [X] * 38, [F] * 100), ([X] * 40, [F] * 100), "the lower bound is not above the margin"),
        (([R] * 3 + [X] * 2, [F] * 5), ([X] * 5, [F] * 5), "only 5 held-out items; at least 10"),
    ],
)
def test_rejections_say_why(cand: Any, inc: Any, why: str) -> None:
    decision = decide(scores(*cand), scores(*inc), GateConfig(min_items=10))
    assert not decision.promote
    assert any(why in r for r in decision.reasons), decision.reasons


def test_engine_errors_block_promotion_and_an_empty_regression_set_is_noted() -> None:
    config = GateConfig(margin=-1.0, min_items=1)
    decision = decide(scores([R] * 5, []), scores([X] * 3 + [E] * 2, [], policy="rrr-v3"), config)
    assert not decision.promote
    assert any("2 evaluation episodes of rrr-v3 failed on the engine" in r for r in decision.reasons)
    assert any("regression set is empty" in r for r in decision.reasons)
    assert decide(scores([R] * 5, []), scores([X] * 5, []), config).promote
    with pytest.raises(ValueError, match="same items"):
        decide(scores([R] * 5, []), scores([X] * 4, []), config)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="margin"):
        GateConfig(margin=2)
    with pytest.raises(ValueError, match="min_items"):
        GateConfig(min_items=0)


def test_rows_become_eval_items_from_dataset_rows_or_objects() -> None:
    row = {
        "episode_id": "e1",
        "task_messages": [{"role": "user", "content": "hi"}],
        "prompt_messages": [],
        "tools": None,
        "tool_choice": None,
        "verifier": {"type": "countdown", "nums": [1], "target": 1},
        "expected": None,
    }
    item = gate_item(row)
    assert item.id == "e1" and VerifierSpec.parse(item.verifier).math and item.messages == row["task_messages"]
    assert gate_item(item) == item
    with pytest.raises(ValueError, match="task messages"):
        gate_item({"task_messages": []})


@pytest.mark.slow
def test_evaluate_gate_runs_both_policies_through_the_loop(tiny_tool_model: ToolModel, tiny_adapter_dir: Path) -> None:
    from engines.local import LocalEngine

    engine = LocalEngine(str(tiny_tool_model.path), max_lora_rank=16)
    expected = [{"get_weather": {"city": ["Paris"]}}]
    call = EvalItem(
        messages=tiny_tool_model.prompt("call"),
        tools=tiny_tool_model.tools,
        verifier="reference",
        expected=expected,
        id="call",
    )
    broken = EvalItem(
        messages=tiny_tool_model.prompt("broken"),
        tools=tiny_tool_model.tools,
        verifier="reference",
        expected=expected,
        id="broken",
    )
    config = GateConfig(margin=-1.0, tolerance=0.0, min_items=2, max_tokens=40, concurrency=2)
    decision = asyncio.run(
        evaluate_gate(
            engine,
            candidate_dir=str(tiny_adapter_dir),
            heldout=[call, broken],
            regression=[call],
            config=config,
            loop=LoopConfig(reflection_max_tokens=8),
        )
    )
    incumbent = decision.numbers["incumbent"]
    assert incumbent["policy"] == "base"
    assert incumbent["heldout_first"]["successes"] == 1 and incumbent["heldout_first"]["total"] == 2
    assert incumbent["regression_first"] == Rate(1, 1).to_dict()
    candidate = decision.numbers["candidate"]
    assert candidate["regression_first"]["successes"] == 0  # the noisy LoRA forgot the memorised call
    assert not decision.promote
    assert any("is not ruled out" in r for r in decision.reasons), decision.reasons
    assert [c["id"] for c in asyncio.run(engine.list_models())] == [str(tiny_tool_model.path)]  # unloaded
