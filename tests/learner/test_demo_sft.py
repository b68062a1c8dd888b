"""learner/demo/sft.py: rendering equals serving, the answer-only loss, and a few real training steps.

Trains a throwaway model of a few thousand parameters on a slice of the corpus (seconds); makes no
accuracy claim (see learner/demo/policy.py and `rrr demo eval-policy` for measured numbers).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import AutoTokenizer  # noqa: E402

from agent.engines.local import LocalEngine  # noqa: E402
from learner.demo.corpus import (  # noqa: E402
    answer_example,
    generate_items,
    reflection_example,
    training_conversations,
)
from learner.demo.sft import (  # noqa: E402
    DEMO_CHAT_TEMPLATE,
    SFTConfig,
    _collate,
    answer_loss,
    build_groups,
    encode_conversation,
    group_loss,
    train_policy,
)
from learner.tiny import TinyModelConfig  # noqa: E402

SLICE = SFTConfig(seed=1, n_train_items=240, steps=12, batch_size=8, group_size=4, toolless_steps=4, lr=3e-3,
                  warmup_steps=2, eval_items=24, eval_every=12, tokenizer_texts=240,
                  model=TinyModelConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=1, intermediate_size=128, vocab_size=600,
                                        max_position_embeddings=1024))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return train_policy(tmp_path_factory.mktemp("demo-sft") / "policy", SLICE, num_threads=1, progress=False)


def test_a_few_steps_on_a_slice_reduce_the_loss(trained: Any) -> None:
    losses = trained.losses
    assert len(losses) == SLICE.steps
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert trained.evals and trained.evals[-1]["step"] == SLICE.steps
    assert {"model.safetensors", "tokenizer.json", "chat_template.jinja", "sft.json"} <= {
        p.name for p in Path(trained.out_dir).iterdir()}


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
    assert sorted(g.size for g in groups) == sorted([sum(c.tools == items[0].tools for c in conversations),
                                                     sum(c.tools == items[-1].tools for c in conversations)])
    grouped = group_loss(model, groups, tokenizer.pad_token_id)
    rows = [encode_conversation(tokenizer, c) for c in conversations]
    full, _ = answer_loss(model, *_collate(rows, tokenizer.pad_token_id))
    assert grouped.item() == pytest.approx(full.item(), rel=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    for a, b in zip(torch.autograd.grad(grouped, params), torch.autograd.grad(full, params), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
