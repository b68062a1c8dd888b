"""demo/sft.py and policy.py: rendering equals serving, the answer-only loss, a few real training
steps, the recorded recipe, and the measurement through the real loop.

Builds a throwaway policy of a few thousand parameters on a slice of the corpus (seconds); makes no
accuracy claim about it (`rrr demo eval-policy` measures the shipped policy). The measurement is
checked against a scripted upstream whose answers are known.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import AutoTokenizer  # noqa: E402

from demo.base_policy import (  # noqa: E402
    POLICY_FILES,
    build_policy,
    evaluate_items,
    evaluate_policy,
    format_summary,
    held_out_items,
    policy_recipe,
    write_summary,
)
from demo.corpus import (  # noqa: E402
    answer_example,
    generate_items,
    reflection_example,
    split_items,
    training_conversations,
)
from demo.sft import (  # noqa: E402
    DEMO_CHAT_TEMPLATE,
    SFTConfig,
    _collate,
    answer_loss,
    build_groups,
    encode_conversation,
    group_loss,
)
from engines.local import LocalEngine  # noqa: E402
from engines.vllm import VLLMEngine  # noqa: E402
from learner.tiny import TinyModelConfig  # noqa: E402
from tests.support.upstream import Script, ScriptedUpstream, classify, text, tool_call  # noqa: E402

SLICE = SFTConfig(
    seed=1,
    n_train_items=240,
    steps=12,
    batch_size=8,
    group_size=4,
    toolless_steps=4,
    lr=3e-3,
    warmup_steps=2,
    eval_items=24,
    eval_every=12,
    tokenizer_texts=240,
    stage2_steps=3,
    stage2_items=24,
    gap_every=3,
    gap_items=12,
    check_items=12,
    model=TinyModelConfig(
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128,
        vocab_size=600,
        max_position_embeddings=1024,
    ),
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_policy(tmp_path_factory.mktemp("demo-sft") / "policy", SLICE, num_threads=1, progress=False)


def test_a_few_steps_on_a_slice_reduce_the_loss(trained: Any) -> None:
    losses = trained.losses
    assert len(losses) == SLICE.steps
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert trained.evals and trained.evals[-1]["step"] == SLICE.steps


def test_the_policy_folder_holds_the_server_files_and_a_path_free_recipe(trained: Any) -> None:
    out = Path(trained.out_dir)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no half-built leftovers
    assert sorted(p.name for p in out.iterdir()) == sorted(POLICY_FILES)
    recipe = (out / "sft.json").read_text(encoding="utf-8")
    assert str(out.parent) not in recipe and '"/' not in recipe
    assert json.loads(recipe)["num_threads"] == 1
    assert policy_recipe(out) == SLICE


def test_held_out_items_share_no_query_with_the_training_set() -> None:
    train, _ = split_items(SLICE.n_train_items * 8, 1, SLICE.seed, group_size=SLICE.group_size)  # as train_policy
    config = SFTConfig.from_json({**SLICE.to_json(), "n_train_items": SLICE.n_train_items * 8})
    held_out = held_out_items(240, config)
    assert not {i.query for i in train} & {i.query for i in held_out}
    assert held_out[:24] == held_out_items(24, config)


def test_prompts_render_exactly_as_the_local_engine_renders_them(trained: Any) -> None:
    engine = LocalEngine(str(trained.out_dir), num_threads=1)
    tokenizer = engine.tokenizer
    assert tokenizer.chat_template == DEMO_CHAT_TEMPLATE
    item = generate_items(5, seed=11)[0]
    conv = reflection_example(item, random.Random(0))
    ids, labels = encode_conversation(tokenizer, conv)
    (_reflect_history, reflection), (retry_history, answer) = conv.steps
    whole = engine.render_prompt(retry_history, item.tools) + answer + "<|im_end|>"
    assert ids == engine.encode(whole)  # segment-wise tokenising = tokenising the served prompt
    trained_text = tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])
    assert trained_text == reflection + "<|im_end|>" + answer + "<|im_end|>"
    assert '{"type":"function","function":{"name":' in engine.render_prompt(item.messages, item.tools)


def test_a_reflection_without_a_loss_trains_only_the_retry(trained: Any) -> None:
    from dataclasses import replace

    tokenizer = AutoTokenizer.from_pretrained(trained.out_dir)
    conv = replace(reflection_example(generate_items(5, seed=11)[1], random.Random(0)), learn=(False, True))
    ids, labels = encode_conversation(tokenizer, conv)
    trained_text = tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])
    assert trained_text == conv.steps[1][1] + "<|im_end|>"


def test_stage_two_trains_on_the_models_own_failures_and_records_the_checks(trained: Any) -> None:
    from demo.probe import THRESHOLDS

    meta = json.loads((Path(trained.out_dir) / "sft.json").read_text(encoding="utf-8"))
    stage2 = meta["stage2"]
    assert stage2["sampled_tasks"] == SLICE.stage2_items
    assert 0 < stage2["own_failures"] <= SLICE.stage2_items  # a policy this small fails most tasks
    assert stage2["reflection_conversations"] >= stage2["own_failures"] * SLICE.stage2_variants
    assert [g["step"] for g in stage2["gaps"]] == [0, 3]
    checks = meta["checks"]
    assert checks["dev_items"] == SLICE.check_items and set(checks["thresholds"]) == set(THRESHOLDS)
    assert checks["failures"] == checks["first_attempt"]["n"] - checks["first_attempt"]["successes"]


def test_tool_values_tokenize_the_same_in_the_query_and_in_the_call(trained: Any) -> None:
    tokenizer = AutoTokenizer.from_pretrained(trained.out_dir)
    for item in generate_items(300, seed=5):
        for value in item.arguments.values():
            if isinstance(value, str) and f" {value}" in f" {item.query}":
                in_query = tokenizer(" " + value, add_special_tokens=False)["input_ids"][1:]
                in_call = tokenizer('"' + value + '"', add_special_tokens=False)["input_ids"][1:-1]
                assert in_query == in_call, value
    assert len(tokenizer("2025", add_special_tokens=False)["input_ids"]) == 4


def test_answer_example_labels_cover_only_the_call(trained: Any) -> None:
    tokenizer = AutoTokenizer.from_pretrained(trained.out_dir)
    item = generate_items(1, seed=2)[0]
    ids, labels = encode_conversation(tokenizer, answer_example(item))
    first = next(i for i, lab in enumerate(labels) if lab != -100)
    assert all(lab == -100 for lab in labels[:first]) and labels[first:] == ids[first:]
    assert tokenizer.decode(ids[first:]).startswith("<tool_call>")


def test_shared_prompt_groups_give_the_loss_and_gradients_of_full_sequences(trained: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(trained.out_dir)
    model = AutoModelForCausalLM.from_pretrained(trained.out_dir)
    items = generate_items(12, seed=4, group_size=6)
    assert len({item.tool_names for item in items}) == 2
    conversations = training_conversations(items, reflection_share=0.25, seed=1)
    groups = build_groups(tokenizer, conversations, max_group=16)
    assert sorted(g.size for g in groups) == sorted(
        [sum(c.tools == items[0].tools for c in conversations), sum(c.tools == items[-1].tools for c in conversations)]
    )
    grouped = group_loss(model, groups, tokenizer.pad_token_id)
    rows = [encode_conversation(tokenizer, c) for c in conversations]
    full, _ = answer_loss(model, *_collate(rows, tokenizer.pad_token_id))
    assert grouped.item() == pytest.approx(full.item(), rel=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    for a, b in zip(torch.autograd.grad(grouped, params), torch.autograd.grad(full, params), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_evaluation_counts_first_attempts_retries_and_rescues_through_the_loop(tmp_path: Path) -> None:
    items = held_out_items(6, SLICE)
    right_first, rescued = {items[0].query, items[1].query}, {items[2].query, items[3].query}

    def responder(body: dict[str, Any]) -> Any:
        item = next(i for i in items if i.query == body["messages"][0]["content"])
        kind = classify(body["messages"])
        if kind == "reflection":
            return text("I wrote the wrong value.")
        ok = item.query in right_first or (kind == "retry" and item.query in rescued)
        return tool_call(item.name, item.arguments if ok else {"nope": 1})

    with ScriptedUpstream(Script(responder=responder)) as up:
        summary = asyncio.run(evaluate_items(VLLMEngine(up.url), items, model="base", progress=False))
    assert (summary["n"], summary["engine_errors"]) == (6, 0)
    assert summary["first_attempt"]["successes"] == 2 and summary["after_retry"]["successes"] == 4
    assert (summary["retry_rescued"]["successes"], summary["retry_rescued"]["n"]) == (2, 4)
    lo, hi = summary["retry_rescued"]["ci95"]
    assert lo < 0.5 < hi
    assert sorted(summary["per_tool"]) == sorted(i.name for i in items)
    assert [f["status"] for f in summary["sample_failures"]] == ["retry_ok", "retry_ok", "failed", "failed"]
    write_summary(tmp_path / "s.json", summary)
    assert json.loads((tmp_path / "s.json").read_text()) == summary
    assert "first attempt  33.3%" in format_summary(summary)


def test_evaluate_policy_runs_the_trained_policy_on_the_local_engine(trained: Any) -> None:
    summary = evaluate_policy(trained.out_dir, held_out_items(2, SLICE), max_tokens=16, num_threads=1, progress=False)
    assert summary["n"] == 2 and summary["engine_errors"] == 0
    assert summary["first_attempt"]["n"] == summary["after_retry"]["n"] == 2
