"""learner/config.py and the pure parts of learner/train.py and learner/trl_compat.py (no training)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from learner.checkpoints import (
    COMPLETE,
    is_complete_checkpoint,
    newest_complete_checkpoint,
    prune_checkpoints,
    seal_checkpoint,
)
from learner.config import DEFAULT_TARGET_MODULES, VLLM_MAX_LORA_RANKS, TrainConfig
from learner.train import step_metrics
from learner.trl_compat import UnsupportedTRLVersion, check_trl_version


def test_defaults_follow_the_paper_and_serve_on_vllm() -> None:
    config = TrainConfig()
    assert config.beta == 0.001 and config.use_bias_correction_kl is False
    assert config.num_generations == 8 and config.lr_scheduler_type == "cosine" and config.scale_rewards == "group"
    assert config.loss_type == "dapo" and config.temperature == 1.0 and config.retry_temperature == 0.0
    assert 5e-6 <= config.learning_rate <= 2e-5  # LoRA: ~10-20x the paper's full fine-tuning 5e-7
    assert config.target_modules == DEFAULT_TARGET_MODULES and "lm_head" not in config.target_modules
    assert config.lora_r <= config.max_lora_rank and config.max_lora_rank in VLLM_MAX_LORA_RANKS
    assert config.bf16 is None and config.use_vllm is False
    assert (config.per_device_train_batch_size * config.gradient_accumulation_steps) % config.num_generations == 0


def test_round_trips_through_json() -> None:
    config = TrainConfig(max_steps=7, target_modules=("q_proj", "v_proj"), extra={"top_p": 0.9})
    data = json.loads(json.dumps(config.to_dict()))
    assert data["target_modules"] == ["q_proj", "v_proj"]
    assert TrainConfig.from_dict(data) == config
    with pytest.raises(ValueError, match=r"unknown training config field.*lerning_rate"):
        TrainConfig.from_dict({"lerning_rate": 1e-5})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lora_r": 32}, "lora_r must be between 1 and max_lora_rank"),
        ({"max_lora_rank": 24}, "max_lora_rank must be one of vLLM's"),
        ({"target_modules": ("q_proj", "lm_head")}, "remove 'lm_head'"),
        ({"target_modules": ()}, "name at least one"),
        ({"num_generations": 1}, "num_generations must be at least 2"),
        ({"per_device_train_batch_size": 6, "gradient_accumulation_steps": 1}, "multiple of num_generations"),
        ({"loss_type": "ppo"}, "loss_type must be one of"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"retry_temperature": -1.0}, "retry_temperature"),
        ({"save_steps": 0}, "save_steps"),
        ({"beta": -0.1}, "beta must be >= 0"),
        ({"lr_scheduler_type": "exp"}, "lr_scheduler_type must be one of"),
        ({"extra": {"learning_rate": 1.0}}, "extra may not set learning_rate"),
        ({"extra": {"save_strategy": "no"}}, "extra may not set save_strategy"),
    ],
)
def test_validation_says_what_to_change(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)  # type: ignore[arg-type]


def test_trl_version_check() -> None:
    assert check_trl_version("1.16.0") == "1.16.0"
    assert check_trl_version("1.16.3") == "1.16.3"
    with pytest.raises(UnsupportedTRLVersion, match=r"TRL 1\.17\.0 is installed.*trl==1\.16\.0"):
        check_trl_version("1.17.0")
    with pytest.raises(UnsupportedTRLVersion):
        check_trl_version("0.16.0")
    pytest.importorskip("trl")
    assert check_trl_version().startswith("1.16.")


def fake_checkpoint(root: Path, step: int, *, seal: bool = True) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    if seal:
        seal_checkpoint(path, step)
    return path


def test_only_sealed_checkpoints_count_and_pruning_keeps_the_newest(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    assert newest_complete_checkpoint(root) is None
    two, four = fake_checkpoint(root, 2), fake_checkpoint(root, 4)
    partial = fake_checkpoint(root, 6, seal=False)
    assert json.loads((two / COMPLETE).read_text()) == {"step": 2}
    assert newest_complete_checkpoint(root) == four and partial.exists()
    # A marker copied from another step, or a checkpoint missing its weights, is not complete.
    (partial / COMPLETE).write_text(json.dumps({"step": 4}))
    assert not is_complete_checkpoint(partial)
    (four / "adapter_model.safetensors").unlink()
    assert newest_complete_checkpoint(root) == two
    (four / "adapter_model.safetensors").write_bytes(b"weights")
    (root / "notes").mkdir()
    assert newest_complete_checkpoint(root, delete_partial=True) == four
    assert not partial.exists() and (root / "notes").exists()
    six, eight = fake_checkpoint(root, 6), fake_checkpoint(root, 8)
    stale = fake_checkpoint(root, 5, seal=False)
    prune_checkpoints(root, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-6", "checkpoint-8", "notes"]
    assert six.exists() and eight.exists() and not stale.exists() and not two.exists()


def test_step_metrics_keeps_numbers_under_stable_names() -> None:
    logs = {
        "loss": 0.5,
        "reward": 0.25,
        "reward_std": 0.1,
        "retry_success_rate": 0.25,
        "kl": 0.01,
        "completions/mean_length": 12.0,
        "grad_norm": 1.5,
        "learning_rate": 1e-5,
        "epoch": 0.5,
        "entropy": None,
    }
    assert step_metrics(3, logs) == {
        "step": 3,
        "loss": 0.5,
        "reward_mean": 0.25,
        "reward_std": 0.1,
        "retry_success": 0.25,
        "kl": 0.01,
        "completion_tokens": 12.0,
        "grad_norm": 1.5,
        "learning_rate": 1e-5,
    }


def _bos_adding_tokenizer() -> object:
    """A tokenizer that adds a BOS to every text, as Llama 3.1's does, built in-process."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["hello world tool call"], trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>"]))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", unk_token="<unk>")


def test_a_tokenizer_that_adds_a_bos_is_aligned_with_serving_not_refused() -> None:
    from learner.train import _align_prompt_tokenization

    tokenizer: Any = _bos_adding_tokenizer()
    rendered = "<s>hello world"  # the chat template writes the BOS itself, as Llama 3.1's does
    served = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    aligned = _align_prompt_tokenization(tokenizer, rendered)
    assert aligned == "hello world"
    assert tokenizer(text=aligned)["input_ids"] == served  # TRL's tokens == what serving sends: one BOS
    with pytest.raises(ValueError, match="does not begin with"):
        _align_prompt_tokenization(tokenizer, "hello world")  # a template without the BOS: refused
