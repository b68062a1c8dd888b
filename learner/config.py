"""The learner's configuration: one documented dataclass per concern, each validated when it is built.

* `TrainConfig`: how one GRPO run trains a LoRA adapter (`learner.train` turns it into TRL's
  `GRPOConfig` and PEFT's `LoraConfig`);
* `GateConfig`: when a candidate may replace the adapter in service (`learner.gate`);
* `LearnerConfig`: everything one learner process needs (`learner.cycle`, `learner.schedule`).

The entry points build them (`learner.settings.LearnerSettings` reads `RRR_*`; the CLI adds flags),
and `to_dict()` is what is stored on a training run. An invalid config cannot exist: every class
checks itself in `__post_init__` and its errors say which field to change and how.

TrainConfig's defaults follow Reflect, Retry, Reward (Bensal et al., arXiv 2505.24726) where the paper
states a value (KL coefficient 0.001, no bias-corrected KL, cosine schedule, group size 8), and a
LoRA that vLLM can serve (linear projections only, one uniform rank within `--max-lora-rank`, no
`modules_to_save`, no DoRA, no bias).

This module does not import torch or TRL at import time; `resolved_bf16()` asks torch lazily.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from agent.loop import LoopConfig
from tools.toolcall_formats import DEFAULT_TOOL_CALL_PARSER, TOOL_CALL_FORMATS, check_tool_call_parser

#: vLLM's accepted values for `--max-lora-rank` (vllm/config/lora.py).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: Linear projections LoRA may target (Qwen2/Llama names, plus the fused names vLLM also knows).
LINEAR_PROJECTIONS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "qkv_proj",
    "gate_up_proj",
)
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Loss aggregations of TRL 1.16's GRPOTrainer.
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
SCALE_REWARDS = ("group", "batch", "none")
LR_SCHEDULERS = (
    "cosine",
    "linear",
    "constant",
    "constant_with_warmup",
    "cosine_with_min_lr",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
    "warmup_stable_decay",
)


@dataclass
class TrainConfig:
    """How one GRPO run trains a LoRA adapter on failed prompts (the completion is the reflection).

    Batch shape (TRL 1.x semantics): every optimizer step uses
    `per_device_train_batch_size * gradient_accumulation_steps * n_processes` completions, that is
    that number divided by `num_generations` failed prompts. The paper used 256 completions per
    step (e.g. 8 GPUs x 8 x 4); the defaults here (8 x 4 on one GPU = 32 completions = 4 prompts
    x 8 reflections) fit one GPU.
    """

    # --- GRPO, as in the paper -------------------------------------------------------------------
    beta: float = 0.001
    """KL coefficient against the base model (the adapter disabled). Paper: 0.001."""
    use_bias_correction_kl: bool = False
    """TRL's importance-corrected KL estimate. Off, as in the paper-era GRPO."""
    num_generations: int = 8
    """Reflections sampled per failed prompt (the group size G). Paper: 8."""
    loss_type: str = "dapo"
    """Token-level loss normalised by the number of reflection tokens in the whole batch. On one
    process this is exactly the paper-era TRL default `bnpo`; across processes it stays unbiased
    (`bnpo` normalises per process). One of LOSS_TYPES."""
    scale_rewards: str = "group"
    """Advantages = (reward - group mean) / group std, the original GRPO."""
    drop_flat_groups: bool = True
    """Leave groups whose G reflections all got the same reward (advantage 0: no signal) out of the
    loss instead of letting their tokens dilute it; the share dropped is recorded per step."""
    learning_rate: float = 1e-5
    """The paper's 5e-7 was full fine-tuning; LoRA needs about 10-20x that (TRL's PEFT guide).
    Tiny CPU models in tests and the demo use much larger values."""
    lr_scheduler_type: str = "cosine"
    """Paper: cosine decay."""
    warmup_steps: int = 0
    max_steps: int = 200
    """Optimizer steps. The dataset is cycled when it is smaller than the steps need."""
    per_device_train_batch_size: int = 8
    """Completions (reflections) per process per micro-step; a multiple of num_generations overall."""
    gradient_accumulation_steps: int = 4
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0

    # --- generation -------------------------------------------------------------------------------
    max_completion_length: int = 256
    """The reflection budget in tokens (serving uses the same cap for reflections)."""
    retry_max_tokens: int = 512
    """The retry's budget in tokens; a retry cut off at this length counts as failed."""
    temperature: float = 1.0
    """Sampling temperature of the reflections (GRPO needs diversity within a group)."""
    retry_temperature: float = 0.0
    """Temperature of the retry; 0 = greedy, like a tool call served at temperature 0. The reward
    then says whether the reflection makes the policy's most likely retry succeed."""

    # --- LoRA (vLLM-servable) ----------------------------------------------------------------------
    lora_r: int = 16
    """One rank for every targeted module (no rank_pattern: vLLM needs a uniform rank)."""
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    """Linear projections only (never lm_head or embeddings: vLLM cannot serve those and TRL rejects
    a LoRA on lm_head)."""
    max_lora_rank: int = 16
    """The serving vLLM's `--max-lora-rank` (its default is 16); one of VLLM_MAX_LORA_RANKS."""

    # --- run --------------------------------------------------------------------------------------
    seed: int = 0
    save_steps: int = 50
    """Checkpoint every K optimizer steps (a crash loses at most K steps, R18)."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept on disk (older ones are deleted after a new one is complete)."""
    logging_steps: int = 1
    bf16: bool | None = None
    """None = auto: bf16 on CUDA, float32 on CPU (CPU bf16 needs autocast and is slower there)."""
    gradient_checkpointing: bool | None = None
    """None = auto: on with CUDA (memory), off on CPU (tiny models train faster without it)."""
    use_vllm: bool = False
    """Generate reflections and retries with TRL's colocated vLLM (CUDA only)."""
    vllm_gpu_memory_utilization: float = 0.3
    tool_call_parser: str = DEFAULT_TOOL_CALL_PARSER
    """The policy's tool-call format, by vLLM's `--tool-call-parser` name (`tools.toolcall_formats`):
    the reward parses each retry with it. The same as the serving engines' (the learner checks)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further GRPOConfig fields, passed through as given (e.g. `{"top_p": 0.95}`). Fields this
    class owns cannot be overridden here."""

    def __post_init__(self) -> None:
        """Raise ValueError naming the field to change: an invalid config cannot be built."""
        problems: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(self.beta >= 0, f"beta must be >= 0 (paper: 0.001), got {self.beta}")
        need(
            self.num_generations >= 2,
            f"num_generations must be at least 2 (GRPO compares reflections within "
            f"a group; paper: 8), got {self.num_generations}",
        )
        need(self.loss_type in LOSS_TYPES, f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")
        need(
            self.scale_rewards in SCALE_REWARDS,
            f"scale_rewards must be one of {', '.join(SCALE_REWARDS)}, got {self.scale_rewards!r}",
        )
        need(self.learning_rate > 0, f"learning_rate must be > 0 (LoRA: about 1e-5), got {self.learning_rate}")
        need(
            self.lr_scheduler_type in LR_SCHEDULERS,
            f"lr_scheduler_type must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler_type!r}",
        )
        need(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        need(self.max_steps >= 1, f"max_steps must be at least 1, got {self.max_steps}")
        need(
            self.per_device_train_batch_size >= 1,
            f"per_device_train_batch_size must be at least 1, got {self.per_device_train_batch_size}",
        )
        need(
            self.gradient_accumulation_steps >= 1,
            f"gradient_accumulation_steps must be at least 1, got {self.gradient_accumulation_steps}",
        )
        completions = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if self.num_generations >= 2 and completions % self.num_generations:
            problems.append(
                f"per_device_train_batch_size x gradient_accumulation_steps ({completions}) must be a multiple "
                f"of num_generations ({self.num_generations}): each step trains whole groups of reflections"
            )
        need(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(
            self.max_completion_length >= 1,
            f"max_completion_length (the reflection budget) must be at least 1, got {self.max_completion_length}",
        )
        need(self.retry_max_tokens >= 1, f"retry_max_tokens must be at least 1, got {self.retry_max_tokens}")
        need(self.temperature > 0, f"temperature must be > 0 (reflections are sampled), got {self.temperature}")
        need(self.retry_temperature >= 0, f"retry_temperature must be >= 0 (0 = greedy), got {self.retry_temperature}")
        need(
            self.max_lora_rank in VLLM_MAX_LORA_RANKS,
            f"max_lora_rank must be one of vLLM's --max-lora-rank values {VLLM_MAX_LORA_RANKS}, "
            f"got {self.max_lora_rank}",
        )
        need(
            1 <= self.lora_r <= self.max_lora_rank,
            f"lora_r must be between 1 and max_lora_rank ({self.max_lora_rank}) so vLLM can serve the adapter; "
            f"got {self.lora_r} (raise max_lora_rank and the server's --max-lora-rank, or lower lora_r)",
        )
        need(self.lora_alpha > 0, f"lora_alpha must be > 0 (usually 2 x lora_r), got {self.lora_alpha}")
        need(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        targets = tuple(self.target_modules) if not isinstance(self.target_modules, str) else (self.target_modules,)
        bad = [t for t in targets if t not in LINEAR_PROJECTIONS]
        need(
            bool(targets) and not bad,
            f"target_modules must be linear projections from {', '.join(LINEAR_PROJECTIONS)} "
            f"(vLLM serves LoRA on those only); remove {', '.join(map(repr, bad)) or 'nothing'}"
            + ("" if targets else " and name at least one"),
        )
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        need(self.save_steps >= 1, f"save_steps (checkpoint interval K) must be at least 1, got {self.save_steps}")
        need(self.keep_checkpoints >= 1, f"keep_checkpoints must be at least 1, got {self.keep_checkpoints}")
        need(self.logging_steps >= 1, f"logging_steps must be at least 1, got {self.logging_steps}")
        need(
            0 < self.vllm_gpu_memory_utilization < 1,
            f"vllm_gpu_memory_utilization must be in (0, 1), got {self.vllm_gpu_memory_utilization}",
        )
        need(
            self.tool_call_parser in TOOL_CALL_FORMATS,
            f"tool_call_parser must be one of vLLM's parser names {', '.join(TOOL_CALL_FORMATS)}, "
            f"got {self.tool_call_parser!r}",
        )
        owned = sorted(set(self.extra) & (_OWNED_GRPO_FIELDS | {f.name for f in fields(self)}))
        need(not owned, f"extra may not set {', '.join(owned)}: set the TrainConfig field instead")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    def resolved_bf16(self) -> bool:
        """bf16 as it will be used: the explicit value, else True exactly when CUDA is available."""
        if self.bf16 is not None:
            return self.bf16
        import torch

        return bool(torch.cuda.is_available())

    def resolved_gradient_checkpointing(self) -> bool:
        if self.gradient_checkpointing is not None:
            return self.gradient_checkpointing
        import torch

        return bool(torch.cuda.is_available())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples become lists)."""
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        data["extra"] = dict(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys raise ValueError (a typo must not silently default)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown training config field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values = dict(data)
        if "target_modules" in values:
            targets = values["target_modules"]
            values["target_modules"] = (targets,) if isinstance(targets, str) else tuple(targets)
        return cls(**values)


#: GRPOConfig fields that `learner.train` sets from this config or fixes for correctness.
_OWNED_GRPO_FIELDS = frozenset(
    {
        "output_dir",
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "num_generations",
        "max_completion_length",
        "learning_rate",
        "lr_scheduler_type",
        "beta",
        "loss_type",
        "scale_rewards",
        "bf16",
        "fp16",
        "use_cpu",
        "seed",
        "data_seed",
        "save_strategy",
        "save_steps",
        "save_total_limit",
        "remove_unused_columns",
        "use_vllm",
        "vllm_mode",
        "report_to",
        "temperature",
        "resume_from_checkpoint",
        "logging_steps",
        "use_bias_correction_kl",
        "gradient_checkpointing",
        "disable_tqdm",
        "save_only_model",
        "use_cache",
    }
)


@dataclass(frozen=True)
class GateConfig:
    """When a candidate may replace the policy in service.

    margin: the lower end of the 95% paired interval of the held-out retry-success gain must be above
        this (0: the gain must be told apart from noise; -1 turns the requirement off).
    tolerance: the lower end of the 95% paired interval of the regression set's first-attempt
        difference must be above -tolerance (1 turns it off; 0.05: a forgetting of five points must be ruled out;
        the paper saw under one point on general benchmarks, which takes thousands of items to show).
    min_items: fewer held-out items than this are too few to judge: no promotion.
    max_tokens: cap on each answer and retry during evaluation (reflections use the loop's cap).
    concurrency: episodes evaluated at once (a local engine runs one generation at a time anyway).
    """

    margin: float = 0.0
    tolerance: float = 0.05
    min_items: int = 20
    max_tokens: int = 256
    concurrency: int = 4

    def __post_init__(self) -> None:
        if not -1 <= self.margin < 1:
            raise ValueError(f"gate margin must be in [-1, 1) (a bound on a success-rate gain), got {self.margin}")
        if not 0 <= self.tolerance <= 1:
            raise ValueError(f"gate tolerance must be in [0, 1] (a success-rate drop), got {self.tolerance}")
        if self.min_items < 1:
            raise ValueError(f"gate min_items must be at least 1, got {self.min_items}")
        if self.max_tokens < 1 or self.concurrency < 1:
            raise ValueError("gate max_tokens and concurrency must be at least 1")


@dataclass
class LearnerConfig:
    """Everything one learner process needs (the CLI fills it from flags and `RRR_*` variables).

    adapters_root: where `rrr-v<N>/` folders are published; must be the same path on the engines' host.
    model_path: the base model for training and for the learner's evaluation engine.
    engine_urls: the serving engines (vLLM or `rrr engine serve`); publishing loads on every one.
    database_url: handed to the training subprocess (it stores per-step metrics on the run).
    work_dir: training outputs and checkpoints, one folder per run.
    base_model_name: the engines' served base name (default: asked from the engines).
    min_new_failures: K, the new trainable failures needed before a cycle trains.
    interval_s / misfire_grace_s: the scheduler's tick and how late a tick may still run.
    lease_ttl_s: the lease's lifetime without a renewal (the bound for any holder).
    lease_heartbeat_s / lease_stale_s: while a cycle runs its learner renews the lease every
        `lease_heartbeat_s` (at most a third of the TTL); another learner takes over a lease whose
        holder has been silent for `lease_stale_s`, long before the TTL (a killed or lost host).
    drain_s: how long a replaced adapter stays loaded; at least the API's request deadline plus
        its policy cache TTL, so requests resolved just before a flip can finish.
    keep_cycles: folders of retired versions are deleted only this many publishes later.
    max_lora_rank: the engines' `--max-lora-rank` (the evaluation engine enforces the same).
    dataset_limit, max_client_share, heldout_fraction, seed: the failure dataset (R20); mined
        data all comes from one "client", so single-tenant setups use max_client_share=1.0.
    regression_limit: past successes the gate re-checks for forgetting (default: dataset_limit);
        each costs two evaluation episodes, so a short cycle (the laptop demo) caps it.
    train_launcher: the command that starts the training child in place of `python`, e.g.
        `("accelerate", "launch", "--num_processes", "4")` for multi-GPU training (default: one process).
    warm_start: cycles compound: a run trains further a copy of the adapter in service (the KL
        reference stays the base model with adapters off) on the failures collected under it; off,
        every run trains a fresh LoRA from the base on any unconsumed failures.
    replay_share: with `warm_start`, at most this share of a batch comes from earlier failures of
        other policies that no promoted run solved.
    tool_call_parser: the policy's tool-call format, by vLLM's `--tool-call-parser` name (the
        engines' own): failed calls are quoted back in it in the training prompts and by the gate's
        loop, and the reward parses retries with it. It is set on `gate_loop` and `train` too; one
        of those naming another format is an error.
    """

    adapters_root: str
    model_path: str
    engine_urls: list[str]
    database_url: str
    work_dir: str
    base_model_name: str | None = None
    engine_api_key: str | None = None
    min_new_failures: int = 32
    interval_s: float = 3600.0
    misfire_grace_s: float = 600.0
    lease_ttl_s: float = 300.0
    lease_heartbeat_s: float = 10.0
    lease_stale_s: float = 60.0
    drain_s: float = 120.0
    keep_cycles: int = 2
    max_lora_rank: int = 16
    dataset_limit: int = 512
    max_client_share: float = 0.25
    heldout_fraction: float = 0.2
    regression_limit: int | None = None
    seed: int = 0
    gate: GateConfig = field(default_factory=GateConfig)
    gate_loop: LoopConfig = field(default_factory=LoopConfig)
    train: TrainConfig | None = None
    probe_timeout_s: float = 60.0
    train_launcher: tuple[str, ...] = ()
    warm_start: bool = True
    replay_share: float = 0.25
    tool_call_parser: str = DEFAULT_TOOL_CALL_PARSER

    def __post_init__(self) -> None:
        self._same_tool_call_parser()
        if self.min_new_failures < 1:
            raise ValueError(f"min_new_failures (K) must be at least 1, got {self.min_new_failures}")
        if self.interval_s <= 0 or self.misfire_grace_s <= 0:
            raise ValueError("interval_s and misfire_grace_s must be positive")
        if self.lease_ttl_s < 3:
            raise ValueError(f"lease_ttl_s must be at least 3 seconds, got {self.lease_ttl_s}")
        if not 0 < self.lease_heartbeat_s * 3 <= self.lease_stale_s:
            raise ValueError(
                f"lease_stale_s ({self.lease_stale_s}) must be at least three heartbeats"
                f" (lease_heartbeat_s = {self.lease_heartbeat_s}, which must be positive)"
            )
        if self.drain_s < 0 or self.keep_cycles < 1:
            raise ValueError("drain_s must be >= 0 and keep_cycles >= 1")
        if self.dataset_limit < 1:
            raise ValueError(f"dataset_limit must be at least 1, got {self.dataset_limit}")
        if self.regression_limit is not None and self.regression_limit < 0:
            raise ValueError(f"regression_limit must be >= 0, got {self.regression_limit}")
        if not 0 <= self.replay_share <= 1:
            raise ValueError(f"replay_share must be in [0, 1], got {self.replay_share}")

    def _same_tool_call_parser(self) -> None:
        """One tool-call format for the whole learner: `gate_loop` and `train` follow this config's."""
        name = check_tool_call_parser(self.tool_call_parser)
        parts: list[tuple[str, Any]] = [("gate_loop", self.gate_loop), ("train", self.train)]
        for label, part in parts:
            if part is None or part.tool_call_parser == name:
                continue
            if part.tool_call_parser != DEFAULT_TOOL_CALL_PARSER:
                raise ValueError(
                    f"{label}.tool_call_parser is {part.tool_call_parser!r} but the learner's is {name!r}: "
                    "set tool_call_parser (RRR_TOOL_CALL_PARSER) once, for the learner"
                )
            setattr(self, label, replace(part, tool_call_parser=name))

    def to_dict(self) -> dict[str, Any]:
        """What is stored on the training run (no URLs or keys: R14)."""
        data = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("engine_urls", "database_url", "engine_api_key", "train", "gate", "gate_loop")
        }
        data["gate"] = asdict(self.gate)
        data["train"] = self.train.to_dict() if self.train is not None else None
        return data
