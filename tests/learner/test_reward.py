"""learner/reward.py: a reflection scores 1.0 exactly when the retry it leads to passes the stored verifier.

The retry generator is scripted here (the policy is exercised in test_train.py): it answers with a
call to whatever city the reflection names, so every outcome below is known in advance.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from agent import prompts
from learner.reward import RetryReward
from learner.rows import render_messages, render_rows
from tests.learner.conftest import WEATHER_TOOLS, call, weather_call_text


@pytest.fixture(scope="module")
def grpo_trainer(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real GRPOTrainer on the tiny model (its tokenizer and eos ids are what the reward reads)."""
    from learner.config import TrainConfig
    from learner.train import build_trainer

    config = TrainConfig(
        max_steps=1,
        num_generations=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_completion_length=8,
        retry_max_tokens=8,
        lora_r=2,
        lora_alpha=4,
        save_steps=1000,
    )
    trainer, _ = build_trainer(
        config, str(tiny_model_dir), [row("Paris"), row("Oslo")], tmp_path_factory.mktemp("grpo")
    )
    return trainer


@pytest.fixture(scope="module")
def tokenizer(grpo_trainer: Any) -> Any:
    return grpo_trainer.processing_class


def row(city: str = "Paris", **overrides: Any) -> dict[str, Any]:
    task = [{"role": "user", "content": f"What is the weather in {city}?"}]
    history = prompts.reflection_messages(task, prompts.failed_assistant_message(None, [call("Rome")]))
    base = {
        "episode_id": f"ep-{city}",
        "client_key_id": "k",
        "task_messages": task,
        "prompt_messages": history,
        "tools": WEATHER_TOOLS,
        "tool_choice": None,
        "verifier": {"type": "reference"},
        "expected": [{"name": "get_weather", "arguments": {"city": city}}],
    }
    return base | overrides


class ScriptedRetry:
    """Retry = a call to the city the reflection names ("Use X."), or exactly `text` when given."""

    def __init__(self, tokenizer: Any, text: str | None = None, eos: bool = True) -> None:
        self.tokenizer, self.text, self.eos, self.prompts = tokenizer, text, eos, []

    def __call__(
        self, trainer: Any, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, temperature: float
    ) -> list[list[int]]:
        out = []
        for ids in prompt_ids:
            prompt = self.tokenizer.decode(ids)
            self.prompts.append(prompt)
            named = re.findall(r"Use (\w+)\.", prompt)
            text = self.text if self.text is not None else weather_call_text(named[-1])
            tail = [self.tokenizer.convert_tokens_to_ids("<|im_end|>")] if self.eos else []
            out.append(list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + tail)
        return out


def score(
    trainer: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    reflections: list[str],
    generate: ScriptedRetry,
    broken_prompt: int | None = None,
    tool_call_parser: str = "hermes",
) -> tuple[list[float], RetryReward, dict[str, Any]]:
    logged: dict[str, Any] = {}
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    reward = RetryReward(
        retry_max_tokens=64, tokenizer=tokenizer, generate=generate, trainer=trainer, tool_call_parser=tool_call_parser
    )
    rendered = render_rows(rows, tokenizer)
    columns = {k: [r[k] for r in rendered] for k in rendered[0] if k != "prompt"}
    if broken_prompt is not None:  # a stored history the chat template cannot render
        columns["prompt_messages"][broken_prompt] = json.dumps(["not a message"])
    completion_ids = [[*tokenizer(t, add_special_tokens=False)["input_ids"], eos] for t in reflections]
    rewards = reward(
        prompts=[r["prompt"] for r in rendered],
        completions=reflections,
        completion_ids=completion_ids,
        trainer_state=None,
        log_metric=lambda name, value: logged.__setitem__(name, value),
        log_extra=lambda column, values: logged.__setitem__(column, values),
        **columns,
    )
    return rewards, reward, logged


def test_reward_follows_the_retry_the_reflection_leads_to(grpo_trainer: Any, tokenizer: Any) -> None:
    rows = [row("Paris"), row("Paris"), row("Oslo"), row("Oslo")]
    rewards, reward, logged = score(
        grpo_trainer, tokenizer, rows, ["Use Paris.", "Use Rome.", "Use Oslo.", "Use Lima."], ScriptedRetry(tokenizer)
    )
    assert rewards == [1.0, 0.0, 1.0, 0.0]
    assert all(type(r) is float for r in rewards)
    assert logged["retry_success_rate"] == 0.5 and len(logged["retry"]) == 4
    assert reward.__name__ == "retry_success"  # the name TRL logs rewards under
    # The retry prompt is the serving loop's retry conversation, rendered by the same template.
    retry_history = prompts.retry_messages(rows[1]["prompt_messages"], "Use Rome.")
    expected = render_messages(tokenizer, retry_history, WEATHER_TOOLS)
    assert reward.last_batch.retry_prompt_ids[1] == tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert expected.endswith("Use Rome.<|im_end|>\n<|im_start|>user\nTry again.<|im_end|>\n<|im_start|>assistant\n")
    assert reward.last_batch.reflections == ["Use Paris.", "Use Rome.", "Use Oslo.", "Use Lima."]
    assert json.loads(json.dumps(reward.last_batch.rewards)) == rewards


@pytest.mark.parametrize(
    ("text", "eos"),
    [
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>', True),  # malformed JSON
        ('<tool_call>\n{"name": "get_time", "arguments": {"city": "Paris"}}\n</tool_call>', True),  # unknown tool
        ("It is sunny in Paris.", True),  # no call at all
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', False),  # cut off
    ],
)
def test_bad_retries_score_zero(grpo_trainer: Any, tokenizer: Any, text: str, eos: bool) -> None:
    rewards, _, _ = score(grpo_trainer, tokenizer, [row("Paris")], ["Use Paris."], ScriptedRetry(tokenizer, text, eos))
    assert rewards == [0.0]


def test_a_row_that_cannot_be_verified_scores_zero_and_is_logged(
    grpo_trainer: Any, tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [row("Paris", verifier={"type": "no-such-verifier"}), row("Paris"), row("Paris", episode_id="broken-prompt")]
    with caplog.at_level(logging.WARNING, logger="learner.reward"):
        rewards, _, _ = score(
            grpo_trainer, tokenizer, rows, ["Use Paris."] * 3, ScriptedRetry(tokenizer), broken_prompt=2
        )
    assert rewards == [0.0, 1.0, 0.0]
    assert "ep-Paris" in caplog.text and "broken-prompt" in caplog.text


def test_schema_verifier_and_tool_choice_none(grpo_trainer: Any, tokenizer: Any) -> None:
    right = ScriptedRetry(tokenizer)
    rows = [
        row("Paris", verifier={"type": "schema"}, expected=None),
        row("Paris", verifier={"type": "schema"}, expected=None, tool_choice="none"),
    ]
    rewards, _, _ = score(grpo_trainer, tokenizer, rows, ["Use Lima.", "Use Lima."], right)
    assert rewards == [1.0, 0.0]  # any valid call passes the schema; tool_choice none forbids calls


def test_reward_needs_its_trainer(tokenizer: Any) -> None:
    with pytest.raises(RuntimeError, match="trainer"):
        RetryReward(tokenizer=tokenizer)(prompts=[], completions=[], completion_ids=[])


@pytest.mark.parametrize("parser", ["llama3_json", "mistral", "pythonic"])
def test_a_correct_retry_in_the_policys_own_format_scores_one(grpo_trainer: Any, tokenizer: Any, parser: str) -> None:
    """With a non-hermes policy the reward parses the retry in its format: right city 1, wrong city or
    prose 0, a hermes block 0 except for llama3_json (vLLM's parser reads any JSON object with a name,
    wherever it is); the failed call in the prompt is quoted in that format."""
    from tools.spec import ToolCall
    from tools.toolcall_formats import tool_call_format

    fmt = tool_call_format(parser)
    task = [{"role": "user", "content": "What is the weather in Paris?"}]
    failed = prompts.failed_assistant_message(None, [call("Rome")], tool_call_parser=parser)
    assert failed["content"] == fmt.render([ToolCall("get_weather", {"city": "Rome"})])
    rows = [row("Paris", prompt_messages=prompts.reflection_messages(task, failed)) for _ in range(3)]
    right = fmt.render([ToolCall("get_weather", {"city": "Paris"})])
    wrong = fmt.render([ToolCall("get_weather", {"city": "Rome"})])
    hermes = 1.0 if parser == "llama3_json" else 0.0
    for text, expected in (
        (right, 1.0),
        (wrong, 0.0),
        ("It is sunny in Paris.", 0.0),
        (weather_call_text("Paris"), hermes),
    ):
        rewards, reward, _ = score(
            grpo_trainer, tokenizer, rows[:1], ["Use Paris."], ScriptedRetry(tokenizer, text), tool_call_parser=parser
        )
        assert rewards == [expected], (parser, text)
    assert reward.format.name == parser


def test_an_unknown_parser_fails_when_the_reward_is_built(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="hermes, llama3_json, mistral, pythonic"):
        RetryReward(tokenizer=tokenizer, tool_call_parser="llama")
