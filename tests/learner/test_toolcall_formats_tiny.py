"""Each tool-call format through the tiny model's chat template and tokenizer (learner/tiny.py).

A conversation whose failed attempt is quoted in a format (`agent.prompts.failed_assistant_message`)
renders with the template as the reflection prompt; the assistant turn in the rendered prompt, and
the same text after the tokenizer's encode/decode, parse back to the calls.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from agent import prompts
from learner.rows import render_messages
from tools.spec import ToolCall
from tools.toolcall_formats import SUPPORTED_TOOL_CALL_PARSERS, tool_call_format

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CALLS = [
    ToolCall("get_weather", {"city": "Zürich", "unit": "celsius"}),
    ToolCall("get_weather", {"city": 'Ha Noi "old quarter" [1]', "days": -2, "opts": {"hourly": True, "n": [1, 2]}}),
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def assistant_turn(prompt: str) -> str:
    """The first assistant turn's text in a prompt rendered by the tiny (Qwen2.5-style) template."""
    start = prompt.index("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")
    return prompt[start : prompt.index("<|im_end|>", start)]


@pytest.mark.parametrize("name", SUPPORTED_TOOL_CALL_PARSERS)
def test_a_quoted_call_renders_with_the_tiny_template_and_parses_back(tokenizer: Any, name: str) -> None:
    fmt = tool_call_format(name)
    task = [{"role": "user", "content": "Weather in Zürich and Ha Noi?"}]
    raw = [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
        }
        for c in CALLS
    ]
    failed = prompts.failed_assistant_message(None, raw, tool_call_parser=name)
    prompt = render_messages(tokenizer, prompts.reflection_messages(task, failed), TOOLS)
    turn = assistant_turn(prompt)
    assert turn == fmt.render(CALLS)  # quoted exactly as the model would write them
    for text in (turn, tokenizer.decode(tokenizer(turn, add_special_tokens=False)["input_ids"])):
        parsed = fmt.parse(text)
        assert parsed.error is None, parsed.error
        assert [(c.name, c.arguments) for c in parsed.tool_calls] == [(c.name, c.arguments) for c in CALLS]


@pytest.mark.parametrize("name", SUPPORTED_TOOL_CALL_PARSERS)
def test_a_model_answer_in_each_format_parses_after_the_tokenizer(tokenizer: Any, name: str) -> None:
    """What a model of that family generates (rendered calls, then end of turn) decodes and parses."""
    fmt = tool_call_format(name)
    ids = tokenizer(fmt.render(CALLS), add_special_tokens=False)["input_ids"]
    ids.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    text = tokenizer.decode(ids[:-1], skip_special_tokens=not fmt.keeps_special_tokens)
    parsed = fmt.parse(text)
    assert parsed.tools_called and [c.arguments for c in parsed.tool_calls] == [c.arguments for c in CALLS]
