"""The Reflect-Retry-Reward reward: a reflection is worth 1.0 when the retry it leads to passes the verifier.

Who calls it: TRL's GRPOTrainer, once per generation batch, with the sampled reflections
(`completion_ids`) and every dataset column of their rows (see `learner.rows.render_rows`).
`learner.train` constructs it and sets `trainer` once the trainer exists.

Per reflection: decode it as the serving engine would (special tokens skipped), build the retry
conversation with `agent.prompts.retry_messages`, render it with the same chat template and tools,
generate the retry with the CURRENT policy (`learner.trl_compat.generate_with_policy`, LoRA
included), parse it in the model's tool-call format (`tool_call_parser`, vLLM's parser name;
hermes by default, `tools.toolcall_formats`) and run the stored verifier. The
retry tokens never reach TRL: only the reflection is a completion, so only reflection tokens
enter the loss. Rewards are always 1.0 or 0.0, never None (None would silently zero an
advantage); a row whose retry cannot be rendered or verified scores 0.0 and is logged.

What it deliberately does not do: call the store, write files, or sample more than one retry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.prompts import retry_messages
from learner.rows import decode_row, render_messages
from learner.trl_compat import generate_with_policy
from tools.spec import ToolSpec
from tools.toolcall_formats import DEFAULT_TOOL_CALL_PARSER, tool_call_format
from tools.verify import ModelOutput, effective_tool_choice, run_verifier

log = logging.getLogger(__name__)

_TRL_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments")


@dataclass
class RewardBatch:
    """What the last call saw and produced (for inspection and tests)."""

    reflection_ids: list[list[int]] = field(default_factory=list)
    reflections: list[str] = field(default_factory=list)
    retry_prompt_ids: list[list[int] | None] = field(default_factory=list)
    retry_ids: list[list[int] | None] = field(default_factory=list)
    retries: list[str | None] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)


class RetryReward:
    """Callable reward object for GRPOTrainer (`reward_funcs=RetryReward(...)`); set `.trainer` after."""

    __name__ = "retry_success"

    def __init__(
        self,
        *,
        retry_max_tokens: int = 512,
        retry_temperature: float = 0.0,
        tokenizer: Any = None,
        trainer: Any = None,
        generate: Callable[[Any, Sequence[Sequence[int]], int, float], list[list[int]]] | None = None,
        tool_call_parser: str = DEFAULT_TOOL_CALL_PARSER,
    ) -> None:
        self.format = tool_call_format(tool_call_parser)  # an unknown name fails here, before training
        self.retry_max_tokens = retry_max_tokens
        self.retry_temperature = retry_temperature
        self.tokenizer = tokenizer
        self.trainer = trainer
        self._generate = generate or generate_with_policy
        self.last_batch = RewardBatch()

    def __call__(
        self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
    ) -> list[float]:
        if self.trainer is None:
            raise RuntimeError("RetryReward.trainer is not set; assign the GRPOTrainer after constructing it")
        log_metric = columns.get("log_metric")
        log_extra = columns.get("log_extra")
        data = {k: v for k, v in columns.items() if k not in _TRL_KWARGS}
        tokenizer = self.tokenizer if self.tokenizer is not None else self.trainer.processing_class
        eos = set(getattr(self.trainer, "eos_token_ids", None) or [tokenizer.eos_token_id])
        n = len(completion_ids)
        batch = RewardBatch(rewards=[0.0] * n, retry_prompt_ids=[None] * n, retry_ids=[None] * n, retries=[None] * n)
        rows: list[dict[str, Any] | None] = []
        pending: list[int] = []
        for i in range(n):
            ids = [int(t) for t in completion_ids[i]]
            body = ids[:-1] if ids and ids[-1] in eos else ids
            reflection = str(tokenizer.decode(body, skip_special_tokens=True, clean_up_tokenization_spaces=False))
            batch.reflection_ids.append(ids)
            batch.reflections.append(reflection)
            row: dict[str, Any] | None = None
            try:
                row = decode_row({k: v[i] for k, v in data.items()})
                text = render_messages(tokenizer, retry_messages(row["prompt_messages"], reflection), row.get("tools"))
                batch.retry_prompt_ids[i] = list(tokenizer(text, add_special_tokens=False)["input_ids"])
                pending.append(i)
            except Exception:
                log.warning(
                    "retry prompt for episode %s could not be built; reward 0.0",
                    row.get("episode_id") if row else "?",
                    exc_info=True,
                )
            rows.append(row)
        prompt_ids = [p for p in (batch.retry_prompt_ids[i] for i in pending) if p is not None]
        outputs = self._generate(self.trainer, prompt_ids, self.retry_max_tokens, self.retry_temperature)
        for i, retry_ids in zip(pending, outputs, strict=True):
            row = rows[i]
            assert row is not None
            batch.retry_ids[i] = list(retry_ids)
            try:
                text, ok = self.score(row, retry_ids, tokenizer, eos)
                batch.retries[i] = text
                batch.rewards[i] = 1.0 if ok else 0.0
            except Exception:
                log.warning(
                    "verifying the retry of episode %s failed; reward 0.0", row.get("episode_id"), exc_info=True
                )
        self.last_batch = batch
        if log_metric is not None and n:
            log_metric("retry_success_rate", sum(batch.rewards) / n)
            lengths = [len(r) for r in batch.retry_ids if r is not None]
            if lengths:
                log_metric("retry_mean_length", sum(lengths) / len(lengths))
        if log_extra is not None:
            log_extra("retry", [r if r is not None else "" for r in batch.retries])
        return list(batch.rewards)

    def score(self, row: dict[str, Any], retry_ids: Sequence[int], tokenizer: Any, eos: set[int]) -> tuple[str, bool]:
        """Decode a retry as the serving engine would and run the row's verifier on it."""
        ids = [int(t) for t in retry_ids]
        finished = bool(ids) and ids[-1] in eos
        body = ids[:-1] if finished else ids
        tools = row.get("tools") or []
        specs = [ToolSpec.from_openai(t) for t in tools]
        tool_choice = effective_tool_choice(row.get("tool_choice"), bool(specs))
        # As vLLM decodes for the parser: hermes and mistral keep special tokens (their tags) whenever
        # tools may be called; llama3_json and pythonic do not.
        keep_special = bool(specs) and tool_choice != "none" and self.format.keeps_special_tokens
        text = str(tokenizer.decode(body, skip_special_tokens=not keep_special, clean_up_tokenization_spaces=False))
        parsed = self.format.parse(text)
        output = ModelOutput(tool_calls=parsed.tool_calls, content=parsed.content, parse_error=parsed.error)
        if not finished:
            output = ModelOutput(
                tool_calls=output.tool_calls,
                content=output.content,
                parse_error=output.parse_error or "the output was cut off at max_tokens (finish_reason=length)",
            )
        verdict = run_verifier(
            row["verifier"],
            output,
            tools=specs,
            tool_choice=tool_choice,
            expected=row.get("expected"),
            messages=row.get("task_messages"),  # what `grounded` traces values to, as when serving
        )
        return text, verdict.ok
