"""The local engine's pure parts, no model needed: vLLM's adapter checks (contract §7, §8.4), its
tool request validation (§3.2) and the exact non-streaming response shape (§3.3-§3.5)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion

from engines.base import AdapterError, EngineRequestError
from engines.wire import build_chat_completion, check_tool_request, validate_adapter_dir

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}}\n</tool_call>'
CALL2 = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
TOOL_ID = re.compile(r"^chatcmpl-tool-[0-9a-f]{16}$")

GOOD_CONFIG = {
    "peft_type": "LORA",
    "r": 8,
    "lora_alpha": 16,
    "target_modules": ["q_proj", "v_proj"],
    "bias": "none",
    "use_dora": False,
    "modules_to_save": None,
    "init_lora_weights": True,
}


def write_adapter(
    root: Path,
    config: dict[str, Any] | str | None = None,
    modules: tuple[str, ...] = ("q_proj", "v_proj"),
    weights: bool = True,
) -> Path:
    """An adapter directory with a real safetensors header (tensor data zeros), written without torch."""
    root.mkdir(parents=True, exist_ok=True)
    body = config if isinstance(config, str) else json.dumps(GOOD_CONFIG if config is None else config)
    (root / "adapter_config.json").write_text(body)
    if weights:
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for module in modules:
            for part in ("lora_A", "lora_B"):
                header[f"base_model.model.model.layers.0.self_attn.{module}.{part}.weight"] = {
                    "dtype": "F32",
                    "shape": [1, 1],
                    "data_offsets": [offset, offset + 4],
                }
                offset += 4
        raw = json.dumps(header).encode()
        (root / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return root


def test_a_good_adapter_passes_and_returns_its_config(tmp_path: Path) -> None:
    assert validate_adapter_dir(str(write_adapter(tmp_path / "a")), 8)["r"] == 8


@pytest.mark.parametrize("make", ["no_dir", "no_config"])
def test_missing_directory_or_config_is_404(tmp_path: Path, make: str) -> None:
    path = tmp_path / "a"
    if make == "no_config":
        path.mkdir()
    with pytest.raises(AdapterError) as info:
        validate_adapter_dir(str(path), 8, name="v1")
    assert (info.value.status, info.value.type) == (404, "NotFoundError")
    assert info.value.message == f"Loading lora v1 failed: No adapter found for {path}"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("{not json", "invalid adapter_config.json"),
        ({"lora_alpha": 16, "target_modules": ["q_proj"]}, "Missing required configuration fields: {'r'}"),
        ({"r": 8, "target_modules": ["q_proj"]}, "Missing required configuration fields: {'lora_alpha'}"),
        ({"r": 8, "lora_alpha": 16}, "Missing required configuration fields: {'target_modules'}"),
        ({**GOOD_CONFIG, "r": 32}, "LoRA rank 32 is greater than max_lora_rank 16."),
        ({**GOOD_CONFIG, "r": 8, "rank_pattern": {"q_proj": 64}}, "LoRA rank 64 is greater than max_lora_rank 16."),
        ({**GOOD_CONFIG, "r": 0}, "LoRA rank must be positive"),
        ({**GOOD_CONFIG, "use_dora": True}, "DoRA"),
        ({**GOOD_CONFIG, "modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({**GOOD_CONFIG, "bias": "lora_only"}, "bias"),
        ({**GOOD_CONFIG, "init_lora_weights": "pissa"}, "init_lora_weights='pissa'"),
        ({**GOOD_CONFIG, "peft_type": "IA3"}, "only LORA"),
    ],
)
def test_configs_vllm_rejects_are_500(tmp_path: Path, change: dict[str, Any] | str, reason: str) -> None:
    path = write_adapter(tmp_path / "a", change)
    with pytest.raises(AdapterError) as info:
        validate_adapter_dir(str(path), 16)
    assert (info.value.status, info.value.type) == (500, "InternalServerError")
    assert info.value.message.startswith("Call to add_lora method failed: ")
    assert reason in info.value.message


@pytest.mark.parametrize("module", ["embed_tokens", "lm_head"])
def test_embedding_or_head_targets_are_500(tmp_path: Path, module: str) -> None:
    path = write_adapter(
        tmp_path / "a", {**GOOD_CONFIG, "target_modules": ["q_proj", module]}, modules=("q_proj", module)
    )
    with pytest.raises(AdapterError) as info:
        validate_adapter_dir(str(path), 16)
    assert info.value.status == 500 and "expected target modules in" in info.value.message
    assert f"['{module}']" in info.value.message


def test_no_weight_file_is_500(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a", weights=False)
    with pytest.raises(AdapterError) as info:
        validate_adapter_dir(str(path), 16)
    assert info.value.status == 500 and info.value.message.endswith("doesn't contain tensors")


# --- tool request validation (§3.2) ---


def test_tool_choice_defaults() -> None:
    assert check_tool_request(TOOLS, None) == "auto"
    assert check_tool_request(None, None) == "none"
    named = {"type": "function", "function": {"name": "get_time"}}
    assert check_tool_request(TOOLS, named) == named


@pytest.mark.parametrize(
    ("tools", "choice", "param", "text"),
    [
        ([], None, "tools", "`tools` must not be an empty array."),
        (None, "auto", "tool_choice", "When using `tool_choice`, `tools` must be set."),
        (TOOLS, "sometimes", "tool_choice", "Invalid value for `tool_choice`: sometimes!"),
        (
            TOOLS,
            {"type": "function", "function": {"name": "nope"}},
            "tool_choice",
            "does not match any of the specified `tools`",
        ),
    ],
)
def test_bad_tool_requests_are_400(tools: Any, choice: Any, param: str, text: str) -> None:
    with pytest.raises(EngineRequestError) as info:
        check_tool_request(tools, choice)
    assert (info.value.status, info.value.type, info.value.param) == (400, "BadRequestError", param)
    assert text in info.value.message and info.value.message.endswith(f"(parameter={param})")


# --- response shape (§3.3-§3.5) ---


def complete(text: str, reason: str = "stop", **kw: Any) -> dict[str, Any]:
    kw.setdefault("tools", TOOLS)
    kw.setdefault("tool_choice", "auto")
    body = build_chat_completion(text, reason, model="tiny-v1", prompt_tokens=12, completion_tokens=5, **kw)
    ChatCompletion.model_validate(body)  # the real SDK accepts it
    return body


def test_a_tool_call_becomes_tool_calls_with_vllm_ids_and_json_dumps_arguments() -> None:
    body = complete(CALL)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert TOOL_ID.match(call["id"]) and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Zürich", "days": 2}'}
    assert re.match(r"^chatcmpl-[0-9a-f]{16}$", body["id"]) and body["model"] == "tiny-v1"
    assert body["usage"] == {
        "prompt_tokens": 12,
        "total_tokens": 17,
        "completion_tokens": 5,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    for key in ("service_tier", "system_fingerprint", "prompt_logprobs", "kv_transfer_params", "metrics"):
        assert key in body and body[key] is None
    for key in ("refusal", "annotations", "audio", "function_call", "reasoning"):
        assert key in choice["message"] and choice["message"][key] is None
    assert choice["stop_reason"] is None and choice["logprobs"] is None


def test_text_before_the_first_call_is_content_and_text_after_the_last_is_dropped() -> None:
    message = complete("Let me check.\n" + CALL + "\n" + CALL2 + " trailing")["choices"][0]["message"]
    assert message["content"] == "Let me check.\n"
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather", "get_time"]
    assert len({c["id"] for c in message["tool_calls"]}) == 2
    assert complete("  \n" + CALL)["choices"][0]["message"]["content"] is None


def test_parallel_tool_calls_false_keeps_the_first_call() -> None:
    message = complete(CALL + CALL2, parallel_tool_calls=False)["choices"][0]["message"]
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather"]


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>',
        CALL + '<tool_call>\n{"arguments": {}}\n</tool_call>',  # one bad block spoils all
        '<tool_call>\n{"name": "get_weather", "arg',  # truncated
    ],
)
def test_a_malformed_block_gives_raw_content_and_no_tool_calls_key(text: str) -> None:
    choice = complete(text)["choices"][0]
    assert choice["message"]["content"] == text and "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"


def test_finish_reason_rules() -> None:
    assert complete(CALL, "length")["choices"][0]["finish_reason"] == "length"
    named = complete(CALL, tool_choice={"type": "function", "function": {"name": "get_weather"}})["choices"][0]
    assert named["finish_reason"] == "stop" and named["message"]["tool_calls"]
    assert named["message"]["content"] == ""
    required = complete(CALL, tool_choice="required")["choices"][0]
    assert required["finish_reason"] == "tool_calls" and required["message"]["content"] == ""
    plain = complete("Just text.")["choices"][0]
    assert plain["finish_reason"] == "stop" and plain["message"]["content"] == "Just text."
    assert "tool_calls" not in plain["message"]


def test_tool_choice_none_or_no_tools_return_the_raw_text() -> None:
    for kw in ({"tool_choice": "none"}, {"tools": None, "tool_choice": "none"}):
        choice = complete(CALL, **kw)["choices"][0]
        assert choice["message"]["content"] == CALL and "tool_calls" not in choice["message"]
        assert choice["finish_reason"] == "stop"


def test_stop_reason_is_reported() -> None:
    assert complete("abc", stop_reason="###")["choices"][0]["stop_reason"] == "###"
