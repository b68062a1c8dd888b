"""GRPO training of a LoRA adapter on failed prompts, crash-safe: the training child process.

Who calls it: `learner.launch.launch_training` runs `python -m learner.train` (`main`) in a child
process for the learner's cycle; tests call `train` in-process. The completion GRPO samples is the
reflection; `learner.reward.RetryReward` generates the retry with the current policy and scores
it, so only reflection tokens enter the loss (docs/design.md, "The learning loop").

Layout of an output folder (one per run):

    checkpoints/checkpoint-<step>/   TRL/HF checkpoints; usable only with a COMPLETE marker (learner.checkpoints)
    metrics.jsonl                    one JSON object per optimizer step (on_step sees the same)
    result.json                      written just before the adapter is published
    adapter/                         adapter_config.json + adapter_model.safetensors, renamed in whole

Crash safety (R18): a checkpoint counts only once its files are fsync'd and a `COMPLETE` marker
(written last, via temp file + rename) names its step; after a crash the newest complete one is
resumed from and partial ones are deleted. The final adapter is written to a temp folder and
renamed, so `adapter/` is complete whenever it exists. A crash loses at most `save_steps` steps.

Multi-GPU: run the child under `accelerate launch -m learner.train --run-id ... --model ...
--work-dir ...` (`launch_training(launcher=...)`, `rrr learn ... --train-launcher`; DDP or ZeRO-2;
only rank 0 writes metrics, heartbeats and the adapter). GPU:
bf16 and gradient checkpointing turn on automatically; `use_vllm=True` generates reflections and
retries with TRL's colocated vLLM.

What it deliberately does not do: choose data (learner.dataset), start itself (learner.launch),
judge or publish adapters (learner.gate, adapters.serving), set run statuses, or show progress
bars (the CLI does, from `on_step`).
torch/transformers/peft/trl/datasets are imported lazily.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.folder import remove_tree, write_atomic
from learner.checkpoints import (
    checkpoint_step,
    newest_complete_checkpoint,
    prune_checkpoints,
    publish_adapter_files,
    read_metrics,
    seal_checkpoint,
    truncate_metrics,
)
from learner.config import TrainConfig
from learner.reward import RetryReward
from learner.rows import read_rows, render_rows
from learner.trl_compat import check_trl_version, drop_flat_groups, use_base_as_reference

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
DATABASE_URL_ENV = "RRR_LEARNER_DATABASE_URL"
"""The child reads the database URL from the environment, never from its command line (ps shows that)."""
ERROR_PREFIX = "rrr-train error: "


class TrainingFailed(RuntimeError):
    """The training subprocess exited without a complete adapter; the message is its last error line."""


@dataclass
class TrainResult:
    """A finished run: where the adapter is, how many optimizer steps were done, per-step metrics."""

    adapter_dir: Path
    steps: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_step: int | None = None
    """The checkpoint step this (last) process resumed from, None when it started fresh."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "adapter_dir": str(self.adapter_dir),
            "steps": self.steps,
            "metrics": self.metrics,
            "resumed_from_step": self.resumed_from_step,
        }


def _save_adapter(trainer: Any, target: Path) -> None:
    """adapter_config.json + adapter_model.safetensors into a temp folder, fsync'd, renamed to `target`."""
    from learner.trl_compat import policy_model

    staging = target.with_name(f".{target.name}.save-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    policy_model(trainer).save_pretrained(str(staging), safe_serialization=True)
    try:
        publish_adapter_files(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- the trainer -----------------------------------------------------------------------------------


def step_metrics(step: int, logs: dict[str, Any]) -> dict[str, Any]:
    """One optimizer step's numbers from TRL's log dict, under the names the store keeps."""
    names = {
        "loss": "loss",
        "reward_mean": "reward",
        "reward_std": "reward_std",
        "retry_success": "retry_success_rate",
        "kl": "kl",
        "completion_tokens": "completions/mean_length",
        "retry_tokens": "retry_mean_length",
        "frac_reward_zero_std": "frac_reward_zero_std",
        "dropped_flat": "frac_dropped_flat",
        "entropy": "entropy",
        "learning_rate": "learning_rate",
        "grad_norm": "grad_norm",
        "step_time": "step_time",
    }
    out: dict[str, Any] = {"step": step}
    for name, key in names.items():
        value = logs.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def _callbacks(
    config: TrainConfig, checkpoints: Path, metrics_path: Path, on_step: Callable[[dict[str, Any]], None] | None
) -> list[Any]:
    from transformers import TrainerCallback

    class SealCheckpoints(TrainerCallback):
        """Checkpoint atomically: seal after HF wrote everything; save at the last step as well."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step >= state.max_steps:
                control.should_save = True
            return control

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.is_world_process_zero:
                path = checkpoints / f"checkpoint-{state.global_step}"
                seal_checkpoint(path, state.global_step)
                prune_checkpoints(checkpoints, config.keep_checkpoints)
                log.info("checkpoint %d complete", state.global_step)
            return control

    class RecordSteps(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
            if not state.is_world_process_zero or not logs or "train_runtime" in logs:
                return control
            item = step_metrics(state.global_step, logs)
            with metrics_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(item) + "\n")
                fh.flush()
            log.info(
                "step %d: %s", state.global_step, ", ".join(f"{k}={v:.4g}" for k, v in item.items() if k != "step")
            )
            if on_step is not None:
                on_step(item)
            return control

    return [SealCheckpoints(), RecordSteps()]


def _align_prompt_tokenization(tokenizer: Any, prompt: str) -> str:
    """The prompt text to hand TRL so that its tokens are exactly what serving sends.

    Serving (vLLM's chat route, `LocalEngine`) tokenizes the rendered chat template without adding
    special tokens; TRL tokenizes a string prompt with them. A tokenizer that adds a BOS (Llama 3.1)
    would then train on a doubled BOS when the template already writes one: that leading BOS text is
    taken off, so TRL's own BOS takes its place. Anything else that differs is refused.
    """
    plain = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if list(tokenizer(text=prompt)["input_ids"]) == plain:
        return prompt
    bos = getattr(tokenizer, "bos_token", None)
    if isinstance(bos, str) and bos and prompt.startswith(bos):
        stripped = prompt[len(bos) :]
        if list(tokenizer(text=stripped)["input_ids"]) == plain:
            return stripped
    raise ValueError(
        "the tokenizer adds special tokens to an already rendered chat prompt that the chat template does not "
        "begin with, so TRL's training prompts would differ from what serving sends; use a tokenizer whose chat "
        "template carries its own special tokens"
    )


def build_trainer(
    config: TrainConfig,
    model_path: str,
    rows: Sequence[dict[str, Any]],
    output_dir: Path,
    *,
    callbacks: Sequence[Any] = (),
    init_adapter: str | None = None,
) -> tuple[Any, RetryReward]:
    """A GRPOTrainer on `rows` (FailureRows, or rows already rendered by `render_rows`) with a
    vLLM-servable LoRA, and its reward object (already wired to the trainer).

    `init_adapter` (a published adapter folder) warm-starts the run: a trainable copy of that
    adapter's weights is trained further, so cycles compound, while the KL reference stays the base
    model with adapters off (`trl_compat.use_base_as_reference`). Without it a fresh LoRA starts
    from the base (B = 0, so the policy starts as the base)."""
    check_trl_version()
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    cuda = torch.cuda.is_available()
    if config.use_vllm and not cuda:
        raise ValueError("use_vllm=True needs a CUDA GPU; set use_vllm=False on this machine")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rendered = [dict(r) for r in rows] if rows and all("prompt" in r for r in rows) else render_rows(rows, tokenizer)
    if not rendered:
        raise ValueError("no training rows: the failure dataset is empty")
    rendered = [{**row, "prompt": _align_prompt_tokenization(tokenizer, row["prompt"])} for row in rendered]
    bf16 = config.resolved_bf16()
    dtype = "bfloat16" if bf16 and cuda else "float32"
    args: Any = GRPOConfig(
        output_dir=str(output_dir),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        max_grad_norm=config.max_grad_norm,
        weight_decay=config.weight_decay,
        beta=config.beta,
        use_bias_correction_kl=config.use_bias_correction_kl,
        loss_type=config.loss_type,
        scale_rewards=config.scale_rewards,
        bf16=bf16,
        fp16=False,
        use_cpu=not cuda,
        gradient_checkpointing=config.resolved_gradient_checkpointing(),
        use_cache=True,  # transformers 5 defaults to False, which makes every generated token re-run the prompt
        model_init_kwargs=None if init_adapter else {"dtype": dtype},
        seed=config.seed,
        data_seed=config.seed,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=None,  # rotation is ours: HF's would count partial checkpoints
        save_only_model=False,  # optimizer, scheduler and RNG too: resume continues the same run
        logging_steps=config.logging_steps,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,  # the reward needs every column
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        disable_dropout=True,
        log_completions=False,
        use_vllm=config.use_vllm,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        **config.extra,
    )
    # TRL draws whole batches of distinct prompts; a dataset smaller than one batch would train nothing.
    needed = max(1, int(args.generation_batch_size) // config.num_generations)
    if len(rendered) < needed:
        log.info("repeating %d training rows to fill a batch of %d prompts", len(rendered), needed)
        rendered = [rendered[i % len(rendered)] for i in range(needed)]
    peft_config: Any = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        bias="none",
        use_dora=False,
        modules_to_save=None,
        init_lora_weights=True,
        task_type="CAUSAL_LM",
    )
    reward = RetryReward(
        retry_max_tokens=config.retry_max_tokens,
        retry_temperature=config.retry_temperature,
        tokenizer=tokenizer,
        tool_call_parser=config.tool_call_parser,
    )
    reward_funcs: Any = reward
    model: Any = model_path
    if init_adapter is not None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        model = PeftModel.from_pretrained(base, init_adapter, is_trainable=True)
        peft_config = None  # the adapter's own (servable) config
        log.info("warm start from %s", Path(init_adapter).name)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=Dataset.from_list(rendered),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
    if init_adapter is not None:
        use_base_as_reference(trainer)
    if config.drop_flat_groups:
        drop_flat_groups(trainer)
    reward.trainer = trainer
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the library logs; it never prints
    return trainer, reward


def train(
    config: TrainConfig,
    model_path: str,
    rows: Sequence[dict[str, Any]],
    out_dir: Path,
    *,
    resume: bool = True,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    init_adapter: str | None = None,
) -> TrainResult:
    """Train (or resume, or return the finished result of) the run in `out_dir`.

    With `resume`, a finished run (`adapter/` present) is returned as is and an interrupted one
    continues from its newest complete checkpoint; without it, the folder's previous checkpoints,
    metrics and adapter are deleted first. `on_step` gets `step_metrics` after every logged step.
    `init_adapter` warm-starts from a published adapter (`build_trainer`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints, adapter = out / CHECKPOINTS, out / ADAPTER
    metrics_path, result_path = out / "metrics.jsonl", out / "result.json"
    for stale in [*out.glob(f".{ADAPTER}.tmp-*"), *out.glob(f".{ADAPTER}.save-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    for stale in out.glob(".trash-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if not resume:
        for path in (checkpoints, adapter):
            remove_tree(path)
        for path in (metrics_path, result_path):
            path.unlink(missing_ok=True)
    elif adapter.is_dir() and result_path.is_file():
        log.info("run in %s already finished; returning its adapter", out)
        return read_result(result_path, adapter)
    start = newest_complete_checkpoint(checkpoints, delete_partial=True) if resume else None
    resumed = checkpoint_step(start) if start is not None else None
    truncate_metrics(metrics_path, resumed or 0)
    if start is not None and resumed is not None and resumed >= config.max_steps:
        # Crashed after the last checkpoint, before publishing (HF would train one step too many).
        log.info("publishing the adapter of the final %s", start.name)
        result = TrainResult(
            adapter_dir=adapter, steps=resumed, metrics=read_metrics(metrics_path), resumed_from_step=resumed
        )
        write_atomic(result_path, json.dumps({**result.to_dict(), "adapter_dir": ADAPTER, "metrics": None}) + "\n")
        publish_adapter_files(start, adapter)
        return result
    if start is not None:
        log.info("resuming from %s", start.name)
    trainer, _ = build_trainer(
        config,
        model_path,
        rows,
        checkpoints,
        callbacks=_callbacks(config, checkpoints, metrics_path, on_step),
        init_adapter=init_adapter,
    )
    trainer.train(resume_from_checkpoint=str(start) if start is not None else None)
    steps = int(trainer.state.global_step)
    if steps < config.max_steps:
        raise RuntimeError(f"training stopped after {steps} of {config.max_steps} steps; no adapter was published")
    result = TrainResult(
        adapter_dir=adapter, steps=steps, metrics=read_metrics(metrics_path), resumed_from_step=resumed
    )
    if trainer.is_world_process_zero():
        # result.json first: whenever adapter/ exists, the run's result does too.
        write_atomic(result_path, json.dumps({**result.to_dict(), "adapter_dir": ADAPTER, "metrics": None}) + "\n")
        _save_adapter(trainer, adapter)
        log.info("adapter after %d steps saved to %s", steps, adapter)
    return result


def read_result(result_path: Path, adapter: Path) -> TrainResult:
    data = json.loads(result_path.read_text(encoding="utf-8"))
    return TrainResult(
        adapter_dir=adapter,
        steps=int(data["steps"]),
        metrics=read_metrics(result_path.parent / "metrics.jsonl"),
        resumed_from_step=data.get("resumed_from_step"),
    )


# --- the child process ------------------------------------------------------------------------------


class _RunRecorder:
    """Stores step metrics and heartbeats on the training run (the child's only database writes)."""

    def __init__(self, database_url: str, run_id: str, heartbeat_s: float) -> None:
        from store.db import make_engine, make_session_factory

        self.run_id = run_id
        self._engine = make_engine(database_url)
        self._sessions = make_session_factory(self._engine)
        self._pending: list[dict[str, Any]] = []
        self._first = True
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), name="rrr-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self, every: float) -> None:
        from store import runs

        while True:
            try:
                with self._lock, self._sessions.begin() as session:
                    runs.heartbeat_run(session, self.run_id)
            except Exception:
                log.warning("heartbeat for run %s failed", self.run_id, exc_info=True)
            if self._stop.wait(every):
                return

    def on_step(self, item: dict[str, Any]) -> None:
        self._pending.append(item)
        self.flush()

    def flush(self) -> None:
        from store import runs
        from store.models import TrainingRun

        if not self._pending:
            return
        try:
            with self._lock, self._sessions.begin() as session:
                if self._first:
                    # A resumed run redoes the steps after its checkpoint: drop their old numbers.
                    run = session.get(TrainingRun, self.run_id)
                    if run is None:
                        raise LookupError(f"training run {self.run_id} does not exist")
                    first_step = int(self._pending[0].get("step", 0))
                    kept = [m for m in (run.metrics or []) if int(m.get("step", 0)) < first_step]
                    if len(kept) != len(run.metrics or []):
                        run.metrics = kept
                        session.flush()
                for item in self._pending:
                    runs.append_run_metrics(session, self.run_id, item)
                runs.heartbeat_run(session, self.run_id)
            self._first = False
            self._pending.clear()
        except Exception:
            log.warning("storing metrics of run %s failed; will retry with the next step", self.run_id, exc_info=True)

    def close(self) -> None:
        self.flush()
        self._stop.set()
        self._thread.join(timeout=10)
        self._engine.dispose()


def _lock_work_dir(work: Path) -> Any:
    """One training process per work dir: a crashed scheduler's orphaned child may still be running
    there. The OS drops the lock when the holder dies, even by SIGKILL."""
    import fcntl

    handle = (work / "train.lock").open("a")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise RuntimeError(f"another training process is already running in {work}") from None
    return handle


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m learner.train --run-id ID --model PATH --work-dir DIR`: the training child process."""
    parser = argparse.ArgumentParser(prog="python -m learner.train", description=main.__doc__)
    parser.add_argument("--run-id", default=None, help="training run to record metrics and heartbeats on")
    parser.add_argument("--model", required=True, help="base model folder (the one the engine serves)")
    parser.add_argument("--work-dir", required=True, type=Path, help="holds train.jsonl and config.json")
    parser.add_argument("--heartbeat-s", type=float, default=30.0)
    parser.add_argument("--init-adapter", default=None, help="published adapter folder to train on (warm start)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    database_url = os.environ.get(DATABASE_URL_ENV)
    recorder: _RunRecorder | None = None
    lock = None
    try:
        work: Path = args.work_dir
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            lock = _lock_work_dir(work)
        config = TrainConfig.from_dict(json.loads((work / "config.json").read_text(encoding="utf-8")))
        rows = read_rows(work / "train.jsonl")
        if args.run_id and database_url and int(os.environ.get("RANK", "0")) == 0:
            recorder = _RunRecorder(database_url, args.run_id, args.heartbeat_s)
        result = train(
            config,
            args.model,
            rows,
            work,
            resume=True,
            on_step=recorder.on_step if recorder else None,
            init_adapter=args.init_adapter,
        )
        log.info("training finished after %d steps (resumed from %s)", result.steps, result.resumed_from_step)
        return 0
    except Exception as exc:
        log.exception("training failed")
        message = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        print(ERROR_PREFIX + message[:2000], file=sys.stderr, flush=True)
        return 1
    finally:
        if recorder is not None:
            recorder.close()
        if lock is not None:
            lock.close()


if __name__ == "__main__":
    sys.exit(main())
