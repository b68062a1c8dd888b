"""The one module that touches TRL internals, pinned to the TRL release it was verified against.

Who calls it: `learner.reward` (the retry generation) and `learner.train` (the version check before
building a trainer). Everything here relies on attributes of TRL 1.16's `GRPOTrainer` that are not
public API: `model_wrapped`, `accelerator`, `args`, `eos_token_ids`, the `ref` adapter of a warm start,
`_generate_and_score_completions` and `_metrics` (flat groups),
`_tokenizer`, `_dist`, `use_vllm`, `vllm_generation` and `trl.models.unwrap_model_for_generation`.
When TRL moves, this file and its version check change; nothing else in the repository should.

What it deliberately does not do: build trainers, score or decode text.
TRL and torch are imported lazily inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

log = logging.getLogger(__name__)

SUPPORTED_TRL = "1.16"
"""Major.minor of the TRL release whose GRPOTrainer internals this module was verified against."""


class UnsupportedTRLVersion(RuntimeError):
    """The installed TRL is not the release this learner was verified against."""


def check_trl_version(version: str | None = None) -> str:
    """Return the installed TRL version, or raise UnsupportedTRLVersion when it is not 1.16.x."""
    if version is None:
        try:
            from importlib.metadata import version as dist_version

            version = dist_version("trl")
        except Exception as exc:  # PackageNotFoundError, broken metadata
            raise UnsupportedTRLVersion(
                f"TRL is not installed; install the ml extra (trl=={SUPPORTED_TRL}.0): {exc}"
            ) from exc
    parts = version.split(".")
    if ".".join(parts[:2]) != SUPPORTED_TRL:
        raise UnsupportedTRLVersion(
            f"TRL {version} is installed, but the learner was verified against TRL {SUPPORTED_TRL}.x "
            f"(its GRPOTrainer internals are used in learner/trl_compat.py). Install trl=={SUPPORTED_TRL}.0, "
            "or port learner/trl_compat.py to the new release and update SUPPORTED_TRL."
        )
    return version


def use_base_as_reference(trainer: Any) -> bool:
    """Make the KL reference the base model with adapters off, also when training continues an
    existing adapter (a warm start). TRL 1.16 copies a PeftModel's pretrained adapter to a frozen
    `ref` adapter and uses that as the reference; without `ref` it disables the adapters, which is
    the reference of a fresh LoRA and the one rrr's cycles keep across warm starts. True if a `ref`
    adapter was removed."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    peft_config = getattr(model, "peft_config", None)
    if not isinstance(peft_config, dict) or "ref" not in peft_config:
        return False
    model.delete_adapter("ref")
    model.set_adapter("default")
    return True


def drop_flat_groups(trainer: Any) -> None:
    """Leave reflections whose group of G all got the same reward out of the loss.

    Such a group has advantage 0 for every member: it carries no signal, yet with token-normalised
    losses (`dapo`, `bnpo`) its tokens still count in the denominator and dilute every other
    group's update (and, at the demo's scale, 75-95% of groups are flat). After TRL scores a
    generation batch, the completion mask of those rows is cleared and `num_items_in_batch`
    recomputed over what is left, so the loss is the mean over informative reflections only. The
    share dropped is logged per step as `frac_dropped_flat`. With binary rewards an advantage of
    exactly 0 happens only in a flat group.
    """
    original = trainer._generate_and_score_completions

    def scored(inputs: Any) -> Any:
        output = original(inputs)
        advantages = output["advantages"]
        flat = advantages.abs() < 1e-8
        mask = output["completion_mask"]
        output["completion_mask"] = mask * (~flat).unsqueeze(1).to(mask.dtype)
        kept = output["completion_mask"]
        output["num_items_in_batch"] = trainer.accelerator.gather(kept.sum()).sum()
        share = trainer.accelerator.gather(flat.float().mean().reshape(1)).mean().item()
        trainer._metrics["train" if trainer.model.training else "eval"]["frac_dropped_flat"].append(share)
        return output

    trainer._generate_and_score_completions = scored


def policy_model(trainer: Any) -> Any:
    """The policy (the PEFT model with the adapter being trained), unwrapped from DDP/accelerate."""
    return trainer.accelerator.unwrap_model(trainer.model)


def generate_with_policy(
    trainer: Any, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, temperature: float
) -> list[list[int]]:
    """Generate one completion per prompt with the trainer's current policy (LoRA included).

    Returns completion token ids per prompt, cut after the first EOS (the EOS is kept when it was
    generated, so a missing EOS means the completion hit `max_new_tokens`). `temperature` 0 is
    greedy. CPU/plain-GPU path: Hugging Face `generate` on the unwrapped model under `no_grad`
    (batched, left-padded). With `use_vllm`: TRL's vLLM generation, whose weights TRL synced for
    this step before generating the reflections; sampling settings are overridden for the call and
    restored after. On several processes every rank must call this (the vLLM server path is a
    collective).
    """
    if not prompt_ids:
        return []
    if getattr(trainer, "use_vllm", False):
        return _generate_vllm(trainer, prompt_ids, max_new_tokens, temperature)
    return _generate_hf(trainer, prompt_ids, max_new_tokens, temperature)


def _eos_ids(trainer: Any) -> list[int]:
    ids = getattr(trainer, "eos_token_ids", None)
    if ids is None:
        eos = trainer.processing_class.eos_token_id
        ids = [eos] if isinstance(eos, int) else list(eos or [])
    return [int(i) for i in ids]


def _cut_at_eos(ids: Sequence[int], eos: set[int]) -> list[int]:
    out: list[int] = []
    for token in ids:
        out.append(int(token))
        if token in eos:
            break
    return out


@contextlib.contextmanager
def _full_params(trainer: Any) -> Iterator[None]:
    dist = getattr(trainer, "_dist", None)
    if dist is None:
        yield
        return
    with dist.summon_full_params(trainer.model_wrapped, recurse=False):
        yield


def _generate_hf(
    trainer: Any, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, temperature: float
) -> list[list[int]]:
    import torch
    from transformers import GenerationConfig
    from trl.models.utils import unwrap_model_for_generation

    tokenizer = getattr(trainer, "_tokenizer", None) or trainer.processing_class
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos_ids(trainer)[0]
    eos = _eos_ids(trainer)
    width = max(len(p) for p in prompt_ids)
    device = trainer.accelerator.device
    input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompt_ids], device=device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    sample = temperature > 1e-5
    config_kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": sample,
        "pad_token_id": pad,
        "eos_token_id": eos,
        "top_k": None,
        "top_p": None,
        "disable_compile": True,
        "use_cache": True,
    }
    if sample:
        config_kwargs["temperature"] = temperature
    make_config: Any = GenerationConfig  # untyped constructor
    generation_config = make_config(**config_kwargs)
    args = trainer.args
    with (
        unwrap_model_for_generation(
            trainer.model_wrapped,
            trainer.accelerator,
            gather_deepspeed3_params=args.ds3_gather_for_generation,
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
        ) as model,
        torch.no_grad(),
        _full_params(trainer),
    ):
        output = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=generation_config)
    completions = output[:, width:].tolist()
    eos_set = set(eos)
    return [_cut_at_eos(ids, eos_set) for ids in completions]


def _generate_vllm(
    trainer: Any, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, temperature: float
) -> list[list[int]]:
    # Not exercised on CPU: verified against TRL 1.16's source (VLLMGeneration.generate reads these
    # attributes at call time). Needs a GPU test before production use.
    generation = trainer.vllm_generation
    saved = {name: getattr(generation, name) for name in ("temperature", "max_completion_length", "top_p", "top_k")}
    generation.temperature = temperature if temperature > 1e-5 else 0.0
    generation.max_completion_length = max_new_tokens
    generation.top_p = 1.0
    generation.top_k = 0  # disabled in TRL's convention
    try:
        _, completion_ids, _, _ = generation.generate(
            prompts=[list(p) for p in prompt_ids], images=None, num_generations=1
        )
    finally:
        for name, value in saved.items():
            setattr(generation, name, value)
    eos_set = set(_eos_ids(trainer))
    return [_cut_at_eos(ids, eos_set) for ids in completion_ids]
