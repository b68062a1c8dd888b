"""Hot-swap under load (R19): `rrr serve` in front of `rrr engine serve`, a client sending requests
non-stop while the publisher publishes v1, v2, rolls back to v1 and tries a broken adapter.

Everything is a real process or real HTTP: the engine server runs the tiny model with runtime LoRA
updating on, `rrr serve` runs as `python -m cli serve` on a SQLite database, the publisher talks to
the engine through `VLLMEngine` exactly as the learner does. Promised: no request fails (no HTTP
error, no engine error inside the reflect/retry loop), every episode records the one adapter that
served it, and the broken adapter is rejected without ever becoming active or reaching a request.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters import serving
from engines.pool import EnginePool
from engines.vllm import VLLMEngine
from store import repos
from store.db import make_engine, make_session_factory, upgrade
from store.models import Episode

pytest.importorskip("torch")
pytest.importorskip("peft")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")]

REPO = Path(__file__).resolve().parents[2]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
DRAIN_S = 3.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(args: list[str], env_extra: dict[str, str], log: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """`python -m cli ARGS --port P` from the repository root; waits until `/health` answers 200."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RRR_", "VLLM_"))}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "RRR_LOG_LEVEL": "WARNING",
            **env_extra,
        }
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *args, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args[0]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return url, proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{args[0]} did not become healthy: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (graceful: `rrr serve` drains and flushes its writer, R4), then kill if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Client(threading.Thread):
    """Sends chat requests to rrr back to back until stopped; keeps every outcome."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.ok: list[dict[str, Any]] = []
        self.failed: list[str] = []

    def run(self) -> None:
        body = {
            "model": "rrr",
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": TOOLS,
            "max_tokens": 8,
            "temperature": 0,
        }
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.stop.is_set():
                sent = time.time()
                try:
                    response = http.post("/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    self.failed.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200:
                    self.failed.append(f"{response.status_code}: {response.text[:300]}")
                    continue
                info = response.json().get("rrr") or {}
                if info.get("error"):
                    self.failed.append(f"engine error inside the loop: {info}")
                    continue
                self.ok.append({"sent": sent, "episode_id": info.get("episode_id"), "adapter": info.get("adapter")})


def test_publish_rollback_and_a_broken_adapter_under_load_fail_no_request(
    tiny_model_dir: Path, tiny_adapter_dir: Path, tmp_path: Path
) -> None:
    from learner.tiny import save_tiny_lora

    v2_src = save_tiny_lora(tiny_model_dir, tmp_path / "v2-src", seed=5)
    broken = tmp_path / "broken-src"
    shutil.copytree(tiny_adapter_dir, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    root = tmp_path / "adapters"
    database_url = f"sqlite:///{tmp_path / 'rrr.db'}"
    upgrade(database_url)
    db = make_engine(database_url)
    sessions = make_session_factory(db)
    engine_url, engine_proc = start(
        [
            "engine",
            "serve",
            "--model",
            str(tiny_model_dir),
            "--enable-lora",
            "--served-model-name",
            "tiny",
            "--max-lora-rank",
            "16",
        ],
        {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"},
        tmp_path / "engine.log",
    )
    rrr_log = tmp_path / "rrr-serve.log"
    try:
        rrr_url, rrr_proc = start(
            ["serve", "--engine-url", engine_url, "--database-url", database_url, "--base-model-name", "tiny"],
            {
                "RRR_DATA_DIR": str(tmp_path),
                "RRR_REFLECTION_MAX_TOKENS": "8",
                "RRR_DEADLINE_S": "60",
                "RRR_POLICY_TTL_S": "0.5",
            },
            rrr_log,
        )
    except BaseException:
        stop(engine_proc)
        raise
    client = Client(rrr_url)
    marks: dict[str, float] = {}
    try:
        client.start()

        async def scenario() -> None:
            engines = EnginePool([VLLMEngine(engine_url)])
            kw: dict[str, Any] = {"adapters_root": root, "session_factory": sessions, "engines": engines}
            try:
                await asyncio.sleep(1.5)  # base model traffic
                v1 = await serving.publish_adapter(tiny_adapter_dir, base_model="tiny", drain_s=DRAIN_S, **kw)
                assert v1.ok, v1
                await asyncio.sleep(2.0)
                v2 = await serving.publish_adapter(v2_src, base_model="tiny", drain_s=DRAIN_S, **kw)
                assert v2.ok and v2.previous == "rrr-v1", v2
                await asyncio.sleep(DRAIN_S + 1.5)  # v1 drained and unloaded meanwhile
                assert [c["id"] for c in await engines.list_models()][1:] == ["rrr-v2"]
                back = await serving.rollback(**kw)  # reloads v1 first
                assert back.active is not None and back.active.name == "rrr-v1" and back.replaced == "rrr-v2"
                serving.schedule_unload(engines, sessions, "rrr-v2", DRAIN_S, adapters_root=root)
                marks["rollback"] = time.time()
                await asyncio.sleep(2.0)
                bad = await serving.publish_adapter(broken, base_model="tiny", drain_s=DRAIN_S, **kw)
                assert not bad.ok and bad.name == "rrr-v3" and "500" in (bad.reason or ""), bad
                await asyncio.sleep(1.5)
                await serving.wait_background_unloads()  # v2 unloaded after its drain
                assert [c["id"] for c in await engines.list_models()][1:] == ["rrr-v1"]
            finally:
                await engines.aclose()

        asyncio.run(scenario())
    finally:
        client.stop.set()
        client.join(90)
        stop(rrr_proc)
        stop(engine_proc)

    assert client.failed == [], client.failed[:5]
    assert len(client.ok) >= 15, (len(client.ok), rrr_log.read_text()[-2000:])
    served = {r["adapter"] for r in client.ok}
    assert served == {None, "rrr-v1", "rrr-v2"}, served
    assert any(r["adapter"] == "rrr-v1" for r in client.ok if r["sent"] > marks["rollback"] + 1.0)

    with sessions() as s:
        episodes = {e.id: e for e in s.query(Episode)}
        assert len(episodes) == len(client.ok)  # every answered request stored once
        for request in client.ok:
            episode = episodes[request["episode_id"]]
            assert episode.adapter == request["adapter"]
            assert episode.error is None and episode.status != "upstream_error"
            full = repos.get_episode(s, episode.id)
            assert full is not None and full.attempts
            for attempt in full.attempts:  # one adapter per episode, the one the engine really used
                assert attempt.adapter == episode.adapter
                assert attempt.model == (episode.adapter or "tiny")
        assert not any(e.adapter == "rrr-v3" for e in episodes.values())
        statuses = {a.name: a.status for a in repos.list_adapters(s)}
        assert statuses == {"rrr-v1": "active", "rrr-v2": "retired", "rrr-v3": "rejected"}
    db.dispose()
