"""Session-wide fixtures shared by several test packages.

Tiny models (learner/tiny.py): built once per session in a temp dir, offline, in about a second.
Tests that need them skip when the `ml` extra (torch, transformers, peft) is not installed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub from the tests
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _need_ml() -> None:
    for module in ("torch", "transformers", "tokenizers", "peft"):
        pytest.importorskip(module)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Qwen2 model with the hermes chat template (seed 0)."""
    _need_ml()
    from learner.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A vLLM-servable LoRA (r=8) for `tiny_model_dir` whose weights change its output (seed 1)."""
    from learner.tiny import save_tiny_lora

    return save_tiny_lora(tiny_model_dir, tmp_path_factory.mktemp("tiny-lora") / "adapter", seed=1)


TOOL_MODEL_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


@dataclass(frozen=True)
class ToolModel:
    """A tiny model that memorised fixed answers: `answers[key]` for `prompt(key)` with `tools`."""

    path: Path
    tools: list[dict[str, Any]] = field(default_factory=lambda: TOOL_MODEL_TOOLS)
    queries: dict[str, str] = field(
        default_factory=lambda: {
            "call": "What is the weather in Paris?",
            "broken": "Send a broken call.",
            "hello": "Say hello.",
        }
    )
    answers: dict[str, str] = field(
        default_factory=lambda: {
            "call": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
            "broken": '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>',
            "hello": "Hello there, friend.",
        }
    )

    def prompt(self, key: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": self.queries[key]}]


@pytest.fixture(scope="session")
def tiny_tool_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ToolModel:
    """`tiny_model_dir` fine-tuned (a few seconds) to answer three prompts with known text: a valid
    `<tool_call>`, a malformed one and plain text, so tool-call handling can be checked end to end."""
    from learner.tiny import FixedAnswer, fit_tiny_model

    spec = ToolModel(path=tmp_path_factory.mktemp("tiny-tool") / "model")
    examples = [FixedAnswer(spec.prompt(k), spec.answers[k], spec.tools) for k in spec.queries]
    fit_tiny_model(tiny_model_dir, spec.path, examples, num_threads=1)
    return spec
