"""VLLMEngine against `rrr engine serve` (the same contract as vLLM) and against raw sockets that fail.

Chat through the real openai SDK; a real PEFT adapter loaded, selected, reloaded and unloaded; every
failure mapped to the engine boundary's exceptions: refused -> EngineUnavailable (fast), no answer ->
EngineTimeout at the deadline, dropped or unparsable -> EngineProtocolError, error bodies of every
shape -> EngineRequestError / AdapterError with status, type and param.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from engines.base import (
    AdapterError,
    ChatRequest,
    Engine,
    EngineProtocolError,
    EngineRequestError,
    EngineTimeout,
    EngineUnavailable,
)
from engines.vllm import MAX_BODY_DEPTH, VLLMEngine
from tests.conftest import ToolModel
from tests.engines.conformance.servers import (
    RawPeer,
    ServerProcess,
    copy_adapter,
    free_port,
    make_bad_adapter,
)
from tests.engines.conftest import BASE_NAME, LOCKED_KEY

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def with_engine(url: str, use: Any, **kwargs: Any) -> Any:
    engine = VLLMEngine(url, **kwargs)
    try:
        return await use(engine)
    finally:
        await engine.aclose()


def chat_once(url: str, request: ChatRequest, **kwargs: Any) -> Any:
    timeout = kwargs.pop("chat_timeout", None)
    return run(with_engine(url, lambda e: e.chat(request, timeout=timeout), **kwargs))


def test_it_implements_the_engine_protocol() -> None:
    assert isinstance(VLLMEngine("http://127.0.0.1:1"), Engine)


# --- chat against the engine server -------------------------------------------------------------------


def test_chat_returns_a_parsed_tool_call(engine_server: ServerProcess, tiny_tool_model: ToolModel) -> None:
    result = chat_once(
        engine_server.url + "/v1",
        ChatRequest(messages=tiny_tool_model.prompt("call"), tools=tiny_tool_model.tools, temperature=0, max_tokens=60),
    )
    assert result.finish_reason == "tool_calls" and result.model == BASE_NAME
    (call,) = result.message["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert result.prompt_tokens > 0 and result.completion_tokens > 0 and result.latency_ms > 0
    assert result.raw["object"] == "chat.completion"


def test_a_malformed_call_is_left_in_content_for_the_agent(
    engine_server: ServerProcess, tiny_tool_model: ToolModel
) -> None:
    result = chat_once(
        engine_server.url,
        ChatRequest(
            messages=tiny_tool_model.prompt("broken"), tools=tiny_tool_model.tools, temperature=0, max_tokens=60
        ),
    )
    assert "<tool_call>" in result.message["content"]
    assert "tool_calls" not in result.message and result.finish_reason == "stop"


def test_request_errors_keep_status_type_and_param(engine_server: ServerProcess) -> None:
    with pytest.raises(EngineRequestError) as info:
        chat_once(engine_server.url, ChatRequest(messages=[{"role": "user", "content": "hi"}], model="nope"))
    assert (info.value.status, info.value.type, info.value.param) == (404, "NotFoundError", "model")
    with pytest.raises(EngineRequestError) as info:
        chat_once(engine_server.url, ChatRequest(messages=[{"role": "user", "content": "hi"}], tools=[]))
    assert (info.value.status, info.value.type, info.value.param) == (400, "BadRequestError", "tools")


def test_health_and_models(engine_server: ServerProcess) -> None:
    async def use(engine: VLLMEngine) -> tuple[bool, list[dict[str, Any]], str]:
        return await engine.health(), await engine.list_models(), await engine.base_model()

    healthy, cards, base = run(with_engine(engine_server.url, use))
    assert healthy and base == BASE_NAME and cards[0]["id"] == BASE_NAME


# --- adapter admin ------------------------------------------------------------------------------------


def test_load_select_reload_and_unload_a_real_adapter(
    engine_server: ServerProcess, tiny_adapter_dir: Path, adapter_copy_root: Path
) -> None:
    path, other = str(tiny_adapter_dir), str(copy_adapter(tiny_adapter_dir, adapter_copy_root / "other"))
    hi = [{"role": "user", "content": "Tell me about Paris."}]

    async def use(engine: VLLMEngine) -> None:
        await engine.load_adapter("client-v1", path)
        card = next(c for c in await engine.list_models() if c["id"] == "client-v1")
        assert (card["root"], card["parent"]) == (path, BASE_NAME)
        await engine.load_adapter("client-v1", path)  # "already loaded" from the same root: idempotent
        with pytest.raises(AdapterError) as info:
            await engine.load_adapter("client-v1", other)  # same name, another root: a real conflict
        assert (info.value.status, info.value.type) == (400, "InvalidUserInput")
        base = await engine.chat(ChatRequest(messages=hi, temperature=0, max_tokens=12))
        tuned = await engine.chat(ChatRequest(messages=hi, model="client-v1", temperature=0, max_tokens=12))
        assert tuned.model == "client-v1" and base.model == BASE_NAME
        assert tuned.message["content"] != base.message["content"], "the adapter changes the output"
        await engine.unload_adapter("client-v1")
        assert all(c["id"] != "client-v1" for c in await engine.list_models())
        with pytest.raises(AdapterError) as info:
            await engine.unload_adapter("client-v1")
        assert (info.value.status, info.value.type) == (404, "NotFoundError")
        with pytest.raises(EngineRequestError) as gone:
            await engine.chat(ChatRequest(messages=hi, model="client-v1", max_tokens=2))
        assert gone.value.status == 404

    run(with_engine(engine_server.url, use))


def test_adapter_errors_carry_vllms_status_and_type(
    engine_server: ServerProcess, tiny_adapter_dir: Path, tmp_path: Path
) -> None:
    async def use(engine: VLLMEngine) -> list[tuple[int, str]]:
        seen = []
        for kind in ("no_dir", "rank_too_high"):
            with pytest.raises(AdapterError) as info:
                await engine.load_adapter(f"bad-{kind}", str(make_bad_adapter(kind, tiny_adapter_dir, tmp_path / kind)))
            seen.append((info.value.status, info.value.type))
        return seen

    assert run(with_engine(engine_server.url, use)) == [(404, "NotFoundError"), (500, "InternalServerError")]


def test_relative_adapter_paths_are_refused_before_any_request() -> None:
    with pytest.raises(ValueError, match="absolute"):
        run(with_engine("http://127.0.0.1:1", lambda e: e.load_adapter("x", "adapters/x")))


def test_runtime_updating_off_is_explained(locked_engine_server: ServerProcess, tiny_adapter_dir: Path) -> None:
    with pytest.raises(AdapterError) as info:
        run(
            with_engine(
                locked_engine_server.url, lambda e: e.load_adapter("x", str(tiny_adapter_dir)), api_key=LOCKED_KEY
            )
        )
    assert info.value.status == 404 and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in info.value.message


def test_a_missing_api_key_is_a_401_request_error(locked_engine_server: ServerProcess) -> None:
    with pytest.raises(EngineRequestError) as info:
        chat_once(locked_engine_server.url, ChatRequest(messages=[{"role": "user", "content": "hi"}]))
    assert (info.value.status, info.value.message) == (401, "Unauthorized")


# --- transport failures -------------------------------------------------------------------------------

HI = ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_connection_refused_is_unavailable_fast() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(EngineUnavailable):
        chat_once(url, HI)
    assert time.monotonic() - started < 2.5
    assert run(with_engine(url, lambda e: e.health())) is False


def test_a_peer_that_never_answers_times_out_at_the_deadline() -> None:
    with RawPeer("hang") as peer:
        started = time.monotonic()
        with pytest.raises(EngineTimeout):
            chat_once(peer.url, HI, chat_timeout=1.0)
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 2.5, elapsed
        assert run(with_engine(peer.url, lambda e: e.health(), health_timeout=0.5)) is False


def test_a_dropped_connection_is_a_protocol_error() -> None:
    with RawPeer("drop") as peer, pytest.raises(EngineProtocolError):
        chat_once(peer.url, HI)


DEEP = b"[" * 100_000 + b"]" * 100_000
_CHOICE = b'{"id":"x","object":"chat.completion","choices":[{"index":0,"finish_reason":"stop","message":'
UNREADABLE_BODIES = {
    "not_json": b"not json",
    "no_choices": b'{"id": "x", "object": "chat.completion"}',
    "an_array": b"[1, 2]",
    "nested_100000_deep": b'{"a":' + DEEP + b"}",
    "deep_in_content": _CHOICE + b'{"role":"assistant","content":' + DEEP + b"}}]}",
    "deep_in_tool_calls": _CHOICE + b'{"role":"assistant","content":null,"tool_calls":' + DEEP + b"}}]}",
    # the body, choices, the choice and the message are 4 levels, the content the rest
    "nested_one_level_past_the_bound": _CHOICE
    + b'{"role":"assistant","content":'
    + b"[" * (MAX_BODY_DEPTH - 3)
    + b"]" * (MAX_BODY_DEPTH - 3)
    + b"}}]}",
    "invalid_utf8": _CHOICE + b'{"role":"assistant","content":"caf\xe9 \xff"}}]}',
}


@pytest.mark.parametrize("body", list(UNREADABLE_BODIES.values()), ids=list(UNREADABLE_BODIES))
def test_a_body_that_is_not_a_completion_is_a_protocol_error(body: bytes) -> None:
    with RawPeer("reply", body=body) as peer, pytest.raises(EngineProtocolError):
        chat_once(peer.url, HI)


def test_a_malformed_but_readable_message_is_returned_as_is_for_the_agent_to_judge() -> None:
    deepest = b"[" * (MAX_BODY_DEPTH - 4) + b"]" * (MAX_BODY_DEPTH - 4)  # the body exactly MAX_BODY_DEPTH deep
    message = b'{"role":"assistant","content":' + deepest + b',"tool_calls":"get_weather()"}'
    with RawPeer("reply", body=_CHOICE + message + b"}]}") as peer:
        result = chat_once(peer.url, HI)
    assert result.message["tool_calls"] == "get_weather()"  # not validated here: the agent's verdict names it
    assert isinstance(result.message["content"], list) and result.finish_reason == "stop"


def test_models_with_an_unreadable_body_is_a_protocol_error() -> None:
    with RawPeer("reply", body=b'{"data":' + DEEP + b"}") as peer, pytest.raises(EngineProtocolError):
        run(with_engine(peer.url, lambda e: e.list_models()))


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            {"object": "error", "message": "flat", "type": "BadRequestError", "param": "tools", "code": 400},
            (400, "flat", "BadRequestError", "tools"),
        ),
        (404, {"detail": "Not Found"}, (404, "Not Found", "", None)),
        (
            500,
            {"error": {"message": "boom", "type": "InternalServerError", "param": None, "code": 500}},
            (500, "boom", "InternalServerError", None),
        ),
        (401, {"error": "Unauthorized"}, (401, "Unauthorized", "", None)),
    ],
)
def test_every_error_body_shape_is_read(
    status: int, body: dict[str, Any], expected: tuple[int, str, str, str | None]
) -> None:
    with (
        RawPeer("reply", status=status, body=json.dumps(body).encode()) as peer,
        pytest.raises(EngineRequestError) as info,
    ):
        chat_once(peer.url, HI)
    assert (info.value.status, info.value.message, info.value.type, info.value.param) == expected


def test_an_empty_tool_calls_list_reads_as_none() -> None:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok", "tool_calls": []}}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    with RawPeer("reply", body=json.dumps(body).encode()) as peer:
        result = chat_once(peer.url, HI)
    assert "tool_calls" not in result.message and result.message["content"] == "ok"
    assert (result.prompt_tokens, result.completion_tokens, result.model) == (3, 1, "m")


def test_load_accepts_a_plain_text_200_without_content_type() -> None:
    with RawPeer("reply", body=b"Success: LoRA adapter 'x' added successfully.", content_type="") as peer:
        assert run(with_engine(peer.url, lambda e: e.load_adapter("x", "/abs/x"))) is None  # no error raised
    [head] = peer.requests
    assert head.startswith(b"POST /v1/load_lora_adapter ")
