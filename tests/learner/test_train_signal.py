"""The learning signal: GRPO on reflection tokens raises retry success on held-out prompts, and a
control run whose rewards are shuffled within each batch does not.

The controlled task (tests/learner/conftest.py): a tiny model taught that its reflection names one
of three cities at random and that its retry calls get_weather with the city the reflection
named. Every request here is judged against the same city (London), so the only way to earn reward
is to write reflections that name it; the model must learn that from the retry's verdicts alone.
Held-out prompts use phrasings GRPO never saw. Fixed seeds; about a minute on 2 cores after the
shared teaching fixture.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")]

from learner.config import TrainConfig  # noqa: E402
from learner.train import build_trainer  # noqa: E402
from tests.learner.conftest import (  # noqa: E402
    HELDOUT_TEMPLATES,
    TRAIN_TEMPLATES,
    evaluate_retry_success,
    task_rows,
)

log = logging.getLogger(__name__)
TARGET = "London"


class ShuffledRewards:
    """The control: the same rewards, permuted within each batch, so they no longer say which
    reflection earned them."""

    __name__ = "retry_success"

    def __init__(self, inner: Any, seed: int) -> None:
        self.inner, self.rng = inner, random.Random(seed)

    def __call__(self, **kwargs: Any) -> list[float]:
        rewards = list(self.inner(**kwargs))
        self.rng.shuffle(rewards)
        return rewards


def run(model_dir: Path, out: Path, *, shuffled: bool) -> dict[str, Any]:
    config = TrainConfig(
        max_steps=20,
        per_device_train_batch_size=16,
        gradient_accumulation_steps=1,
        num_generations=8,
        max_completion_length=8,
        retry_max_tokens=32,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        lora_r=8,
        lora_alpha=16,
        max_lora_rank=8,
        save_steps=1000,
        seed=0,
    )
    trainer, reward = build_trainer(config, str(model_dir), task_rows(TRAIN_TEMPLATES, target=TARGET), out)
    if shuffled:
        trainer.reward_funcs[0] = ShuffledRewards(reward, seed=1)
    heldout = task_rows(HELDOUT_TEMPLATES, target=TARGET)
    before = evaluate_retry_success(trainer, reward, heldout, samples=8, seed=123, max_tokens=8)
    trainer.train()
    after = evaluate_retry_success(trainer, reward, heldout, samples=8, seed=123, max_tokens=8)
    curve = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"before": before, "after": after, "curve": curve}


def test_grpo_raises_heldout_retry_success_and_shuffled_rewards_do_not(
    taught_model_dir: Path, tmp_path: Path, one_thread: None
) -> None:
    real = run(taught_model_dir, tmp_path / "real", shuffled=False)
    control = run(taught_model_dir, tmp_path / "control", shuffled=True)
    log.warning(
        "learning signal: real %s -> %s, control %s -> %s; training reward %s / control %s",
        real["before"],
        real["after"],
        control["before"],
        control["after"],
        [round(r, 2) for r in real["curve"]],
        [round(r, 2) for r in control["curve"]],
    )
    assert real["before"] == control["before"] < 0.6  # the taught model names London about a third of the time
    assert real["after"] >= real["before"] + 0.3
    assert control["after"] <= control["before"] + 0.15
    assert real["after"] >= control["after"] + 0.3
    first, last = real["curve"][:5], real["curve"][-5:]
    assert sum(last) / 5 >= sum(first) / 5 + 0.2  # the training reward itself rose
