"""vLLM's wire behaviour that needs no model: adapter validation, tool-request checks, responses.

Used by the local engine and the vLLM-compatible server (engines/server/) so both answer
exactly as vLLM 0.33 does (docs/vllm.md §2.2, §3.2-§3.5, §7, §8.4). Pure functions and
constants only: no torch, no model, no I/O besides reading an adapter folder's config and
safetensors header.
"""

from __future__ import annotations

import json
import logging
import secrets
import struct
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from engines.base import AdapterError, EngineRequestError
from tools.toolcall_formats import DEFAULT_TOOL_CALL_PARSER, tool_call_format
from tools.verify import effective_tool_choice

log = logging.getLogger(__name__)

QWEN2_LORA_MODULES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj", "gate_up_proj"}
)
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt")
_ALLOWED_INIT_NAMES = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")  # besides true and false
_ADD_LORA = "Call to add_lora method failed: "


def add_lora_failed(reason: str) -> AdapterError:
    return AdapterError(500, _ADD_LORA + reason, "InternalServerError")


def _safetensors_names(path: Path) -> list[str]:
    """Tensor names from a safetensors header (8-byte length, then JSON), without torch."""
    with path.open("rb") as fh:
        raw_len = fh.read(8)
        if len(raw_len) != 8:
            raise ValueError("truncated header")
        (length,) = struct.unpack("<Q", raw_len)
        if length > 100_000_000:
            raise ValueError("header too large")
        header = json.loads(fh.read(length))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return [name for name in header if name != "__metadata__"]


def validate_adapter_dir(  # noqa: C901 (vLLM's checks, one branch each, in vLLM's order)
    path: str, max_lora_rank: int, *, name: str | None = None, supported_modules: Collection[str] = QWEN2_LORA_MODULES
) -> dict[str, Any]:
    """Check a PEFT LoRA directory the way vLLM 0.33 does before loading it; return its config.

    Missing directory or `adapter_config.json`: `AdapterError` 404 `NotFoundError`. Anything vLLM
    would refuse (bad JSON, missing `r`/`lora_alpha`/`target_modules`, rank above `max_lora_rank`,
    DoRA, `modules_to_save`, bias, unsupported init or target modules, no weights): 500
    `InternalServerError` with vLLM's "Call to add_lora method failed: ..." message.
    """
    label = name if name is not None else Path(path).name
    root = Path(path).expanduser()
    config_path = root / "adapter_config.json"
    if not root.is_dir() or not config_path.is_file():
        raise AdapterError(404, f"Loading lora {label} failed: No adapter found for {path}", "NotFoundError")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise add_lora_failed(f"invalid adapter_config.json: {exc}") from None
    if not isinstance(config, dict):
        raise add_lora_failed("invalid adapter_config.json: not a JSON object")
    missing = sorted({"r", "lora_alpha", "target_modules"} - set(config))
    if missing:
        raise add_lora_failed(f"Missing required configuration fields: {set(missing)}")
    if config.get("peft_type", "LORA") != "LORA":
        raise add_lora_failed(f"peft_type {config.get('peft_type')!r} is not supported; only LORA adapters load.")
    ranks = [config["r"], *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks):
        raise add_lora_failed(f"LoRA rank must be an integer, got {config['r']!r}.")
    if min(ranks) <= 0:
        raise add_lora_failed(f"LoRA rank must be positive, got {min(ranks)}.")
    if max(ranks) > max_lora_rank:
        raise add_lora_failed(f"LoRA rank {max(ranks)} is greater than max_lora_rank {max_lora_rank}.")
    if not isinstance(config["lora_alpha"], int | float) or isinstance(config["lora_alpha"], bool):
        raise add_lora_failed(f"lora_alpha must be a number, got {config['lora_alpha']!r}.")
    if config.get("use_dora"):
        raise add_lora_failed("vLLM does not yet support DoRA.")
    if config.get("modules_to_save") not in (None, [], ["classifier"], ["score"]):
        raise add_lora_failed("vLLM only supports modules_to_save being None.")
    if config.get("bias", "none") != "none":
        raise add_lora_failed("Adapter bias cannot be used without bias_enabled.")
    if config.get("lora_bias"):
        raise add_lora_failed("Adapter lora_bias is not supported.")
    init = config.get("init_lora_weights", True)
    if not (isinstance(init, bool) or init in _ALLOWED_INIT_NAMES):
        raise add_lora_failed(f"init_lora_weights={init!r} is not supported.")
    if config.get("layer_replication"):
        raise add_lora_failed("layer_replication is not supported.")
    targets = config["target_modules"]
    target_names = [targets] if isinstance(targets, str) else targets
    if not isinstance(target_names, list) or not all(isinstance(t, str) for t in target_names):
        raise add_lora_failed("target_modules must be a list of module names.")
    expected = set(supported_modules)
    weights = [root / f for f in WEIGHT_FILES if (root / f).is_file()]
    if not weights:
        raise add_lora_failed(f"{path} doesn't contain tensors")
    if weights[0].suffix == ".safetensors":
        try:
            tensor_names = _safetensors_names(weights[0])
        except (OSError, ValueError) as exc:
            raise add_lora_failed(f"{path} has an unreadable adapter_model.safetensors: {exc}") from None
        if not tensor_names:
            raise add_lora_failed(f"{path} doesn't contain tensors")
        modules = {_lora_module(n) for n in tensor_names}
    else:
        # A string target is a regex (or "all-linear") in PEFT: only its literal names can be checked.
        modules = {t for t in target_names if isinstance(targets, list) or t.isidentifier()}
    unexpected = sorted(m for m in modules if m not in expected)
    if unexpected:
        raise add_lora_failed(
            f"While loading {path}, expected target modules in {sorted(expected)} but received "
            f"{unexpected}. Please verify that the loaded LoRA module is correct"
        )
    return config


def _lora_module(tensor_name: str) -> str:
    """`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` -> `q_proj`."""
    parts = tensor_name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("lora_") and i > 0:
            return parts[i - 1]
    # Not a LoRA tensor (modules_to_save, embeddings): name its module.
    return parts[-2] if len(parts) > 1 else tensor_name


def bad_request(message: str, param: str | None) -> EngineRequestError:
    suffix = f" (parameter={param})" if param else ""
    return EngineRequestError(400, message + suffix, "BadRequestError", param)


def check_tool_request(
    tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None
) -> str | dict[str, Any]:
    """vLLM's request validation for tools (§3.2); returns the effective `tool_choice`."""
    if tools is not None and len(tools) == 0:
        raise bad_request(
            "`tools` must not be an empty array. Either provide at least one tool or omit the field entirely.", "tools"
        )
    if tool_choice is not None and tools is None:
        raise bad_request("When using `tool_choice`, `tools` must be set.", "tool_choice")
    names = set()
    for tool in tools or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(fn, dict)
            or not isinstance(fn.get("name"), str)
        ):
            raise bad_request('Each tool must be {"type": "function", "function": {"name": ...}}.', "tools")
        names.add(fn["name"])
    if tool_choice is None:
        return effective_tool_choice(None, bool(tools))
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise bad_request(
                f'Invalid value for `tool_choice`: {tool_choice}! Only named tools, "none", '
                '"auto" or "required" are supported.',
                "tool_choice",
            )
        return tool_choice
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise bad_request(
            f'Invalid value for `tool_choice`: {tool_choice}! Only named tools, "none", '
            '"auto" or "required" are supported.',
            "tool_choice",
        )
    if fn["name"] not in names:
        raise bad_request(
            "The tool specified in `tool_choice` does not match any of the specified `tools`", "tool_choice"
        )
    return tool_choice


def tool_call_id() -> str:
    """vLLM's tool-call id: `chatcmpl-tool-` and 16 lowercase hex characters."""
    return "chatcmpl-tool-" + secrets.token_hex(8)


def build_chat_completion(
    text: str,
    engine_finish_reason: str,
    *,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] = "none",
    parallel_tool_calls: bool | None = None,
    stop_reason: str | int | None = None,
    tool_call_parser: str = DEFAULT_TOOL_CALL_PARSER,
) -> dict[str, Any]:
    """The non-streaming `chat.completion` body vLLM 0.33 sends for `text` (§3.3-§3.5).

    `tool_calls` is omitted unless the parse (vLLM's `tool_call_parser`, §3.9) found calls;
    null-valued fields are present.
    """
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "reasoning": None,
    }
    finish_reason = engine_finish_reason
    if tools and tool_choice != "none":
        parsed = tool_call_format(tool_call_parser).parse(text)
        if parsed.error:
            log.info("%s parse failed, returning raw text as content: %s", tool_call_parser, parsed.error)
        if parsed.tools_called and parsed.tool_calls:
            calls = parsed.tool_calls if parallel_tool_calls is not False else parsed.tool_calls[:1]
            forced = tool_choice == "required" or isinstance(tool_choice, dict)
            message["content"] = "" if forced and parsed.content is None else parsed.content
            message["tool_calls"] = [
                {
                    "id": tool_call_id(),
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
                }
                for c in calls
            ]
            if engine_finish_reason == "stop" and not isinstance(tool_choice, dict):
                finish_reason = "tool_calls"
    return {
        "id": "chatcmpl-" + secrets.token_hex(8),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": stop_reason,
                "token_ids": None,
                "routed_experts": None,
                "weight_versions": None,
            }
        ],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "prompt_text": None,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What vLLM hands the chat template: text parts joined, tool-call arguments parsed to objects."""
    out = []
    for msg in messages:
        if not isinstance(msg, dict):
            raise bad_request("Each message must be a JSON object.", "messages")
        msg = dict(msg)
        content = msg.get("content")
        if isinstance(content, list):
            msg["content"] = "\n".join(
                part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
            )
        if msg.get("tool_calls"):
            calls = []
            for call in msg["tool_calls"]:
                call = dict(call)
                fn = dict(call.get("function") or {})
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        args = json.loads(args)
                    except ValueError:
                        args = None
                    # vLLM logs a warning and renders {} for arguments that are not a JSON object.
                fn["arguments"] = args if isinstance(args, dict) else {}
                call["function"] = fn
                calls.append(call)
            msg["tool_calls"] = calls
        out.append(msg)
    return out


def model_permission() -> dict[str, Any]:
    return {
        "id": "modelperm-" + secrets.token_hex(8),
        "object": "model_permission",
        "created": int(time.time()),
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
