"""learner/gate.py: the promotion rule on hand-built numbers, Wilson intervals, and a real evaluation.

The evaluation test runs the real reflect/retry loop on a `LocalEngine` over the tiny tool model
(it memorised a correct call for one prompt and a malformed one for another), so the incumbent's
numbers are known; the candidate is a noisy LoRA that breaks the memorised answer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.loop import LoopConfig
from evals.items import EvalItem, gate_item
from evals.stats import Rate
from learner.config import GateConfig
from learner.gate import PolicyScores, decide, evaluate_gate
from tests.conftest import ToolModel
from tools.verify import VerifierSpec

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def scores(
    h_retry: tuple[int, int],
    r_first: tuple[int, int],
    *,
    h_first: tuple[int, int] = (0, 0),
    errors: int = 0,
    policy: str = "p",
) -> PolicyScores:
    return PolicyScores(
        policy=policy,
        heldout_first=Rate(*h_first) if h_first[1] else Rate(0, h_retry[1]),
        heldout_retry=Rate(*h_retry),
        regression_first=Rate(*r_first),
        regression_retry=Rate(*r_first),
        errors=errors,
    )


def test_wilson_intervals_match_known_values() -> None:
    lo, hi = Rate(8, 10).wilson()
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = Rate(0, 20).wilson()
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert Rate(0, 0).wilson() == (0.0, 1.0) and Rate(0, 0).rate == 0.0
    assert Rate(3, 4).to_dict() == {
        "successes": 3,
        "total": 4,
        "rate": 0.75,
        "ci95": [round(Rate(3, 4).wilson()[0], 6), round(Rate(3, 4).wilson()[1], 6)],
    }


def test_promotes_when_retry_gain_meets_the_margin_and_regression_is_within_tolerance() -> None:
    config = GateConfig(margin=0.1, tolerance=0.05, min_items=10)
    decision = decide(scores((6, 20), (19, 20)), scores((4, 20), (20, 20)), config)
    # gain exactly 0.10 (= margin), regression drop exactly 0.05 (= tolerance): both boundaries pass
    assert decision.promote, decision.reasons
    assert decision.numbers["retry_gain"] == pytest.approx(0.1)
    assert decision.numbers["regression_drop"] == pytest.approx(0.05)
    assert any("margin 10.0 met" in r for r in decision.reasons)
    assert any("within the tolerance of 5.0" in r for r in decision.reasons)
    assert decision.to_dict()["candidate"]["heldout_retry"] == {
        "successes": 6,
        "total": 20,
        "rate": 0.3,
        "ci95": [round(x, 6) for x in Rate(6, 20).wilson()],
    }


@pytest.mark.parametrize(
    ("cand", "inc", "why"),
    [
        (((5, 20), (20, 20)), ((4, 20), (20, 20)), "below the margin of 10.0"),
        (((10, 20), (18, 20)), ((4, 20), (20, 20)), "more than the tolerance of 5.0"),
        (((2, 5), (5, 5)), ((0, 5), (5, 5)), "only 5 held-out items; at least 10"),
    ],
)
def test_rejections_say_why(cand: Any, inc: Any, why: str) -> None:
    decision = decide(scores(*cand), scores(*inc), GateConfig(margin=0.1, tolerance=0.05, min_items=10))
    assert not decision.promote
    assert any(why in r for r in decision.reasons), decision.reasons


def test_engine_errors_block_promotion_and_an_empty_regression_set_is_noted() -> None:
    config = GateConfig(margin=0.0, tolerance=0.0, min_items=1)
    decision = decide(scores((5, 5), (0, 0)), scores((0, 5), (0, 0), errors=2, policy="rrr-v3"), config)
    assert not decision.promote
    assert any("2 evaluation episodes of rrr-v3 failed on the engine" in r for r in decision.reasons)
    assert any("regression set is empty" in r for r in decision.reasons)
    assert decide(scores((5, 5), (0, 0)), scores((0, 5), (0, 0)), config).promote


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
    config = GateConfig(margin=0.0, tolerance=0.0, min_items=2, max_tokens=40, concurrency=2)
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
    assert any("more than the tolerance" in r for r in decision.reasons)
    assert [c["id"] for c in asyncio.run(engine.list_models())] == [str(tiny_tool_model.path)]  # unloaded
