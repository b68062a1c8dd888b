"""The demo's two servers as child processes: `rrr engine serve` (the engine) and `rrr serve` (the API).

Who calls it: ``demo.run`` (and its tests). ``demo_servers`` starts the local engine on the
base policy with runtime LoRA updating on, waits for its ``/health``, starts the API in front of it
with the embedded SQLite database under the demo's data folder, waits again, yields both URLs and
always stops both (also on Ctrl-C or an error in the caller), first politely, then by force.

The children run the very command lines a user would type (``python -m cli ...``), on free
loopback ports, with a clean environment: ``RRR_*``/``VLLM_*`` variables of the caller's shell are
dropped (a stray ``RRR_API_KEYS`` or ``RRR_DATABASE_URL`` must not change the demo), and only what
the demo sets is passed on. Each writes its log under the demo's ``logs/`` folder; a child that
dies while starting is reported with the tail of its log.

What it deliberately does not do: talk to the servers beyond ``/health`` (the stages do), or
import torch (the children do).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

KEPT_ENV = ("RRR_LOG_LEVEL",)


class ServerStartError(RuntimeError):
    """A demo server exited or did not become healthy; the message ends with its log's tail."""


def free_port() -> int:
    """A loopback port nothing listens on right now (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without rrr/vLLM settings, offline, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not (k.startswith(("RRR_", "VLLM_")) and k not in KEPT_ENV)}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@dataclass
class ServerProcess:
    """One child server: its base URL (no `/v1`), process and log file."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-size:]
        except OSError:
            return ""

    def wait_healthy(self, timeout_s: float) -> None:
        """Poll `/health` until it answers 200; raise ServerStartError if the child exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"the {self.name} exited with status {self.proc.returncode} while "
                    f"starting; the end of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.25)
        raise ServerStartError(
            f"the {self.name} was not healthy after {timeout_s:g}s; the end of {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGINT (a graceful uvicorn shutdown), then SIGKILL if it does not exit in time."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout_s)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None


def start_server(name: str, args: list[str], *, port: int, log_path: Path, env: Mapping[str, str]) -> ServerProcess:
    """`python -m cli ARGS` in the background, output to `log_path` (not yet healthy)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(env),
        )
    return ServerProcess(name=name, url=f"http://127.0.0.1:{port}", proc=proc, log_path=log_path)


@dataclass
class DemoServers:
    engine: ServerProcess
    api: ServerProcess
    served_name: str

    @property
    def api_url(self) -> str:
        return self.api.url

    @property
    def engine_url(self) -> str:
        return self.engine.url


@contextlib.contextmanager
def demo_servers(
    policy_dir: Path,
    data_dir: Path,
    log_dir: Path,
    *,
    served_name: str = "demo-policy",
    max_lora_rank: int = 16,
    api_env: Mapping[str, str] | None = None,
    engine_threads: int | None = None,
    startup_timeout_s: float = 180.0,
) -> Iterator[DemoServers]:
    """Start the engine, then the API on it; yield both; always stop both (API first).

    `api_env` adds `RRR_*` settings for the API (e.g. the reflection cap); the data dir holds the
    embedded SQLite database, the spool and the published adapters.
    """
    started: list[ServerProcess] = []
    try:
        engine_port = free_port()
        engine_env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}
        if engine_threads:
            engine_env["OMP_NUM_THREADS"] = str(engine_threads)
        engine = start_server(
            "engine",
            [
                "engine",
                "serve",
                "--model",
                str(policy_dir),
                "--served-model-name",
                served_name,
                "--host",
                "127.0.0.1",
                "--port",
                str(engine_port),
                "--enable-lora",
                "--max-lora-rank",
                str(max_lora_rank),
            ],
            port=engine_port,
            log_path=log_dir / "engine.log",
            env=engine_env,
        )
        started.append(engine)
        engine.wait_healthy(startup_timeout_s)
        api_port = free_port()
        api = start_server(
            "API",
            [
                "serve",
                "--engine-url",
                engine.url,
                "--data-dir",
                str(data_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(api_port),
            ],
            port=api_port,
            log_path=log_dir / "api.log",
            env=dict(api_env or {}),
        )
        started.append(api)
        api.wait_healthy(startup_timeout_s)
        yield DemoServers(engine=engine, api=api, served_name=served_name)
    finally:
        for server in reversed(started):
            server.stop()
