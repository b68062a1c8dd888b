"""LocalEngine end to end on tiny models: chat with tools through the real chat template, hermes
parsing and vLLM's response shape; sampling; adapters (load, route, unload, validation); concurrency."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
pytest.importorskip("torch")
pytest.importorskip("peft")

from openai.types.chat import ChatCompletion  # noqa: E402

from engines.base import (  # noqa: E402
    AdapterError,
    ChatRequest,
    ChatResult,
    Engine,
    EngineRequestError,
    EngineTimeout,
)
from engines.local import LocalEngine  # noqa: E402
from learner.tiny import save_tiny_lora  # noqa: E402

if TYPE_CHECKING:
    from tests.conftest import ToolModel

T = TypeVar("T")
TOOL_ID = re.compile(r"^chatcmpl-tool-[0-9a-f]{16}$")
HI = [{"role": "user", "content": "Tell me something about Paris."}]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models decode fastest on one thread (and CI machines are shared); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tool_engine(tiny_tool_model: ToolModel) -> Iterator[LocalEngine]:
    engine = LocalEngine(str(tiny_tool_model.path), served_name="tiny-tool")
    yield engine
    run(engine.aclose())


@pytest.fixture(scope="module")
def second_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lora(tiny_model_dir, tmp_path_factory.mktemp("lora2") / "adapter", seed=2)


@pytest.fixture()
def engine(tiny_model_dir: Path) -> Iterator[LocalEngine]:
    engine = LocalEngine(str(tiny_model_dir), served_name="tiny")
    yield engine
    run(engine.aclose())


def chat(
    engine: LocalEngine, key_or_messages: str | list[dict[str, Any]], spec: ToolModel | None = None, **kw: Any
) -> ChatResult:
    if isinstance(key_or_messages, str):
        assert spec is not None
        kw.setdefault("tools", spec.tools)
        messages = spec.prompt(key_or_messages)
    else:
        messages = key_or_messages
    kw.setdefault("max_tokens", 40)
    result = run(engine.chat(ChatRequest(messages=messages, **kw)))
    ChatCompletion.model_validate(result.raw)  # every answer is a valid OpenAI response
    return result


# --- tool calling on a model whose answers are known ---


def test_tool_call_answer(tool_engine: LocalEngine, tiny_tool_model: ToolModel) -> None:
    assert isinstance(tool_engine, Engine)
    result = chat(tool_engine, "call", tiny_tool_model)
    assert result.finish_reason == "tool_calls" and result.message["content"] is None
    [call] = result.message["tool_calls"]
    assert TOOL_ID.match(call["id"])
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert result.model == "tiny-tool" and result.raw["model"] == "tiny-tool"
    prompt = tool_engine.encode(tool_engine.render_prompt(tiny_tool_model.prompt("call"), tiny_tool_model.tools))
    answer = tool_engine.encode(tiny_tool_model.answers["call"])
    assert result.prompt_tokens == len(prompt) and result.completion_tokens == len(answer) + 1  # + <|im_end|>
    assert result.raw["usage"]["total_tokens"] == result.prompt_tokens + result.completion_tokens


def test_malformed_call_comes_back_as_raw_content(tool_engine: LocalEngine, tiny_tool_model: ToolModel) -> None:
    result = chat(tool_engine, "broken", tiny_tool_model)
    assert result.message["content"] == tiny_tool_model.answers["broken"]
    assert "tool_calls" not in result.message and result.finish_reason == "stop"


def test_plain_text_answer(tool_engine: LocalEngine, tiny_tool_model: ToolModel) -> None:
    result = chat(tool_engine, "hello", tiny_tool_model)
    assert result.message["content"] == "Hello there, friend." and result.finish_reason == "stop"
    assert "tool_calls" not in result.message and result.raw["choices"][0]["stop_reason"] is None


def test_truncated_call_is_length_with_raw_content(tool_engine: LocalEngine, tiny_tool_model: ToolModel) -> None:
    result = chat(tool_engine, "call", tiny_tool_model, max_tokens=5)
    assert result.finish_reason == "length" and result.completion_tokens == 5
    assert tiny_tool_model.answers["call"].startswith(result.message["content"])
    assert "tool_calls" not in result.message


def test_named_and_none_tool_choice(tool_engine: LocalEngine, tiny_tool_model: ToolModel) -> None:
    named = chat(
        tool_engine, "call", tiny_tool_model, tool_choice={"type": "function", "function": {"name": "get_weather"}}
    )
    assert named.finish_reason == "stop" and named.message["content"] == ""
    assert named.message["tool_calls"][0]["function"]["name"] == "get_weather"
    none = chat(tool_engine, "call", tiny_tool_model, tool_choice="none")
    assert none.message["content"] == tiny_tool_model.answers["call"] and "tool_calls" not in none.message
    assert none.finish_reason == "stop"


def test_stop_string_ends_the_answer(tool_engine: LocalEngine, tiny_tool_model: ToolModel) -> None:
    result = chat(tool_engine, "hello", tiny_tool_model, stop=[","])
    assert result.message["content"] == "Hello there" and result.finish_reason == "stop"
    assert result.raw["choices"][0]["stop_reason"] == ","


def test_history_with_string_arguments_and_tool_results_renders(tool_engine: LocalEngine) -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "5 C"}]},
    ]
    text = tool_engine.render_prompt(messages, [{"type": "function", "function": {"name": "get_weather"}}])
    assert '{"name": "get_weather", "arguments": {"city": "Oslo"}}' in text
    assert "<tool_response>\n5 C\n</tool_response>" in text and text.endswith("<|im_start|>assistant\n")


def test_generate_and_streamed_deltas(tool_engine: LocalEngine, tiny_tool_model: ToolModel) -> None:
    prompt = tool_engine.encode(tool_engine.render_prompt(tiny_tool_model.prompt("call"), tiny_tool_model.tools))
    deltas: list[str] = []
    out = tool_engine.generate(prompt, max_tokens=60, temperature=0, on_text=deltas.append)
    assert "".join(deltas) == out.text == tiny_tool_model.answers["call"] and len(deltas) > 3
    assert (out.finish_reason, out.prompt_tokens) == ("stop", len(prompt)) and out.completion_tokens > 3


# --- request errors ---


def test_unknown_model_is_404(tool_engine: LocalEngine) -> None:
    with pytest.raises(EngineRequestError) as info:
        chat(tool_engine, HI, model="nope")
    err = info.value
    assert (err.status, err.type, err.param) == (404, "NotFoundError", "model")
    assert err.message == "The model `nope` does not exist. Valid aliases: tiny-tool."


def test_prompt_longer_than_the_context_is_400(tiny_tool_model: ToolModel) -> None:
    engine = LocalEngine(str(tiny_tool_model.path), max_model_len=16)
    with pytest.raises(EngineRequestError) as info:
        chat(engine, HI)
    assert info.value.status == 400 and info.value.param == "input_tokens"
    assert "maximum context length is 16 tokens" in info.value.message


def test_deadline_and_cancel_stop_generation(tool_engine: LocalEngine) -> None:
    with pytest.raises(EngineTimeout):
        run(tool_engine.chat(ChatRequest(messages=HI, max_tokens=500), timeout=1e-6))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(EngineTimeout):
        tool_engine.generate(tool_engine.encode("hello"), max_tokens=5, cancel=cancel)
    assert chat(tool_engine, HI, max_tokens=3).completion_tokens == 3  # the lock was released


# --- sampling ---


def test_seeded_sampling_is_reproducible(engine: LocalEngine) -> None:
    def sample(seed: int) -> str:
        return str(chat(engine, HI, temperature=1.0, top_p=0.95, seed=seed, max_tokens=24).message["content"])

    first = sample(7)
    assert sample(7) == first
    assert len({first, sample(8), sample(9)}) > 1
    greedy = chat(engine, HI, temperature=0, max_tokens=24).message["content"]
    assert chat(engine, HI, max_tokens=24).message["content"] == greedy  # generation config: greedy


# --- adapters ---


def test_adapter_changes_output_and_unload_restores_base(engine: LocalEngine, tiny_adapter_dir: Path) -> None:
    base = chat(engine, HI, temperature=0).message["content"]
    run(engine.load_adapter("tiny-v1", str(tiny_adapter_dir)))
    tuned = chat(engine, HI, model="tiny-v1", temperature=0)
    assert tuned.model == "tiny-v1" and tuned.message["content"] != base
    assert chat(engine, HI, model="tiny", temperature=0).message["content"] == base
    assert chat(engine, HI, temperature=0).message["content"] == base
    cards = run(engine.list_models())
    assert [(c["id"], c["root"], c["parent"]) for c in cards] == [
        ("tiny", engine.model_path, None),
        ("tiny-v1", str(tiny_adapter_dir), "tiny"),
    ]
    assert cards[0]["max_model_len"] == engine.max_model_len and cards[1]["max_model_len"] is None
    run(engine.unload_adapter("tiny-v1"))
    assert [c["id"] for c in run(engine.list_models())] == ["tiny"]
    assert chat(engine, HI, temperature=0).message["content"] == base
    with pytest.raises(EngineRequestError) as info:
        chat(engine, HI, model="tiny-v1")
    assert info.value.status == 404
    with pytest.raises(AdapterError) as unload:
        run(engine.unload_adapter("tiny-v1"))
    assert (unload.value.status, unload.value.message) == (404, "The lora adapter 'tiny-v1' cannot be found.")


def test_adapter_admin_errors(engine: LocalEngine, tiny_adapter_dir: Path, tmp_path: Path) -> None:
    def error(name: str, path: str) -> AdapterError:
        with pytest.raises(AdapterError) as info:
            run(engine.load_adapter(name, path))
        return info.value

    assert error("", str(tiny_adapter_dir)).status == 400
    assert "conflicts with a served base model" in error("tiny", str(tiny_adapter_dir)).message
    missing = error("v9", str(tmp_path / "missing"))
    assert (missing.status, missing.type) == (404, "NotFoundError")
    run(engine.load_adapter("v1", str(tiny_adapter_dir)))
    dup = error("v1", str(tiny_adapter_dir))
    assert (dup.status, dup.type) == (400, "InvalidUserInput") and "already been loaded" in dup.message
    small = LocalEngine(engine.model_path, served_name="tiny", max_lora_rank=4)
    with pytest.raises(AdapterError) as info:
        run(small.load_adapter("v1", str(tiny_adapter_dir)))
    assert info.value.status == 500 and "LoRA rank 8 is greater than max_lora_rank 4." in info.value.message
    # An adapter for another architecture fails in PEFT and leaves the engine as it was.
    wrong = save_tiny_lora(engine.model_path, tmp_path / "wrong", seed=3)
    _corrupt_shapes(wrong / "adapter_model.safetensors")
    before = chat(engine, HI, model="v1", temperature=0).message["content"]
    bad = error("v2", str(wrong))
    assert (bad.status, bad.type) == (500, "InternalServerError")
    assert [c["id"] for c in run(engine.list_models())] == ["tiny", "v1"]
    assert chat(engine, HI, model="v1", temperature=0).message["content"] == before


def _corrupt_shapes(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    save_file({k: v[:, :-1].contiguous() if "lora_A" in k else v for k, v in tensors.items()}, path)


def test_in_place_reload_keeps_position_and_swaps_weights(
    engine: LocalEngine, tiny_adapter_dir: Path, second_adapter_dir: Path
) -> None:
    run(engine.load_adapter("a", str(tiny_adapter_dir)))
    run(engine.load_adapter("b", str(tiny_adapter_dir)))
    first = chat(engine, HI, model="a", temperature=0).message["content"]
    run(engine.load_adapter("a", str(second_adapter_dir), load_inplace=True))
    assert [c["id"] for c in run(engine.list_models())] == ["tiny", "a", "b"]
    assert run(engine.list_models())[1]["root"] == str(second_adapter_dir)
    assert chat(engine, HI, model="a", temperature=0).message["content"] != first
    assert chat(engine, HI, model="b", temperature=0).message["content"] == first


def test_concurrent_chats_on_two_adapters_match_sequential(
    engine: LocalEngine, tiny_adapter_dir: Path, second_adapter_dir: Path
) -> None:
    run(engine.load_adapter("one", str(tiny_adapter_dir)))
    run(engine.load_adapter("two.v2", str(second_adapter_dir)))
    models = ["one", "two.v2", None, "two.v2", "one", None]
    requests = [ChatRequest(messages=HI, model=m, temperature=0, max_tokens=12) for m in models]

    async def sequential() -> list[str]:
        return [str((await engine.chat(r)).message["content"]) for r in requests]

    async def concurrent() -> list[str]:
        results = await asyncio.gather(*(engine.chat(r) for r in requests))
        return [str(r.message["content"]) for r in results]

    expected = run(sequential())
    assert len(set(expected[:3])) == 3  # three different models answer differently
    assert run(concurrent()) == expected
