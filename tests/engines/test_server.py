"""The engine server in-process: its streaming frames, error text, adapter lifetimes, metrics and the
behaviour switches of contract §8 ("SHOULD"), over real HTTP on loopback with the real local engine.

Generation is only replaced where a failure or a pause must happen at a known moment: subclasses of
LocalEngine that pause before generating or fail half-way, everything else is the real engine.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from engines.base import ChatRequest, EngineError, EngineTimeout
from engines.local import GenerationOutput, LocalEngine
from engines.server import EngineServer, ServeConfig, create_app
from engines.server.app import LoadLoRABody, UnloadLoRABody
from engines.server.errors import sanitize_message, validation_message
from engines.server.stream import ChatStream, split_tool_calls
from engines.vllm import VLLMEngine
from tests.engines.conformance.servers import REPO, serve_in_thread

T = TypeVar("T")
HI = [{"role": "user", "content": "Tell me about the sea."}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def frames_of(raw: list[bytes]) -> list[Any]:
    out = []
    for frame in raw:
        text = frame.decode()
        assert text.startswith("data: ") and text.endswith("\n\n")
        payload = text[6:-2]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


# --- streaming frames (pure) --------------------------------------------------------------------------


def stream_text(text: str, *, pieces: int = 1, **options: Any) -> list[Any]:
    chat = ChatStream("m", parse_tools=options.pop("parse_tools", True), **options)
    raw = [chat.start()]
    size = max(1, len(text) // pieces)
    for at in range(0, len(text), size):
        raw += chat.feed(text[at : at + size])
    raw += chat.finish("stop", prompt_tokens=3, completion_tokens=4)
    return frames_of(raw)


@pytest.mark.parametrize("pieces", [1, 7, 1000])
def test_text_before_a_call_streams_and_the_tag_never_leaks(pieces: int) -> None:
    frames = stream_text("Let me check.\n" + CALL, pieces=pieces)
    deltas = [f["choices"][0]["delta"] for f in frames[:-1]]
    content = "".join(d.get("content") or "" for d in deltas[1:])
    assert content == "Let me check.\n"
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["function"] == {"name": "get_weather"}
    assert json.loads("".join(c["function"]["arguments"] for c in calls[1:])) == {"city": "Paris"}
    assert frames[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_possible_tag_prefix_is_held_back_then_released_as_text() -> None:
    chat = ChatStream("m", parse_tools=True)
    assert [f["choices"][0]["delta"] for f in frames_of(chat.feed("a <tool"))] == [{"content": "a "}]
    assert [f["choices"][0]["delta"] for f in frames_of(chat.feed("box> b"))] == [{"content": "<toolbox> b"}]


def test_streaming_does_not_validate_arguments_and_drops_nameless_blocks() -> None:
    calls = split_tool_calls(
        '<tool_call>\n{"name": "f", "arguments": {"a": }\n</tool_call>'
        '<tool_call>{"arguments": {}}</tool_call><tool_call>{"name": "g", "arguments": {"b": 1}}'
    )
    assert calls == [("f", '{"a": }'), ("g", '{"b": 1}')]
    assert split_tool_calls('<tool_call>{"name": "bad\\q", "arguments": {') == [("bad\\q", "{")]


def test_parallel_off_keeps_the_first_call_and_a_named_choice_finishes_with_stop() -> None:
    frames = stream_text(CALL + CALL.replace("Paris", "Oslo"), parallel_tool_calls=False, named_tool=True)
    heads = [f for f in frames[:-1] if f["choices"][0]["delta"].get("tool_calls", [{}])[0].get("id")]
    assert len(heads) == 1
    assert frames[-2]["choices"][0]["finish_reason"] == "stop"


def test_without_tool_parsing_tags_are_plain_text_and_usage_comes_last() -> None:
    frames = stream_text(CALL, parse_tools=False, include_usage=True)
    assert "".join(f["choices"][0]["delta"].get("content") or "" for f in frames[1:-3]) == CALL
    assert frames[-2]["choices"] == [] and frames[-2]["usage"] == {
        "prompt_tokens": 3,
        "total_tokens": 7,
        "completion_tokens": 4,
    }
    assert frames[-1] == "[DONE]"


# --- error text ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("No adapter found for /tmp/adapters/v3", "No adapter found for <path>"),
        ("No adapter found for /data/adapters/v3", "No adapter found for /data/adapters/v3"),
        ("bad file /data/x/adapter_config.json here", "bad file <path> here"),
        ('boom\n  File "/srv/app/x.py", line 3, in f\n    raise X', "boom"),
        ("<object at 0x7f00aa>", "<object>"),
    ],
)
def test_messages_are_sanitised_like_vllms(raw: str, clean: str) -> None:
    assert sanitize_message(raw) == clean


def test_validation_messages_come_from_the_errors_not_from_str() -> None:
    message, param = validation_message(
        [
            {
                "type": "missing",
                "loc": ("body", "function-wrap[x()]", "lora_path"),
                "msg": "Field required",
                "input": {"a": 1},
            }
        ]
    )
    assert param == "body.lora_path"
    assert message == (
        "1 validation error:\n  {'type': 'missing', 'loc': 'body.lora_path', "
        "'msg': 'Field required', 'input': '<dict of 1 items>'}"
    )
    assert validation_message(["Unsupported Media Type"]) == ("1 validation error:\n  Unsupported Media Type", None)


# --- in-process servers -------------------------------------------------------------------------------


class GatedEngine(LocalEngine):
    """The real engine, except that each generation waits for `gate` before it starts."""

    gate = threading.Event()

    def generate(self, prompt_ids: Any, **kwargs: Any) -> GenerationOutput:
        assert self.gate.wait(60)
        return super().generate(prompt_ids, **kwargs)


class FailingEngine(LocalEngine):
    """The real engine, except that generation fails: after some text (`fail_after_text`) or at once."""

    fail_after_text = True

    def generate(self, prompt_ids: Any, **kwargs: Any) -> GenerationOutput:
        if self.fail_after_text and kwargs.get("on_text"):
            kwargs["on_text"]("partial ")
        raise EngineError("the device fell over at /tmp/rrr/engine.bin")


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[LocalEngine]:
    engine = LocalEngine(str(tiny_model_dir), served_name="tiny", num_threads=1)
    yield engine
    run(engine.aclose())


def make_server(engine: LocalEngine, **options: Any) -> EngineServer:
    config = ServeConfig(
        served_model_names=["tiny"], model="tiny-model", enable_lora=True, allow_runtime_lora_updating=True, **options
    )
    return EngineServer(engine, config)


def test_registry_only_unload_drops_the_engine_copy_when_the_last_request_ends(
    engine: LocalEngine, tiny_adapter_dir: Path
) -> None:
    async def scenario() -> None:
        server = make_server(engine)
        await server.load_lora(LoadLoRABody(lora_name="pinned", lora_path=str(tiny_adapter_dir)))
        route = server.route("pinned")  # an in-flight request holds the adapter
        await server.unload_lora(UnloadLoRABody(lora_name="pinned"))
        assert "pinned" not in [c["id"] for c in server.models()["data"]]
        engine_ids = [c["id"] for c in await engine.list_models()]
        assert route.engine_key in engine_ids, "in-flight requests keep their adapter"
        server.unpin(route)
        await asyncio.gather(*server._tasks)
        assert route.engine_key not in [c["id"] for c in await engine.list_models()], "then it is dropped"

    run(scenario())


def test_in_place_reload_keeps_id_and_swaps_the_engine_copy(engine: LocalEngine, tiny_adapter_dir: Path) -> None:
    async def scenario() -> None:
        server = make_server(engine)
        await server.load_lora(LoadLoRABody(lora_name="a", lora_path=str(tiny_adapter_dir)))
        await server.load_lora(LoadLoRABody(lora_name="b", lora_path=str(tiny_adapter_dir)))
        first = server.registry.get("a")
        assert first is not None
        old_id, old_key = first.int_id, first.engine_key
        await server.load_lora(LoadLoRABody(lora_name="a", lora_path=str(tiny_adapter_dir) + "/", load_inplace=True))
        await asyncio.gather(*server._tasks)
        entry = server.registry.get("a")
        assert entry is not None and entry.int_id == old_id and entry.engine_key != old_key
        assert [e.name for e in server.registry.entries()] == ["a", "b"]
        keys = [c["id"] for c in await engine.list_models()]
        assert entry.engine_key in keys and old_key not in keys
        for name in ("a", "b"):
            key = server.registry.get(name).engine_key  # type: ignore[union-attr]
            await engine.unload_adapter(key)

    run(scenario())


def test_legacy_errors_and_empty_tool_calls_switches(engine: LocalEngine) -> None:
    app = create_app(engine, served_model_name="tiny", legacy_errors=True, always_tool_calls=True)
    with serve_in_thread(app) as url:
        unknown = httpx.post(f"{url}/v1/chat/completions", json={"messages": HI, "model": "nope"}, timeout=60)
        assert unknown.status_code == 404
        body = unknown.json()
        assert body["object"] == "error" and (body["type"], body["param"], body["code"]) == (
            "NotFoundError",
            "model",
            404,
        )
        ok = httpx.post(f"{url}/v1/chat/completions", json={"messages": HI, "max_tokens": 3}, timeout=60).json()
        assert ok["choices"][0]["message"]["tool_calls"] == []

        async def client_view() -> Any:
            vllm = VLLMEngine(url)
            try:
                with pytest.raises(EngineError) as info:
                    await vllm.chat(ChatRequest(messages=HI, model="nope"))
                result = await vllm.chat(ChatRequest(messages=HI, max_tokens=3))
                return info.value, result
            finally:
                await vllm.aclose()

        err, result = run(client_view())
        assert (err.status, err.type, err.param) == (404, "NotFoundError", "model")
        assert "tool_calls" not in result.message, "[] and missing read the same"


def test_injected_add_lora_latency_meets_the_clients_deadline(engine: LocalEngine, tiny_adapter_dir: Path) -> None:
    app = create_app(
        engine, served_model_name="tiny", enable_lora=True, allow_runtime_lora_updating=True, add_lora_delay_s=1.5
    )
    with serve_in_thread(app) as url:

        async def impatient() -> None:
            vllm = VLLMEngine(url, admin_timeout=0.5)
            try:
                await vllm.load_adapter("slow", str(tiny_adapter_dir))
            finally:
                await vllm.aclose()

        started = time.monotonic()
        with pytest.raises(EngineTimeout):
            run(impatient())
        assert time.monotonic() - started < 1.4
        started = time.monotonic()
        slow = httpx.post(
            f"{url}/v1/load_lora_adapter", json={"lora_name": "slow2", "lora_path": str(tiny_adapter_dir)}, timeout=30
        )
        assert slow.status_code == 200 and time.monotonic() - started >= 1.5


def test_without_enable_lora_loads_fail_in_the_engine(engine: LocalEngine, tiny_adapter_dir: Path) -> None:
    app = create_app(engine, served_model_name="tiny", enable_lora=False, allow_runtime_lora_updating=True)
    with serve_in_thread(app) as url:
        response = httpx.post(
            f"{url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tiny_adapter_dir)}, timeout=30
        )
        assert response.status_code == 500
        assert (
            response.json()["error"]["message"]
            == "Call to add_lora method failed: LoRA is not enabled. Use --enable-lora to enable LoRA."
        )


def test_a_failure_after_the_200_is_an_error_frame_then_done(tiny_model_dir: Path) -> None:
    failing = FailingEngine(str(tiny_model_dir), served_name="tiny", num_threads=1)
    with serve_in_thread(create_app(failing, served_model_name="tiny")) as url:
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json={"messages": HI, "stream": True}, timeout=60
        ) as response:
            assert response.status_code == 200
            lines = [line[6:] for line in response.iter_lines() if line]
        assert json.loads(lines[0])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert json.loads(lines[1])["choices"][0]["delta"] == {"content": "partial "}
        err = json.loads(lines[2])["error"]
        assert (err["type"], err["code"]) == ("InternalServerError", 500)
        assert "/tmp/" not in err["message"] and "<path>" in err["message"]
        assert lines[3:] == ["[DONE]"]

        failing.fail_after_text = False  # nothing was sent yet: a plain JSON error with its status
        early = httpx.post(f"{url}/v1/chat/completions", json={"messages": HI, "stream": True}, timeout=60)
        assert early.status_code == 500 and early.json()["error"]["type"] == "InternalServerError"
    run(failing.aclose())


def test_metrics_count_running_and_waiting_requests_per_adapter(tiny_model_dir: Path, tiny_adapter_dir: Path) -> None:
    gated = GatedEngine(str(tiny_model_dir), served_name="tiny", num_threads=1)
    GatedEngine.gate.clear()
    app = create_app(gated, served_model_name="tiny", enable_lora=True, allow_runtime_lora_updating=True)
    with serve_in_thread(app) as url:
        assert (
            httpx.post(
                f"{url}/v1/load_lora_adapter", json={"lora_name": "m1", "lora_path": str(tiny_adapter_dir)}, timeout=30
            ).status_code
            == 200
        )
        results: list[int] = []
        workers = [
            threading.Thread(
                target=lambda m=m: results.append(
                    httpx.post(
                        f"{url}/v1/chat/completions", json={"messages": HI, "max_tokens": 2, **m}, timeout=60
                    ).status_code
                )
            )
            for m in ({"model": "m1"}, {})
        ]
        workers[0].start()
        time.sleep(0.3)
        workers[1].start()
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            text = httpx.get(f"{url}/metrics", timeout=10).text
            if 'vllm:num_requests_waiting{engine="0",model_name="tiny"} 1.0' in text:
                break
            time.sleep(0.05)
        assert 'vllm:num_requests_running{engine="0",model_name="tiny"} 1.0' in text
        assert 'vllm:num_requests_waiting{engine="0",model_name="tiny"} 1.0' in text
        assert 'running_lora_adapters="m1"' in text
        GatedEngine.gate.set()
        for worker in workers:
            worker.join(60)
        assert results == [200, 200]
        after = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'vllm:num_requests_running{engine="0",model_name="tiny"} 0.0' in after
        assert 'vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny"} 2.0' in after
    run(gated.aclose())


def test_an_engine_that_cannot_serve_is_503_on_health_and_500_on_chat(tiny_model_dir: Path) -> None:
    unloaded = LocalEngine(str(tiny_model_dir), served_name="tiny", load=False)
    with serve_in_thread(create_app(unloaded), ready=False) as url:
        for method, path in (("GET", "/health"), ("GET", "/ping"), ("POST", "/ping")):
            response = httpx.request(method, url + path, timeout=10)
            assert (response.status_code, response.content) == (503, b""), path
        chat = httpx.post(f"{url}/v1/chat/completions", json={"messages": HI}, timeout=10)
        assert chat.status_code == 500 and chat.json()["error"]["type"] == "InternalServerError"


# --- the command line ---------------------------------------------------------------------------------


def test_serve_refuses_a_rank_vllm_does_not_allow() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cli", "engine", "serve", "--model", "x", "--max-lora-rank", "7"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: --max-lora-rank must be one of 1, 8, 16, 32, 64, 128, 256, 320, 512 (got 7)"
    ]
