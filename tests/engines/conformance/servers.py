"""Starting servers for the engine tests: `rrr engine serve` as a real subprocess, an app in a thread,
and adapter directories that vLLM must refuse.

Nothing here is a mock: the subprocess is the CLI a user runs, the thread runs uvicorn on a real
loopback socket, and the bad adapters are real directories (safetensors headers written by hand, so
no torch is needed to make them).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    """A loopback port nothing listens on (bound and released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(
    url: str, *, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    """Poll `/health`; connection refused means "still starting" (docs/vllm.md §5.1)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"engine server exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"engine server at {url} not healthy after {timeout}s")


@dataclass
class ServerProcess:
    """`rrr engine serve` running as a child process on a free loopback port."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def launch_engine_server(
    model_dir: Path, log_dir: Path, *, args: Sequence[str] = (), env: dict[str, str] | None = None
) -> ServerProcess:
    """Start `python -m cli engine serve --model DIR ...` from the repository root (not yet healthy).

    `env` entries override the inherited environment; a value of "" removes the variable.
    """
    port = free_port()
    child_env = dict(os.environ)
    child_env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "RRR_LOG_LEVEL": "WARNING",
        }
    )
    for key in ("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "VLLM_API_KEY"):
        child_env.pop(key, None)
    for key, value in (env or {}).items():
        if value == "":
            child_env.pop(key, None)
        else:
            child_env[key] = value
    log = log_dir / f"engine-serve-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "engine",
        "serve",
        "--model",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env, stdout=out, stderr=subprocess.STDOUT)
    return ServerProcess(url=f"http://127.0.0.1:{port}", proc=proc, log=log)


def wait_started(*servers: ServerProcess, timeout: float = 120.0) -> None:
    """Wait until every server is healthy; stop them all if one fails."""
    try:
        for server in servers:
            wait_healthy(server.url, timeout=timeout, proc=server.proc, log=server.log)
    except BaseException:
        for server in servers:
            server.stop()
        raise


@contextlib.contextmanager
def serve_in_thread(app: Any, *, ready: bool = True) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free loopback port in a daemon thread; yields its base URL.

    `ready=False` only waits for the port to answer, for apps whose health is expected to fail.
    """
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        if ready:
            wait_healthy(url, timeout=30)
        else:
            deadline = time.monotonic() + 30
            while not server.started and time.monotonic() < deadline:
                time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --- adapters vLLM must refuse (contract §8.4) ------------------------------------------------------


def _safetensors(path: Path, names: list[str]) -> None:
    """A valid safetensors file with one 1x1 float32 zero tensor per name."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    for i, name in enumerate(names):
        header[name] = {"dtype": "F32", "shape": [1, 1], "data_offsets": [4 * i, 4 * i + 4]}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * (4 * len(names)))


def copy_adapter(good: Path, dest: Path) -> Path:
    """A copy of a servable adapter (config and weights) at `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in good.iterdir():
        if item.is_file():
            shutil.copy2(item, dest / item.name)
    return dest


BAD_ADAPTERS = (
    "no_dir",
    "no_config",
    "bad_json",
    "missing_r",
    "missing_lora_alpha",
    "missing_target_modules",
    "rank_too_high",
    "use_dora",
    "modules_to_save",
    "bias",
    "embed_tokens",
    "lm_head",
    "no_weights",
)
"""Kinds of broken adapter; the first two are 404 `NotFoundError`, the rest 500 `InternalServerError`."""


def make_bad_adapter(kind: str, good: Path, dest: Path) -> Path:  # noqa: C901 (one branch per kind of broken adapter)
    """Write an adapter directory broken in one way (`kind` from BAD_ADAPTERS), based on `good`."""
    if kind == "no_dir":
        return dest / "does-not-exist"
    copy_adapter(good, dest)
    config_path = dest / "adapter_config.json"
    config = json.loads(config_path.read_text())
    if kind == "no_config":
        config_path.unlink()
    elif kind == "bad_json":
        config_path.write_text('{"r": 8, "lora_alpha": 16,')
    elif kind.startswith("missing_"):
        del config[kind[len("missing_") :]]
    elif kind == "rank_too_high":
        config["r"] = 1024  # above every rank vLLM allows (512 at most)
    elif kind == "use_dora":
        config["use_dora"] = True
    elif kind == "modules_to_save":
        config["modules_to_save"] = ["lm_head"]
    elif kind == "bias":
        config["bias"] = "all"
    elif kind in ("embed_tokens", "lm_head"):
        config["target_modules"] = ["q_proj", kind]
        for weights in dest.glob("adapter_model.*"):
            weights.unlink()
        extra = (
            [
                "base_model.model.model.embed_tokens.lora_embedding_A",
                "base_model.model.model.embed_tokens.lora_embedding_B",
            ]
            if kind == "embed_tokens"
            else ["base_model.model.lm_head.lora_A.weight", "base_model.model.lm_head.lora_B.weight"]
        )
        _safetensors(
            dest / "adapter_model.safetensors",
            [
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                *extra,
            ],
        )
    elif kind == "no_weights":
        for weights in dest.glob("adapter_model.*"):
            weights.unlink()
    else:
        raise ValueError(f"unknown bad adapter kind {kind!r}")
    if kind not in ("no_config", "bad_json"):
        config_path.write_text(json.dumps(config))
    return dest


# --- a raw HTTP peer for transport faults ------------------------------------------------------------


class RawPeer:
    """A loopback socket server answering every request the same scripted way.

    `mode`: "hang" (accept, read, never answer), "drop" (send headers and part of the body, then
    close), or "reply" (send `status`, `body` and `content_type`). Only the wire format is scripted.
    """

    def __init__(
        self, mode: str, *, status: int = 200, body: bytes = b"", content_type: str = "application/json"
    ) -> None:
        self.mode, self.status, self.body, self.content_type = mode, status, body, content_type
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)  # so that the accept loop notices `stop`
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self.requests: list[bytes] = []
        """The head (request line and headers) of every request received."""
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RawPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self._conns.append(conn)
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.requests.append(data.split(b"\r\n\r\n", 1)[0])
            if self.mode == "hang":
                self._stop.wait(60)
                return
            if self.mode == "drop":
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                    b'{"id": "chatcmpl-x", "choi'
                )
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
                return
            kind = f"Content-Type: {self.content_type}\r\n" if self.content_type else ""
            head = f"HTTP/1.1 {self.status} X\r\n{kind}Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
            conn.sendall(head.encode() + self.body)
            conn.close()
