"""The tool-call parser chosen by configuration: the engine's responses and streams, and startup checks.

`build_chat_completion`, `ChatStream`, `LocalEngine`, `rrr engine serve --tool-call-parser`,
`RRR_TOOL_CALL_PARSER` (`api.settings`, the learner's settings), `LoopConfig` and `LearnerConfig`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from typer.testing import CliRunner

from agent.loop import LoopConfig
from engines.local import LocalEngine
from engines.server.stream import ChatStream
from engines.wire import build_chat_completion
from learner.config import LearnerConfig, TrainConfig
from tools.spec import ToolCall
from tools.toolcall_formats import SUPPORTED_TOOL_CALL_PARSERS, tool_call_format

if TYPE_CHECKING:
    from tests.conftest import ToolModel

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
CALLS = [ToolCall("get_weather", {"city": "Zürich"}), ToolCall("get_weather", {"city": "Oslo", "days": 2})]


def complete(text: str, parser: str, **kw: Any) -> dict[str, Any]:
    kw.setdefault("tool_choice", "auto")
    return build_chat_completion(
        text, "stop", model="m", prompt_tokens=1, completion_tokens=1, tools=TOOLS, tool_call_parser=parser, **kw
    )


@pytest.mark.parametrize("parser", SUPPORTED_TOOL_CALL_PARSERS)
def test_the_response_has_the_calls_of_the_configured_format(parser: str) -> None:
    choice = complete(tool_call_format(parser).render(CALLS), parser)["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in choice["message"]["tool_calls"]]
    assert got == [(c.name, c.arguments) for c in CALLS]
    assert choice["message"]["tool_calls"][1]["function"]["arguments"] == '{"city": "Oslo", "days": 2}'


@pytest.mark.parametrize(
    ("parser", "text"),
    [
        ("llama3_json", '{"name": "get_weather", "arguments": {"city": }}'),
        ("mistral", '[TOOL_CALLS] [{"name": "get_weather"}]'),
        ("pythonic", "[get_weather(city=paris)]"),
        ("pythonic", "Sure: [get_weather(city='Paris')]"),
    ],
)
def test_malformed_output_is_the_raw_content_as_vllm_returns_it(parser: str, text: str) -> None:
    choice = complete(text, parser)["choices"][0]
    assert choice["message"]["content"] == text and "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"


def test_the_default_parser_is_hermes() -> None:
    pythonic = tool_call_format("pythonic").render(CALLS)
    body = build_chat_completion(pythonic, "stop", model="m", prompt_tokens=1, completion_tokens=1, tools=TOOLS)
    assert body["choices"][0]["message"]["content"] == pythonic


def stream(parser: str, text: str, pieces: int = 5) -> list[dict[str, Any]]:
    chat = ChatStream("m", parse_tools=True, tool_call_parser=parser)
    raw = [chat.start()]
    size = max(1, len(text) // pieces)
    for at in range(0, len(text), size):
        raw += chat.feed(text[at : at + size])
    raw += chat.finish("stop")
    return [json.loads(f.decode()[6:-2]) for f in raw[:-1]]


@pytest.mark.parametrize("parser", ["llama3_json", "mistral", "pythonic"])
def test_a_stream_collects_the_output_and_sends_the_parsed_calls(parser: str) -> None:
    frames = stream(parser, tool_call_format(parser).render(CALLS))
    deltas = [f["choices"][0]["delta"] for f in frames]
    heads = [d["tool_calls"][0] for d in deltas if d.get("tool_calls") and "name" in d["tool_calls"][0]["function"]]
    assert [h["function"]["name"] for h in heads] == ["get_weather", "get_weather"]
    arguments = {0: "", 1: ""}
    for d in deltas:
        for call in d.get("tool_calls", []):
            arguments[call["index"]] += call["function"].get("arguments", "")
    assert [json.loads(a) for a in arguments.values()] == [c.arguments for c in CALLS]
    assert not any(d.get("content") for d in deltas)
    assert frames[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_stream_without_calls_sends_the_text_once_generation_ends() -> None:
    text = "No call needed: it is sunny."
    frames = stream("pythonic", text)
    assert "".join(f["choices"][0]["delta"].get("content") or "" for f in frames) == text
    assert frames[-1]["choices"][0]["finish_reason"] == "stop"


# --- configuration ---


def test_unknown_parser_names_fail_at_startup_with_the_supported_ones() -> None:
    from api.settings import Settings

    supported = "hermes, llama3_json, mistral, pythonic"
    with pytest.raises(ValueError, match=supported):
        LocalEngine("no-model", load=False, tool_call_parser="qwen")
    with pytest.raises(ValueError, match=supported):
        LoopConfig(tool_call_parser="qwen")
    with pytest.raises(ValueError, match="tool_call_parser must be one of"):
        TrainConfig(tool_call_parser="qwen")
    with pytest.raises(ValueError, match=supported):
        Settings(tool_call_parser="qwen")
    assert Settings(tool_call_parser="pythonic").tool_call_parser == "pythonic"
    assert Settings().tool_call_parser == "hermes"
    assert LocalEngine("no-model", load=False, tool_call_parser="mistral").tool_call_format.name == "mistral"


def test_engine_serve_refuses_an_unknown_parser() -> None:
    import cli

    result = CliRunner().invoke(cli.app, ["engine", "serve", "--model", "nowhere", "--tool-call-parser", "json"])
    assert result.exit_code == 1 and "hermes, llama3_json, mistral, pythonic" in result.output
    assert "Traceback" not in result.output


def test_the_learner_uses_one_parser_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from learner.settings import LearnerSettings

    base = {"adapters_root": "a", "model_path": "m", "engine_urls": [], "database_url": "d", "work_dir": "w"}
    config = LearnerConfig(**base, tool_call_parser="mistral", train=TrainConfig())
    assert config.gate_loop.tool_call_parser == "mistral" and config.train is not None
    assert config.train.tool_call_parser == "mistral" and config.to_dict()["tool_call_parser"] == "mistral"
    with pytest.raises(ValueError, match=r"train\.tool_call_parser is 'pythonic'"):
        LearnerConfig(**base, tool_call_parser="mistral", train=TrainConfig(tool_call_parser="pythonic"))
    with pytest.raises(ValueError, match="supported"):
        LearnerConfig(**base, tool_call_parser="nope")
    assert LearnerConfig(**base).gate_loop.tool_call_parser == "hermes"
    monkeypatch.setenv("RRR_TOOL_CALL_PARSER", "llama3_json")
    settings = LearnerSettings(model="m", database_url="sqlite://", data_dir="rrr-test-unused")
    assert settings.learner_config().tool_call_parser == "llama3_json"


# --- end to end: the tiny tool model served with another parser ---


@pytest.fixture(scope="module")
def served(tiny_tool_model: ToolModel) -> Iterator[dict[str, LocalEngine]]:
    pytest.importorskip("torch")
    engines = {
        p: LocalEngine(str(tiny_tool_model.path), served_name="tiny-tool", tool_call_parser=p, num_threads=1)
        for p in ("llama3_json", "pythonic")
    }
    yield engines
    for engine in engines.values():
        asyncio.run(engine.aclose())


def test_the_local_engine_parses_with_its_configured_parser(
    served: dict[str, LocalEngine], tiny_tool_model: Any
) -> None:
    from engines.base import ChatRequest

    request = ChatRequest(messages=tiny_tool_model.prompt("call"), tools=tiny_tool_model.tools, max_tokens=40)
    # The model writes a hermes block: llama3_json reads the JSON object inside it (as vLLM's parser
    # would), pythonic sees no list of calls and returns the text.
    llama = asyncio.run(served["llama3_json"].chat(request))
    assert llama.finish_reason == "tool_calls"
    assert [json.loads(c["function"]["arguments"]) for c in llama.message["tool_calls"]] == [{"city": "Paris"}]
    pythonic = asyncio.run(served["pythonic"].chat(request))
    assert pythonic.message["content"] == tiny_tool_model.answers["call"] and "tool_calls" not in pythonic.message
