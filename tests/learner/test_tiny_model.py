"""learner/tiny.py: the tiny Qwen2 model, its tokenizer and chat template, its LoRA, and `rrr model tiny`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from engines.wire import validate_adapter_dir  # noqa: E402
from learner.tiny import LORA_TARGET_MODULES, TOOL_TOKENS, build_tiny_model, save_tiny_lora, tiny_corpus  # noqa: E402

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_same_seed_gives_identical_files_and_another_seed_other_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = file_hashes(build_tiny_model(tmp_path / "again", seed=0))
    assert again == file_hashes(tiny_model_dir)
    assert {"model.safetensors", "tokenizer.json", "chat_template.jinja", "generation_config.json"} <= set(again)
    other = file_hashes(build_tiny_model(tmp_path / "other", seed=1))
    assert other["model.safetensors"] != again["model.safetensors"]
    assert other["tokenizer.json"] == again["tokenizer.json"]


def test_loads_with_auto_classes_as_a_qwen2_chat_model(tiny_model_dir: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.tie_word_embeddings and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tokenizer)
    assert 900 <= len(tokenizer) <= 2048
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert im_end in model.generation_config.eos_token_id
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_chat_template_renders_tools_history_calls_and_grouped_tool_responses(tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
            ],
        },
        {"role": "tool", "tool_call_id": "a", "content": "21"},
        {"role": "tool", "tool_call_id": "b", "content": "5"},
        {"role": "assistant", "content": "Warm in Paris."},
    ]
    text = tokenizer.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to "
        "assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML "
        "tags:\n<tools>\n" + json.dumps(TOOLS[0]) + "\n</tools>\n\nFor each function call, return a json object "
        "with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWeather in Paris and Oslo?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n21\n</tool_response>\n<tool_response>\n5\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nWarm in Paris.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    encoded = tokenizer.apply_chat_template(
        messages, tools=TOOLS, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert encoded["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_chat_template_without_tools_keeps_the_system_message(tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=False,
        tokenize=False,
    )
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


def test_tokenizer_round_trips_a_tool_call_with_tags_as_single_tokens(tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = (
        '<tool_call>\n{"name": "convert_currency", "arguments": {"amount": 1234.5, "from": "€", '
        '"to": "yen", "note": "naïve  café 東京"}}\n</tool_call><|im_end|>'
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<tool_call>" and tokens[-2:] == ["</tool_call>", "<|im_end|>"]
    for tag in TOOL_TOKENS:
        assert len(tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1
    # Tool tags are not special: they survive skip_special_tokens (vLLM's hermes parser needs them).
    assert "<tool_call>" in tokenizer.decode(ids, skip_special_tokens=True)


def test_digits_are_single_tokens_and_spaces_separate_words(tokenizer) -> None:  # type: ignore[no-untyped-def]
    def tokens(text: str) -> list[str]:
        return list(tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"]))

    assert tokens("2024") == ["2", "0", "2", "4"]
    assert tokens("weather in Paris") == ["weather", "Ġ", "in", "Ġ", "Paris"]
    # The value in the query and inside the JSON string is the same token: copyable.
    assert "Paris" in tokens('{"city": "Paris"}')
    assert all(t == "Ġ" or "Ġ" not in t for t in tokens(" ".join(tiny_corpus(20, seed=3))))


def test_tokenizer_json_as_is_and_transformers_qwen2_tokenizer_agree(tiny_model_dir: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """transformers 5 rebuilds Qwen2's pre-tokenizer; vLLM on transformers 4 reads tokenizer.json as is."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    samples = [*tiny_corpus(30, seed=7), "It's  two\tspaces' don't\n\n x 3.14 ½ 東京", "  lead", "trail  "]
    for text in samples:
        assert raw.encode(text).ids == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_number_tokens_make_a_number_one_token_in_the_query_and_in_the_call(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    from learner.tiny import TinyModelConfig

    out = build_tiny_model(tmp_path / "numbers", config=TinyModelConfig(number_tokens_below=1000))
    tokenizer = AutoTokenizer.from_pretrained(out)

    def tokens(text: str) -> list[str]:
        return list(tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"]))

    assert {"18", "740", "19"} <= set(tokens("Tip 18% on $740 at 19:05"))
    assert "740" in tokens('{"bill": 740}') and "740" in tokens("Tip on $740")
    assert tokens("3200") == ["320", "0"] and tokens("7") == ["7"]  # leftmost-longest, single digits as before
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))  # vLLM on transformers 4 reads this as is
    for text in ["Tip 18% on $740 at 19:05", "2026-11-21 12.5 1000000", *tiny_corpus(10, seed=5)]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert raw.encode(text).ids == ids and tokenizer.decode(ids) == text
    with pytest.raises(ValueError, match="number_tokens_below"):
        TinyModelConfig(number_tokens_below=5)


def test_tiny_lora_is_a_vllm_servable_peft_adapter(
    tiny_model_dir: Path, tiny_adapter_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    config = validate_adapter_dir(str(tiny_adapter_dir), max_lora_rank=8)
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["bias"] == "none"
    assert sorted(config["target_modules"]) == sorted(LORA_TARGET_MODULES)
    assert not config["use_dora"] and not config["modules_to_save"]
    tensors = load_file(tiny_adapter_dir / "adapter_model.safetensors")
    b_norms = [float(t.abs().sum()) for name, t in tensors.items() if "lora_B" in name]
    assert len(b_norms) == 2 * len(LORA_TARGET_MODULES) and min(b_norms) > 0
    again = save_tiny_lora(tiny_model_dir, tmp_path / "again", seed=1)
    other = save_tiny_lora(tiny_model_dir, tmp_path / "other", seed=2)
    digest = file_hashes(tiny_adapter_dir)["adapter_model.safetensors"]
    assert file_hashes(again)["adapter_model.safetensors"] == digest
    assert file_hashes(other)["adapter_model.safetensors"] != digest


def test_cli_model_tiny_builds_a_loadable_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["model", "tiny", "--out", str(tmp_path / "m"), "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert "tiny model written to" in result.stdout
    assert file_hashes(tmp_path / "m") == file_hashes(tiny_model_dir)
