"""Supervised training from scratch of the demo's base policy: a tiny Qwen2 that calls the demo tools.

Who calls it: ``rrr demo build-policy`` (via ``demo.base_policy.build_policy``) and tests.

``train_policy`` builds the tiny model and its tokenizer (``learner.tiny``; the tokenizer is trained
on the catalog corpus too, spaces isolated and every whole number below 1000 one token, so values
and numbers are copied as whole tokens: 89% first-attempt accuracy instead of 59% with one token
per digit, same model, same steps), renders the
corpus with the model's own chat template, and trains every weight with AdamW (linear warm-up,
cosine decay) on the answer tokens only: the tool call, and in reflection-shaped examples the
reflection (when that conversation trains it) and the retried call. A second stage (``_stage2``)
samples the stage-1 model on training tasks, builds reflection conversations on its own failures
(plus synthetic ones and plain answers), trains on them with a fresh optimiser, and tracks the
retry success after the correct diagnosis against after the generic one on dev-split failures;
``demo.probe.recipe_checks`` then writes the recipe's preconditions into ``sft.json``.
Batches are bucketed by length to waste little on padding, and
logits are computed only where there is a loss, which on a 2-core CPU is most of the speed.
The same config and seed give the same weights (single process, fixed thread count).

The chat template is the tiny model's hermes template with compact tool JSON (no spaces after
separators): a quarter fewer prompt tokens, i.e. a quarter less training time, and any hermes
server (vLLM included) renders it the same way since it ships in the tokenizer files.

Not here: the served measurement (``demo.base_policy``), RL (``learner.train``).
torch/transformers are imported lazily.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from demo.corpus import (
    REFLECTION_MIX,
    RETRY_MIX,
    Conversation,
    DemoItem,
    answer_example,
    reflection_example,
    split_items,
    training_conversations,
)
from engines.wire import normalize_messages
from learner.tiny import CHAT_TEMPLATE, TinyModelConfig, build_tiny_model

log = logging.getLogger(__name__)

_SPACED_TOOLS = "tool | tojson"
DEMO_CHAT_TEMPLATE = CHAT_TEMPLATE.replace(_SPACED_TOOLS, "tool | tojson(separators=(',', ':'))")
assert DEMO_CHAT_TEMPLATE != CHAT_TEMPLATE, "learner.tiny.CHAT_TEMPLATE no longer renders tools with tojson"
EOS = "<|im_end|>"


def default_model_config() -> TinyModelConfig:
    return TinyModelConfig(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=512,
        vocab_size=2048,
        max_position_embeddings=2048,
        number_tokens_below=1000,
    )


@dataclass(frozen=True)
class SFTConfig:
    """Everything that decides the trained weights. The defaults are the shipped demo policy.

    seed: corpus split, weight init, batch order.
    n_train_items: distinct training tasks drawn (each used once per epoch).
    reflection_share: fraction of training conversations that are reflection-shaped.
    steps: optimiser steps.
    batch_size: tasks per step, as ``batch_size // group_size`` groups of ``group_size`` tasks that
        share one tool list (reflection-shaped conversations ride along with their task's group).
    lr, warmup_steps, decay_fraction, min_lr_ratio: AdamW peak rate, linear warm-up, constant rate,
        then a cosine decay to ``min_lr_ratio * lr`` over the last ``decay_fraction`` of the steps.
    weight_decay, betas, grad_clip: AdamW and clipping.
    toolless_steps: a curriculum: the first steps train on the same conversations with the tool list
        left out of the prompt (a 20-token system turn instead of a 300-token one). Copying values
        from the query is learnt there several times faster, because attention has a few dozen
        positions to search instead of hundreds; the rest of training adds the tool lists back.
    eval_items, eval_every: teacher-forced exact match on that many held-out tasks every N steps
        (0 = never); a cheap progress signal equal to greedy exact match, not the final measurement.
    tokenizer_texts: corpus lines added to the tokenizer's training text.
    reflection_mix: how often the supervised reflection after a failed call is the correct diagnosis,
        the generic one or a wrong diagnosis (``demo.corpus.REFLECTION_MIX``); every retry target
        follows its reflection.
    retry_mix: how often each variant is in a reflection conversation (its retry always has a loss);
        reflections are trained on a subset so that they follow ``reflection_mix``.
    stage2_*: the second supervised stage (0 steps = none): the stage-1 model samples answers to
        ``stage2_items`` training tasks at ``stage2_temperature``; each of its failures becomes
        ``stage2_variants`` reflection conversations (variants drawn from ``reflection_mix``), plus
        synthetic corruptions (``stage2_synthetic`` of the reflection conversations) and plain
        answers (``stage2_answer_share`` of all); trained at ``stage2_lr`` (warm-up, cosine decay),
        batches of ``batch_size`` conversations.
    gap_every / gap_items: every N second-stage steps, the retry success after the correct diagnosis
        and after the generic reflection, on the own failures of the first ``gap_items`` dev tasks.
    check_items: dev tasks for ``demo.probe.recipe_checks`` at the end (0 = skip), written to sft.json.
    """

    seed: int = 0
    n_train_items: int = 20000
    reflection_share: float = 0.3
    steps: int = 2000
    batch_size: int = 32
    group_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 40
    decay_fraction: float = 0.25
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    toolless_steps: int = 600
    eval_items: int = 240
    eval_every: int = 100
    tokenizer_texts: int = 4000
    model: TinyModelConfig = field(default_factory=default_model_config)
    reflection_mix: dict[str, float] = field(default_factory=lambda: dict(REFLECTION_MIX))
    retry_mix: dict[str, float] = field(default_factory=lambda: dict(RETRY_MIX))
    stage2_steps: int = 500
    stage2_items: int = 6000
    stage2_temperature: float = 1.0
    stage2_variants: int = 3
    stage2_synthetic: float = 0.5
    stage2_answer_share: float = 0.4
    stage2_lr: float = 1e-3
    stage2_warmup_steps: int = 10
    gap_every: int = 100
    gap_items: int = 400
    check_items: int = 600

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not 1 <= self.group_size <= self.batch_size:
            raise ValueError("steps and batch_size must be at least 1, group_size in [1, batch_size]")
        if not 0 <= self.reflection_share < 1:
            raise ValueError("reflection_share must be in [0, 1); 0.3 is the demo's setting")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1 or not 0 <= self.decay_fraction <= 1:
            raise ValueError("warmup_steps must be >= 0, min_lr_ratio and decay_fraction in [0, 1]")
        for mix in (self.reflection_mix, self.retry_mix):
            if set(mix) != set(REFLECTION_MIX) or min(mix.values()) < 0 or not sum(mix.values()):
                raise ValueError(f"reflection_mix and retry_mix need weights >= 0 for exactly {sorted(REFLECTION_MIX)}")
        if self.stage2_steps < 0 or not 0 <= self.stage2_synthetic < 1 or not 0 <= self.stage2_answer_share < 1:
            raise ValueError("stage2_steps must be >= 0, stage2_synthetic and stage2_answer_share in [0, 1)")
        if self.model.hidden_size // self.model.num_attention_heads < 32:
            log.warning("head size below 32: vLLM could not serve this model")

    @property
    def groups_per_step(self) -> int:
        return max(1, self.batch_size // self.group_size)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SFTConfig:
        """The config ``to_json`` wrote (``sft.json``'s ``config``); missing keys take the defaults."""
        values = dict(data)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        if "model" in values:
            values["model"] = TinyModelConfig(**values["model"])
        for key in ("reflection_mix", "retry_mix"):
            if key in values:
                values[key] = dict(values[key])
        return cls(**values)


@dataclass
class SFTResult:
    out_dir: Path
    parameters: int
    steps: int
    seconds: float
    losses: list[float]
    evals: list[dict[str, float]]


# --- rendering and tokenising ---------------------------------------------------------------------


def render_prompt(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    """The prompt exactly as ``LocalEngine.render_prompt`` (and vLLM) renders it."""
    return str(
        tokenizer.apply_chat_template(
            normalize_messages(messages), tools=tools or None, add_generation_prompt=True, tokenize=False
        )
    )


# A line break followed by a non-space character ends every pre-token of the tokenizer (spaces are
# isolated, digits split, number tokens never hold a line break, and no pattern of Qwen2's split runs
# from a line break into the next line's text), so text cut there tokenises piece by piece exactly as a
# whole. Prompts repeat the
# same template lines and tool schemas, so caching the pieces makes encoding about ten times faster.
_PIECE_BREAK = re.compile(r"(?<=\n)(?=\S)")


class SegmentEncoder:
    """Tokenise text (no special tokens added) with a cache over line pieces; same ids as the tokenizer."""

    def __init__(self, tokenizer: Any, cache_size: int = 8192) -> None:
        self.tokenizer = tokenizer
        self._encode_piece = functools.lru_cache(maxsize=cache_size)(self._piece)

    def _piece(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, text: str) -> list[int]:
        out: list[int] = []
        for piece in _PIECE_BREAK.split(text):
            if piece:
                out += self._encode_piece(piece)
        return out


def encode_conversation(
    tokenizer: Any, conversation: Conversation, encode: Callable[[str], list[int]] | None = None
) -> tuple[list[int], list[int]]:
    """(input ids, labels) of a whole conversation; labels are -100 except on the targets (+ EOS)."""
    encode = encode or SegmentEncoder(tokenizer)
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for k, (messages, target) in enumerate(conversation.steps):
        prompt = render_prompt(tokenizer, messages, conversation.tools)
        if not prompt.startswith(done):
            raise ValueError("a conversation step does not extend the previous one")
        new = encode(prompt[len(done) :])
        answer = encode(target + EOS)
        ids += new + answer
        learn = conversation.learn is None or conversation.learn[k]
        labels += [-100] * len(new) + (answer if learn else [-100] * len(answer))
        done = prompt + target + EOS
    return ids, labels


def tokenizer_corpus(items: Sequence[DemoItem], conversations: Sequence[Conversation], n: int) -> list[str]:
    """Catalog text for the tokenizer: compact tool JSON, queries, calls and reflections."""
    from demo.catalog import TOOLS

    texts = [json.dumps(t, ensure_ascii=False, separators=(",", ":")) for t in TOOLS]
    texts += [item.query for item in items[:n]]
    for conversation in conversations[:n]:
        texts += [str(m.get("content") or "") for m in conversation.steps[-1][0][1:]]
        texts.append(conversation.steps[-1][1])
    return texts


@dataclass
class PromptGroup:
    """Conversations that share one rendered prompt prefix (system turn with the same tool list).

    ``rows`` hold each conversation's ids and labels after the prefix, sorted by length and cut into
    sub-batches of similar width (a reflection-shaped row is three times an answer row).
    """

    prefix: list[int]
    rows: list[tuple[list[int], list[int]]]

    @property
    def size(self) -> int:
        return len(self.rows)


def _tools_key(conversation: Conversation) -> tuple[str, ...]:
    return tuple(t["function"]["name"] for t in conversation.tools)


def shared_prefix_text(tokenizer: Any, tools: list[dict[str, Any]]) -> str:
    """The prompt text every task offering ``tools`` starts with: up to the user's words."""
    marker = "<|im_start|>user\n"
    text = render_prompt(tokenizer, [{"role": "user", "content": ""}], tools)
    return text[: text.rindex(marker) + len(marker)]


def build_groups(
    tokenizer: Any,
    conversations: Sequence[Conversation],
    max_group: int,
    encode: Callable[[str], list[int]] | None = None,
) -> list[PromptGroup]:
    """Group conversations by their tool list (at most ``max_group`` per group) and encode them."""
    encode = encode or SegmentEncoder(tokenizer)
    by_tools: dict[tuple[str, ...], list[Conversation]] = {}
    for conversation in conversations:
        by_tools.setdefault(_tools_key(conversation), []).append(conversation)
    groups = []
    for members in by_tools.values():
        prefix = encode(shared_prefix_text(tokenizer, members[0].tools))
        for start in range(0, len(members), max_group):
            rows = []
            for conversation in members[start : start + max_group]:
                ids, labels = encode_conversation(tokenizer, conversation, encode)
                if ids[: len(prefix)] != prefix:
                    raise ValueError("a conversation does not start with its tool list's shared prompt")
                rows.append((ids[len(prefix) :], labels[len(prefix) :]))
            groups.append(PromptGroup(prefix=prefix, rows=sorted(rows, key=lambda r: len(r[0]))))
    return groups


def _sub_batches(
    rows: list[tuple[list[int], list[int]]], ratio: float = 1.5
) -> list[list[tuple[list[int], list[int]]]]:
    """Cut length-sorted rows where the width grows past ``ratio`` times the sub-batch's first row."""
    out: list[list[tuple[list[int], list[int]]]] = []
    for row in rows:
        if out and len(row[0]) <= ratio * len(out[-1][0][0]):
            out[-1].append(row)
        else:
            out.append([row])
    return out


def _collate(rows: list[tuple[list[int], list[int]]], pad: int) -> tuple[Any, Any]:
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    return input_ids, labels


def group_loss(model: Any, groups: Sequence[PromptGroup], pad: int) -> Any:
    """Mean cross-entropy over the target tokens of ``groups``, each shared prompt computed once.

    The prefix's keys and values are computed for one row and broadcast to every conversation of
    its group (gradients flow back through the broadcast), which gives exactly the loss and
    gradients of running each conversation in full, at a fraction of the cost: the shared system
    turn with its tool schemas is most of every prompt.
    """
    import torch
    from transformers import DynamicCache

    total: Any = 0.0
    count = 0
    for group in groups:
        out = model.model(input_ids=torch.tensor([group.prefix]), use_cache=True)
        kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        for rows in _sub_batches(group.rows):
            input_ids, labels = _collate(rows, pad)
            n = input_ids.shape[0]
            cache = DynamicCache(ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv])
            # Rows are right-padded: under the causal mask no real token sees a pad, so no padding mask.
            hidden = model.model(input_ids=input_ids, past_key_values=cache, use_cache=True).last_hidden_state
            targets = labels[:, 1:]
            where = targets != -100
            logits = model.lm_head(hidden[:, :-1][where])
            total = total + torch.nn.functional.cross_entropy(logits.float(), targets[where], reduction="sum")
            count += int(where.sum())
    return total / max(1, count)


def answer_loss(model: Any, input_ids: Any, labels: Any) -> tuple[Any, Any]:
    """Mean cross-entropy over target tokens, with logits computed only at target positions.

    Also returns, per row, whether every target token is the argmax (teacher-forced exact match,
    which equals greedy exact match of the answer).
    """
    import torch

    # Rows are right-padded, so under the causal mask no real token ever sees a pad: the padding
    # mask can be left out, which lets SDPA take its fast causal path. Pad positions carry no loss.
    hidden = model.model(input_ids=input_ids).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    where = targets != -100
    logits = model.lm_head(hidden[where])
    loss = torch.nn.functional.cross_entropy(logits.float(), targets[where])
    with torch.no_grad():
        wrong = torch.zeros_like(targets, dtype=torch.bool)
        wrong[where] = logits.argmax(-1) != targets[where]
        exact = ~wrong.any(dim=1)
    return loss, exact


def teacher_forced_accuracy(model: Any, tokenizer: Any, items: Sequence[DemoItem], batch_size: int = 32) -> float:
    """Share of ``items`` whose whole answer is the argmax at every position (= greedy exact match)."""
    import torch

    encode = SegmentEncoder(tokenizer)
    rows = [encode_conversation(tokenizer, answer_example(item), encode) for item in items]
    hits = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            _, exact = answer_loss(model, *_collate(rows[start : start + batch_size], tokenizer.pad_token_id))
            hits += int(exact.sum())
    model.train(was_training)
    return hits / max(1, len(rows))


# --- training -------------------------------------------------------------------------------------


def _optimizer(model: Any, config: SFTConfig, lr: float) -> Any:
    import torch

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=config.betas,
    )


def _stage2(
    model: Any,
    tokenizer: Any,
    train_items: Sequence[DemoItem],
    config: SFTConfig,
    started: float,
    *,
    progress: bool,
) -> dict[str, Any]:
    """The second supervised stage (SFTConfig.stage2_*): reflection examples on the model's own failures."""
    import torch
    from tqdm.auto import tqdm

    from demo.probe import Generator, dev_items, diagnosis_gap, own_failures

    gen = Generator(model, tokenizer, seed=config.seed)
    rng = random.Random(f"rrr-demo-stage2/{config.seed}")
    optim = _optimizer(model, config, config.stage2_lr)  # a fresh one: stage 2 = a function of the stage-1 weights
    pool = list(train_items[: config.stage2_items])
    failures = own_failures(gen, pool, temperature=config.stage2_temperature)
    tracked = own_failures(gen, dev_items(config.gap_items, config)) if config.gap_every and config.gap_items else []
    conversations: list[Conversation] = []
    for item, failed in failures:
        for _ in range(config.stage2_variants):
            conversations.append(
                reflection_example(item, rng, failed_text=failed, mix=config.reflection_mix, retry_mix=config.retry_mix)
            )
    n_reflect = len(conversations)
    n_synthetic = round(n_reflect * config.stage2_synthetic / (1 - config.stage2_synthetic))
    conversations += [
        reflection_example(item, rng, mix=config.reflection_mix)
        for item in rng.sample(pool, min(n_synthetic, len(pool)))
    ]
    n_reflect = len(conversations)
    n_answers = round(n_reflect * config.stage2_answer_share / (1 - config.stage2_answer_share))
    conversations += [answer_example(item) for item in rng.sample(list(train_items), min(n_answers, len(train_items)))]
    rng.shuffle(conversations)
    groups = build_groups(tokenizer, conversations, max_group=config.batch_size)
    log.info(
        "demo SFT stage 2: %d own failures of %d sampled training tasks, %d conversations (%d reflection-shaped)",
        len(failures),
        len(pool),
        len(conversations),
        n_reflect,
    )
    gaps: list[dict[str, Any]] = []

    def track(step: int) -> None:
        if tracked:
            gap = diagnosis_gap(gen, tracked)
            gaps.append({"step": step, **gap, "seconds": round(time.monotonic() - started, 1)})
            log.info(
                "stage 2 step %d: retry after the correct diagnosis %.1f%%, after the generic one %.1f%% (n=%d)",
                step,
                100 * gap["correct_rescue"],
                100 * gap["generic_rescue"],
                gap["n"],
            )

    track(0)
    pad = tokenizer.pad_token_id
    queue: list[PromptGroup] = []
    losses: list[float] = []
    bar = tqdm(total=config.stage2_steps, desc="stage 2 (own failures)", unit="step", disable=not progress)
    for step in range(config.stage2_steps):
        batch: list[PromptGroup] = []
        while sum(g.size for g in batch) < config.batch_size:
            if not queue:
                queue = list(groups)
                rng.shuffle(queue)
            batch.append(queue.pop())
        if step < config.stage2_warmup_steps:
            lr = config.stage2_lr * (step + 1) / config.stage2_warmup_steps
        else:
            progress_ = (step - config.stage2_warmup_steps) / max(1, config.stage2_steps - config.stage2_warmup_steps)
            lr = config.stage2_lr * (
                config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress_))
            )
        for group in optim.param_groups:
            group["lr"] = lr
        loss = group_loss(model, batch, pad)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optim.step()
        losses.append(float(loss.item()))
        bar.set_postfix({"loss": f"{losses[-1]:.3f}"}, refresh=False)
        bar.update(1)
        if config.gap_every and ((step + 1) % config.gap_every == 0 or step + 1 == config.stage2_steps):
            track(step + 1)
    bar.close()
    return {
        "own_failures": len(failures),
        "sampled_tasks": len(pool),
        "conversations": len(conversations),
        "reflection_conversations": n_reflect,
        "final_loss": losses[-1] if losses else None,
        "gaps": gaps,
    }


def _lr_at(step: int, config: SFTConfig) -> float:
    """Warm-up, constant, then a cosine decay over the last ``decay_fraction`` of the steps.

    The copying skill arrives in a jump after a few hundred steps at full rate (seen in every
    recorded build of the demo policy); decaying early only delays it, decaying at the end polishes it.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_start = config.steps * (1 - config.decay_fraction)
    if step < decay_start:
        return config.lr
    progress = (step - decay_start) / max(1.0, config.steps - decay_start)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def train_policy(
    out_dir: str | Path, config: SFTConfig = SFTConfig(), *, num_threads: int | None = None, progress: bool = True
) -> SFTResult:
    """Build and train the demo policy into ``out_dir`` (model, tokenizer, template, sft.json)."""
    import torch
    import transformers
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    out = Path(out_dir)
    train_items, eval_items = split_items(
        config.n_train_items, config.eval_items, config.seed, group_size=config.group_size
    )
    conversations = training_conversations(
        train_items,
        reflection_share=config.reflection_share,
        seed=config.seed,
        mix=config.reflection_mix,
        retry_mix=config.retry_mix,
    )
    build_tiny_model(
        out,
        seed=config.seed,
        config=config.model,
        extra_corpus=tokenizer_corpus(train_items, conversations, config.tokenizer_texts),
    )
    (out / "chat_template.jinja").write_text(DEMO_CHAT_TEMPLATE, encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(out)
    groups = build_groups(tokenizer, conversations, max_group=config.group_size * 2)
    n_toolless = config.toolless_steps * config.batch_size
    toolless = (
        build_groups(tokenizer, [replace(c, tools=[]) for c in conversations[:n_toolless]], max_group=config.batch_size)
        if n_toolless
        else []
    )
    pad = tokenizer.pad_token_id
    threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    losses: list[float] = []
    evals: list[dict[str, float]] = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model: Any = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
            model.train()
            n_params = sum(p.numel() for p in model.parameters())
            optim = _optimizer(model, config, config.lr)
            rng = random.Random(f"rrr-demo-sft/{config.seed}")
            log.info(
                "demo SFT: %d parameters, %d conversations (%d reflection-shaped) in %d prompt groups, "
                "%d steps of %d groups",
                n_params,
                len(conversations),
                sum(c.kind != "answer" for c in conversations),
                len(groups),
                config.steps,
                config.groups_per_step,
            )
            queue: list[PromptGroup] = []
            bar = tqdm(total=config.steps, desc="training the demo policy", unit="step", disable=not progress)
            for step in range(config.steps):
                if step < config.toolless_steps:
                    batch = [toolless[step % len(toolless)]]
                else:
                    batch = []
                    for _ in range(config.groups_per_step):
                        if not queue:
                            queue = list(groups)
                            rng.shuffle(queue)
                        batch.append(queue.pop())
                for group in optim.param_groups:
                    group["lr"] = _lr_at(step, config)
                loss = group_loss(model, batch, pad)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optim.step()
                value = float(loss.item())
                losses.append(value)
                postfix = {"loss": f"{value:.3f}"}
                if (
                    config.eval_every
                    and eval_items
                    and ((step + 1) % config.eval_every == 0 or step + 1 == config.steps)
                ):
                    acc = teacher_forced_accuracy(model, tokenizer, eval_items)
                    evals.append({"step": step + 1, "exact_match": acc, "seconds": time.monotonic() - started})
                    log.info("step %d: loss %.4f, held-out exact match %.3f", step + 1, value, acc)
                    postfix["held-out"] = f"{acc:.1%}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
            bar.close()
            stage2: dict[str, Any] = {}
            if config.stage2_steps:
                stage2 = _stage2(model, tokenizer, train_items, config, started, progress=progress)
            checks: dict[str, Any] | None = None
            if config.check_items:
                from demo.probe import Generator, dev_items, format_checks, recipe_checks

                checks = recipe_checks(
                    Generator(model, tokenizer, seed=config.seed), dev_items(config.check_items, config)
                )
                log.info("recipe checks on the dev split:\n%s", format_checks(checks))
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(out)
    seconds = time.monotonic() - started
    # Weights depend on the thread count only through floating-point summation order: recorded.
    meta = {
        "config": config.to_json(),
        "num_threads": num_threads or threads,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "parameters": n_params,
        "seconds": round(seconds, 1),
        "final_loss": losses[-1],
        "evals": evals,
        "stage2": stage2,
        "checks": checks,
    }
    (out / "sft.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("demo policy trained in %.0f s into %s", seconds, out)
    return SFTResult(out_dir=out, parameters=n_params, steps=config.steps, seconds=seconds, losses=losses, evals=evals)
