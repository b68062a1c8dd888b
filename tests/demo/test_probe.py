"""demo/probe.py: the recipe checks count what they say, on a scripted generator whose behaviour is known.

The scripted generator answers by rule instead of by model: first attempts fail on a known set of
tasks (one wrong value), reflections are the correct diagnosis on a known share, retries follow the
reflection exactly (``demo.diagnosis.follow``). Each check must then come out as that rule implies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from demo import diagnosis
from demo.corpus import DemoItem, call_text, generate_items
from demo.probe import THRESHOLDS, CheckSettings, Generator, dev_items, recipe_checks
from demo.sft import SFTConfig


class Scripted(Generator):
    """Renders nothing; answers from the task behind each prompt (found by its query)."""

    def __init__(self, items: Sequence[DemoItem], failing: set[str], right_every: int) -> None:
        self.items = {item.query: item for item in items}
        self.failing, self.right_every = failing, right_every
        self.sampled = 0

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
        return json.dumps(messages)

    def _failed(self, item: DemoItem) -> str:
        param = next(iter(item.arguments))
        value = item.arguments[param]
        wrong = value + 1 if isinstance(value, int | float) else f"{value} x"
        return call_text(item.name, {**item.arguments, param: wrong})

    def complete(self, prompts_text: Sequence[str], max_new_tokens: int, temperature: float = 0.0) -> list[str]:
        out = []
        for text in prompts_text:
            messages = json.loads(text)
            item = self.items[messages[0]["content"]]
            failed = diagnosis.FailedCall.parse(self._failed(item))
            if len(messages) == 1:
                out.append(failed.text if item.query in self.failing else call_text(item.name, item.arguments))
            elif len(messages) == 3:  # the reflection: correct on every right_every-th sample, else generic
                self.sampled += 1
                right = temperature > 0 and self.sampled % self.right_every == 0
                faults = diagnosis.diagnose(item, failed)
                out.append(diagnosis.reflection_text(item, faults) if right else diagnosis.GENERIC)
            else:  # the retry follows the reflection
                reflection = messages[3]["content"]
                faults = diagnosis.diagnose(item, failed) if reflection != diagnosis.GENERIC else []
                out.append(diagnosis.follow(item, failed, faults))
        return out


def test_checks_count_rescues_variance_and_restatements() -> None:
    items = generate_items(40, seed=3, balanced=True)
    failing = {item.query for item in items[:10]}
    gen = Scripted(items, failing, right_every=4)
    checks = recipe_checks(gen, items, CheckSettings(group_size=8))
    assert checks["first_attempt"]["successes"] == 30 and checks["failures"] == 10
    assert checks["correct_rescue"]["rate"] == 1.0  # following the right diagnosis fixes a one-value slip
    assert checks["generic_rescue"]["rate"] == 0.0
    assert checks["greedy_rescue"]["rate"] == 0.0  # greedy reflections are generic here
    assert checks["sampled_reward"]["successes"] == 80 // 4  # every 4th sampled reflection is right
    assert checks["zero_variance"]["rate"] == 0.0  # every group of 8 holds two right ones
    assert checks["restated"]["rate"] == 0.0
    held = {name: c["holds"] for name, c in checks["thresholds"].items()}
    assert held == {**{name: True for name in THRESHOLDS}, "greedy_rescue_low": False}


def test_dev_tasks_share_no_query_with_training_or_held_out_tasks() -> None:
    from demo.base_policy import held_out_items
    from demo.corpus import split_items

    config = SFTConfig(n_train_items=3000)
    dev = dev_items(200, config)
    train = split_items(config.n_train_items, 1, config.seed, group_size=config.group_size)[0]
    assert not {i.query for i in dev} & ({i.query for i in train} | {i.query for i in held_out_items(500, config)})
    assert all(re.fullmatch(r"dev-\d{5}", i.id) for i in dev)
    assert len({i.name for i in dev[:12]}) == 12
