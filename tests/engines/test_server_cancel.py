"""R3 on the engine side: `rrr engine serve` stops working for clients that went away, and its queue is bounded.

A client that hangs up (rrr's engine client at its deadline, or any HTTP client) must not keep the one
generation slot busy: a running generation stops at its next token, a queued request leaves the queue
without generating, and with the queue full a further request is a 503 with `Retry-After` at once,
never a wait. Over real HTTP on loopback with the real local engine; the only change to it is
`SlowEngine`, which takes a few milliseconds per token and never picks EOS, so a long request runs
for a long time unless it is stopped, and which records what each generation did. Clients that hang
up are raw sockets that send a request and close, so the moment of the hang-up is exact.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from engines.base import ChatRequest, EngineRequestError, EngineTimeout
from engines.local import GenerationOutput, LocalEngine
from engines.server import create_app
from engines.vllm import VLLMEngine
from tests.engines.conformance.servers import REPO, launch_engine_server, serve_in_thread, wait_healthy, wait_started

HI = [{"role": "user", "content": "Tell me about the sea."}]
TOKEN_S = 0.01
LONG = 4000
"""Tokens of a long request (it fits the tiny model's context): at TOKEN_S each it runs for 40 s or more
unless it is stopped, far longer than anything here takes when the code is right."""
SHORT = {"messages": HI, "max_tokens": 2}
WAIT_S = 120.0
"""Generous bound on waiting for something that takes milliseconds when the code is right."""


@dataclass
class Run:
    """What one generation did."""

    tokens: int = 0
    outcome: str = ""
    first_token: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


class SlowEngine(LocalEngine):
    """The real engine, one token every TOKEN_S seconds and never EOS; `runs` records each generation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs: list[Run] = []
        self._current = threading.local()

    def generate(self, prompt_ids: Any, **kwargs: Any) -> GenerationOutput:
        run = Run()
        self.runs.append(run)
        self._current.run = run
        try:
            out = super().generate(prompt_ids, **kwargs)
            run.outcome = "finished"
            return out
        except EngineTimeout as exc:
            run.outcome = str(exc)
            raise
        finally:
            run.done.set()

    def _pick(self, logits: Any, prompt: list[int], generated: list[int], sampling: Any, gen: Any) -> int:
        logits[sorted(self._eos_ids)] = float("-inf")
        token = LocalEngine._pick(logits, prompt, generated, sampling, gen)
        run: Run = self._current.run
        run.tokens += 1
        run.first_token.set()
        time.sleep(TOKEN_S)
        return token


@pytest.fixture(scope="module")
def slow_engine(tiny_model_dir: Path) -> Iterator[SlowEngine]:
    engine = SlowEngine(str(tiny_model_dir), served_name="tiny", num_threads=1)
    yield engine
    asyncio.run(engine.aclose())


@pytest.fixture
def engine(slow_engine: SlowEngine) -> SlowEngine:
    slow_engine.runs.clear()
    return slow_engine


def hold(url: str, body: dict[str, Any]) -> socket.socket:
    """Send a chat request on a fresh connection and return the socket unread: close it to hang up."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


def long_body(*, stream: bool = False) -> dict[str, Any]:
    return {"messages": HI, "max_tokens": LONG, "temperature": 0, "stream": stream}


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of `/metrics` (0.0 when the series has no sample yet)."""
    wanted = {"engine": "0", "model_name": "tiny", **labels}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if not line.startswith(name + "{"):
            continue
        series, value = line.rsplit(" ", 1)
        found = dict(part.split("=", 1) for part in series[len(name) + 1 : -1].split(","))
        if {k: v.strip('"') for k, v in found.items()} == wanted:
            return float(value)
    return 0.0


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"not within {WAIT_S:g}s: {what}"
        time.sleep(0.05)


def first_run(engine: SlowEngine, index: int = 0) -> Run:
    eventually(lambda: len(engine.runs) > index, f"generation {index} started")
    run = engine.runs[index]
    assert run.first_token.wait(WAIT_S), "the long generation produced no token"
    return run


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_client_that_hangs_up_stops_its_generation_at_the_next_token(engine: SlowEngine, stream: bool) -> None:
    app = create_app(engine, served_model_name="tiny")
    with serve_in_thread(app) as url:
        client = hold(url, long_body(stream=stream))
        run = first_run(engine)
        client.close()
        assert run.done.wait(WAIT_S), "the generation never ended"
        assert run.outcome == "generation was cancelled"
        assert run.tokens < LONG, "the engine kept generating for a client that had gone"
        eventually(lambda: httpx.get(f"{url}/load", timeout=30).json() == {"server_load": 0}, "the slot was released")
        assert metric(url, "rrr_engine_requests_aborted_total", state="running") == 1.0
        short = httpx.post(f"{url}/v1/chat/completions", json=SHORT, timeout=WAIT_S)
        assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 2
        assert [r.outcome for r in engine.runs] == ["generation was cancelled", "finished"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_queued_request_whose_client_hangs_up_leaves_the_queue_without_generating(
    engine: SlowEngine, stream: bool
) -> None:
    app = create_app(engine, served_model_name="tiny")
    with serve_in_thread(app) as url:
        running = hold(url, long_body())
        first = first_run(engine)
        queued = hold(url, long_body(stream=stream))
        eventually(lambda: metric(url, "vllm:num_requests_waiting") == 1.0, "the second request is queued")
        queued.close()
        eventually(lambda: metric(url, "vllm:num_requests_waiting") == 0.0, "the queued request left the queue")
        assert len(engine.runs) == 1 and not first.done.is_set(), "it left without waiting for a turn"
        assert metric(url, "rrr_engine_requests_aborted_total", state="waiting") == 1.0
        running.close()
        assert first.done.wait(WAIT_S) and first.outcome == "generation was cancelled"
        eventually(lambda: httpx.get(f"{url}/load", timeout=30).json() == {"server_load": 0}, "all slots released")
        assert len(engine.runs) == 1, "the request that left never generated"
        assert metric(url, "rrr_engine_requests_aborted_total", state="running") == 1.0


def test_a_full_queue_is_a_fast_503_with_retry_after_in_vllms_error_shape(engine: SlowEngine) -> None:
    app = create_app(engine, served_model_name="tiny", max_waiting_requests=1)
    with serve_in_thread(app) as url:
        running = hold(url, long_body())
        first = first_run(engine)
        queued = hold(url, long_body())
        eventually(lambda: metric(url, "vllm:num_requests_waiting") == 1.0, "the second request is queued")
        for stream in (False, True):
            full = httpx.post(f"{url}/v1/chat/completions", json={**SHORT, "stream": stream}, timeout=30)
            assert full.status_code == 503, stream
            assert full.headers["retry-after"] == "1"
            error = full.json()["error"]
            assert (error["type"], error["param"], error["code"]) == ("ServiceUnavailableError", None, 503)
            assert "queue" in error["message"]

        async def through_rrrs_client() -> EngineRequestError:
            vllm = VLLMEngine(url, timeout=30)
            try:
                with pytest.raises(EngineRequestError) as info:
                    await vllm.chat(ChatRequest(messages=HI, max_tokens=2))
                return info.value
            finally:
                await vllm.aclose()

        refused = asyncio.run(through_rrrs_client())
        assert (refused.status, refused.type) == (503, "ServiceUnavailableError")
        assert not first.done.is_set(), "the 503s did not wait for the running generation"
        assert len(engine.runs) == 1, "a refused request never reaches the engine"
        assert metric(url, "rrr_engine_requests_rejected_total", reason="queue_full") == 3.0
        assert metric(url, "vllm:num_requests_waiting") == 1.0, "refusals take no place in the queue"
        queued.close()
        running.close()
        eventually(lambda: httpx.get(f"{url}/load", timeout=30).json() == {"server_load": 0}, "all slots released")
        assert httpx.post(f"{url}/v1/chat/completions", json=SHORT, timeout=WAIT_S).status_code == 200


def app_bound(app: Any) -> int:
    return int(app.state.server.config.max_waiting_requests)


def test_the_queue_bound_defaults_to_sixteen_and_zero_allows_only_the_running_request(engine: SlowEngine) -> None:
    assert app_bound(create_app(engine, served_model_name="tiny")) == 16
    app = create_app(engine, served_model_name="tiny", max_waiting_requests=0)
    assert app_bound(app) == 0
    with serve_in_thread(app) as url:
        running = hold(url, long_body())
        first = first_run(engine)
        assert httpx.post(f"{url}/v1/chat/completions", json=SHORT, timeout=30).status_code == 503
        running.close()
        assert first.done.wait(WAIT_S) and first.outcome == "generation was cancelled"


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--max-waiting-requests", "-1"], {}), ([], {"RRR_ENGINE_SERVE_MAX_WAITING": "-1"})],
    ids=["flag", "env"],
)
def test_serve_refuses_a_negative_queue_bound(args: list[str], env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cli", "engine", "serve", "--model", "x", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == ["error: --max-waiting-requests must be 0 or more (got -1)"]


@pytest.mark.slow
def test_engine_serve_answers_within_10s_of_health_after_sigstop_with_abandoned_long_requests(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """SIGSTOP with long requests running and queued, rrr's engine client gives up on all of them, SIGCONT:
    the engine drops them, so a normal request is answered within 10 s of `/health` being 200 again."""
    server = launch_engine_server(
        tiny_model_dir, tmp_path, args=["--served-model-name", "tiny", "--max-model-len", "32768"]
    )
    wait_started(server)
    try:

        async def scenario() -> float:
            impatient = VLLMEngine(server.url, timeout=6.0)
            patient = VLLMEngine(server.url, timeout=10.0)
            try:
                # the tiny model never ends greedily: each of these runs for minutes if nothing stops it
                long = ChatRequest(messages=HI, max_tokens=30000, temperature=0)
                calls = [asyncio.create_task(impatient.chat(long)) for _ in range(4)]
                deadline = time.monotonic() + 4.5
                loaded = False
                while not loaded and time.monotonic() < deadline:
                    loaded = await asyncio.to_thread(
                        lambda: (
                            metric(server.url, "vllm:num_requests_running") == 1.0
                            and metric(server.url, "vllm:num_requests_waiting") == 3.0
                        )
                    )
                assert loaded, "the long requests were not all in flight before the clients' deadline"
                os.kill(server.proc.pid, signal.SIGSTOP)
                try:
                    results = await asyncio.gather(*calls, return_exceptions=True)
                    assert all(isinstance(r, EngineTimeout) for r in results), results
                finally:
                    os.kill(server.proc.pid, signal.SIGCONT)
                await asyncio.to_thread(wait_healthy, server.url, timeout=30, proc=server.proc, log=server.log)
                healthy_at = time.monotonic()
                result = await patient.chat(ChatRequest(messages=HI, max_tokens=2))
                assert result.completion_tokens == 2
                return time.monotonic() - healthy_at
            finally:
                await impatient.aclose()
                await patient.aclose()

        assert asyncio.run(scenario()) < 10.0
        assert metric(server.url, "rrr_engine_requests_aborted_total", state="running") == 1.0
        assert metric(server.url, "rrr_engine_requests_aborted_total", state="waiting") == 3.0
    finally:
        server.stop()
