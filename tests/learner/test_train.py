"""learner/train.py in-process: a few real GRPO steps on a taught tiny model.

Checks the method's invariants: the completions TRL trains on are exactly the sampled reflections
(the retry is never a completion, so only reflection tokens enter the loss), only LoRA weights
move, and the published adapter is a vLLM-servable folder that LocalEngine loads and that changes
what the model says.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

import learner.train as train_module  # noqa: E402
from learner.checkpoints import ADAPTER_FILES, COMPLETE  # noqa: E402
from learner.config import TrainConfig  # noqa: E402
from learner.train import train  # noqa: E402
from tests.learner.conftest import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, task_rows  # noqa: E402


def small_config(**overrides: Any) -> TrainConfig:
    values: dict[str, Any] = dict(
        max_steps=3,
        per_device_train_batch_size=16,
        gradient_accumulation_steps=1,
        num_generations=8,
        max_completion_length=8,
        retry_max_tokens=32,
        learning_rate=2e-2,
        lr_scheduler_type="constant",
        lora_r=8,
        lora_alpha=16,
        max_lora_rank=8,
        save_steps=2,
        seed=0,
    )
    return TrainConfig(**(values | overrides))


def test_grpo_trains_only_reflection_tokens_and_only_the_lora(
    taught_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    seen: dict[str, Any] = {"batches": []}
    build = train_module.build_trainer

    def spy(*args: Any, **kwargs: Any) -> Any:
        trainer, reward = build(*args, **kwargs)
        seen["trainer"], seen["reward"] = trainer, reward
        seen["before"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        compute_loss = trainer._compute_loss

        def recording(model: Any, inputs: dict[str, Any]) -> Any:
            mask = inputs["completion_mask"].bool()
            trained = [ids[m].tolist() for ids, m in zip(inputs["completion_ids"], mask, strict=True)]
            seen["batches"].append((trained, reward.last_batch))
            return compute_loss(model, inputs)

        trainer._compute_loss = recording
        return trainer, reward

    monkeypatch.setattr(train_module, "build_trainer", spy)
    steps: list[dict[str, Any]] = []
    result = train(
        small_config(drop_flat_groups=False),  # every reflection stays in the loss (dropping: below)
        str(taught_model_dir),
        task_rows(TRAIN_TEMPLATES, target="London"),
        tmp_path / "run",
        on_step=steps.append,
    )

    # Only reflections are completions: what TRL masks in for the loss is exactly the sampled reflections.
    assert len(seen["batches"]) == 3
    for trained, batch in seen["batches"]:
        assert Counter(map(tuple, trained)) == Counter(map(tuple, batch.reflection_ids))
        assert all(len(ids) <= 8 for ids in trained)
        retries = [tuple(r) for r in batch.retry_ids if r]
        assert retries and not set(retries) & set(map(tuple, trained))
        assert all(len(r) > 8 for r in retries)  # a retry (a whole tool call) could not even fit a completion
        assert any("<tool_call>" in (text or "") for text in batch.retries)
    assert any(0 < sum(b.rewards) < len(b.rewards) for _, b in seen["batches"])  # a learning signal existed

    # Only the LoRA moved; the base weights are the ones on disk.
    trainer = seen["trainer"]
    after = dict(trainer.model.named_parameters())
    lora = [n for n in after if "lora_" in n]
    assert lora and all(after[n].requires_grad for n in lora)
    assert any(not torch.equal(after[n].detach(), seen["before"][n]) for n in lora if "lora_B" in n)
    base = AutoModelForCausalLM.from_pretrained(taught_model_dir).state_dict()
    frozen = [n for n in after if "lora_" not in n]
    assert frozen and not any(after[n].requires_grad for n in frozen)
    for name in frozen:
        assert torch.equal(after[name].detach(), seen["before"][name]), name
        plain = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        assert torch.equal(after[name].detach().cpu(), base[plain]), name

    # Metrics per step, checkpoints sealed, the adapter published as two files.
    assert result.steps == 3 and [m["step"] for m in result.metrics] == [1, 2, 3] and steps == result.metrics
    assert {"loss", "reward_mean", "retry_success", "kl", "completion_tokens"} <= set(result.metrics[0])
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.is_dir())
    assert checkpoints == ["checkpoint-2", "checkpoint-3"]  # every K=2 steps, and the last one
    for name in checkpoints:
        assert json.loads((tmp_path / "run" / "checkpoints" / name / COMPLETE).read_text())["step"] == int(name[11:])
    assert result.adapter_dir == tmp_path / "run" / "adapter"
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == sorted(ADAPTER_FILES)
    # Finished runs are not trained again.
    again = train(small_config(drop_flat_groups=False), str(taught_model_dir), [], tmp_path / "run")
    assert again.steps == 3 and again.metrics == result.metrics
    # A crash after the last checkpoint but before the adapter was published: the same adapter comes
    # back from the final checkpoint, with no step trained twice.
    published = (result.adapter_dir / "adapter_model.safetensors").read_bytes()
    shutil.rmtree(result.adapter_dir)
    (tmp_path / "run" / "result.json").unlink()
    redone = train(
        small_config(drop_flat_groups=False),
        str(taught_model_dir),
        task_rows(TRAIN_TEMPLATES, target="London"),
        tmp_path / "run",
    )
    assert redone.resumed_from_step == 3 and redone.steps == 3 and len(seen["batches"]) == 3
    assert (redone.adapter_dir / "adapter_model.safetensors").read_bytes() == published


def test_saved_adapter_is_servable_and_changes_local_engine_outputs(
    taught_model_dir: Path, tmp_path: Path, one_thread: None
) -> None:
    from engines.local import LocalEngine, validate_adapter_dir
    from learner.rows import render_rows

    config = small_config(max_steps=6, save_steps=100, learning_rate=3e-3)
    result = train(config, str(taught_model_dir), task_rows(TRAIN_TEMPLATES, target="London"), tmp_path / "run")
    adapter = validate_adapter_dir(str(result.adapter_dir), max_lora_rank=config.max_lora_rank)
    assert adapter["r"] == 8 and adapter["bias"] == "none" and not adapter.get("use_dora")
    assert not adapter.get("modules_to_save") and not adapter.get("rank_pattern")
    assert sorted(adapter["target_modules"]) == sorted(config.target_modules)

    engine = LocalEngine(str(taught_model_dir), max_lora_rank=8, num_threads=1)
    asyncio.run(engine.load_adapter("rrr-test", str(result.adapter_dir)))
    rows = render_rows(task_rows(HELDOUT_TEMPLATES), engine.tokenizer)
    changed = 0
    for k, row in enumerate(rows):
        ids = engine.encode(row["prompt"])
        tuned = engine.generate(ids, adapter="rrr-test", max_tokens=8, temperature=0)
        assert tuned.text.startswith("Use ")  # the greedy answer keeps its format
        # The adapter is applied: with the same seed, sampling from base and adapter differs somewhere.
        # (Six small steps move the logits but need not flip a greedy token.)
        for seed in range(4):
            base = engine.generate(ids, max_tokens=8, temperature=1.0, seed=100 * k + seed)
            sampled = engine.generate(ids, adapter="rrr-test", max_tokens=8, temperature=1.0, seed=100 * k + seed)
            changed += base.text != sampled.text
    assert changed > 0


def test_cpu_settings_and_vllm_on_cpu_refused(taught_model_dir: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU defaults")
    config = small_config()
    assert config.resolved_bf16() is False and config.resolved_gradient_checkpointing() is False
    trainer, reward = train_module.build_trainer(
        config, str(taught_model_dir), task_rows(TRAIN_TEMPLATES), tmp_path / "c"
    )
    assert trainer.args.bf16 is False and trainer.args.use_cpu and trainer.args.beta == 0.001
    assert trainer.args.loss_type == "dapo" and trainer.args.use_bias_correction_kl is False
    assert trainer.args.num_generations == 8 and trainer.args.scale_rewards == "group"
    assert not trainer.args.gradient_checkpointing and trainer.args.use_cache
    assert reward.trainer is trainer and trainer.reward_funcs == [reward]
    with pytest.raises(ValueError, match="use_vllm"):
        train_module.build_trainer(
            small_config(use_vllm=True), str(taught_model_dir), task_rows(TRAIN_TEMPLATES), tmp_path / "v"
        )


@pytest.mark.gpu
def test_a_few_steps_on_cuda_with_bf16(taught_model_dir: Path, tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    config = small_config(max_steps=2)
    assert config.resolved_bf16() and config.resolved_gradient_checkpointing()
    result = train(config, str(taught_model_dir), task_rows(TRAIN_TEMPLATES, target="London"), tmp_path / "gpu")
    assert result.steps == 2 and (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_a_warm_start_continues_the_published_adapter_and_keeps_the_base_as_reference(
    taught_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    """Cycle 2 starts from cycle 1's published weights (not a fresh LoRA); the base is untouched and
    stays the KL reference (adapters off), as it is for a fresh LoRA."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from adapters.folder import verify_adapter_dir, write_adapter_folder

    rows = task_rows(TRAIN_TEMPLATES, target="London")
    first = train(small_config(max_steps=2, save_steps=100), str(taught_model_dir), rows, tmp_path / "run1")
    folder, _ = write_adapter_folder(first.adapter_dir, tmp_path / "adapters", 1, base_model="tiny")
    published = verify_adapter_dir(folder, tmp_path / "adapters").path
    weights = load_file(str(Path(published) / "adapter_model.safetensors"))

    seen: dict[str, Any] = {}
    build = train_module.build_trainer

    def spy(*args: Any, **kwargs: Any) -> Any:
        trainer, reward = build(*args, **kwargs)
        seen["trainer"] = trainer
        seen["start"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        return trainer, reward

    monkeypatch.setattr(train_module, "build_trainer", spy)
    second = train(
        small_config(max_steps=2, save_steps=100),
        str(taught_model_dir),
        rows,
        tmp_path / "run2",
        init_adapter=published,
    )
    start, model = seen["start"], seen["trainer"].accelerator.unwrap_model(seen["trainer"].model)

    # 1. The starting LoRA weights are exactly the published ones (a fresh LoRA has lora_B == 0).
    lora = {n: t for n, t in start.items() if "lora_" in n}
    assert len(lora) == len(weights) > 0
    for name, tensor in lora.items():
        assert torch.equal(tensor.cpu(), weights[name.replace(".default", "")]), name
    assert any(bool(t.abs().sum()) for n, t in lora.items() if "lora_B" in n)
    # 2. Only the copy trains: it moved, and what was published on disk did not.
    after = dict(model.named_parameters())
    assert any(not torch.equal(after[n].detach(), lora[n]) for n in lora)
    assert load_file(str(Path(published) / "adapter_model.safetensors")).keys() == weights.keys()
    assert (second.adapter_dir / "adapter_model.safetensors").read_bytes() != (
        Path(published) / "adapter_model.safetensors"
    ).read_bytes()
    # 3. The base is untouched and is the KL reference: no frozen copy of the adapter ("ref").
    assert "ref" not in model.peft_config and list(model.peft_config) == ["default"]
    base = AutoModelForCausalLM.from_pretrained(taught_model_dir).state_dict()
    for name, tensor in after.items():
        if "lora_" not in name:
            plain = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
            assert torch.equal(tensor.detach().cpu(), base[plain]), name
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad(), model.disable_adapter():
        reference = model(input_ids=ids).logits
    plain_model = AutoModelForCausalLM.from_pretrained(taught_model_dir)
    with torch.no_grad():
        assert torch.allclose(reference, plain_model(input_ids=ids).logits, atol=1e-5)


def test_groups_with_one_reward_for_every_reflection_are_left_out_of_the_loss(
    taught_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    seen: list[tuple[list[float], list[int], int]] = []
    build = train_module.build_trainer

    def spy(*args: Any, **kwargs: Any) -> Any:
        trainer, reward = build(*args, **kwargs)
        compute_loss = trainer._compute_loss

        def recording(model: Any, inputs: dict[str, Any]) -> Any:
            seen.append(
                (
                    inputs["advantages"].tolist(),
                    inputs["completion_mask"].sum(dim=1).tolist(),
                    int(inputs["num_items_in_batch"]),
                )
            )
            return compute_loss(model, inputs)

        trainer._compute_loss = recording
        return trainer, reward

    monkeypatch.setattr(train_module, "build_trainer", spy)
    result = train(
        small_config(max_steps=4, save_steps=100),
        str(taught_model_dir),
        task_rows(TRAIN_TEMPLATES, target="London"),
        tmp_path / "run",
    )
    flat_rows = kept_rows = 0
    for advantages, tokens, items in seen:
        for advantage, n in zip(advantages, tokens, strict=True):
            if abs(advantage) < 1e-8:
                assert n == 0  # a flat group's reflection contributes no token to the loss ...
                flat_rows += 1
            else:
                kept_rows += n > 0
        assert items == sum(tokens)  # ... and is not in the normaliser either
    assert flat_rows and kept_rows  # the run had both kinds
    shares = [m["dropped_flat"] for m in result.metrics]
    assert len(shares) == 4 and all(0 <= s <= 1 for s in shares)
    total = sum(len(a) for a, _, _ in seen)
    assert sum(shares) / len(shares) == pytest.approx(flat_rows / total, abs=1e-6)
