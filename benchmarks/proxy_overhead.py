"""How much latency and throughput rrr's request path costs (issue 3, performance budget).

Starts a stub upstream that answers every chat completion with one valid tool call (after an
optional delay), and `rrr serve --engine-url` in front of it with schema verification and SQL
logging on (SQLite in a temp dir). Drives both directly and through rrr, and prints p50/p95/p99 and
requests/s for each, plus the differences. Processes are pinned to different cores where `taskset`
exists. Loopback only; every loop is bounded in count and time.

    .venv/bin/python benchmarks/proxy_overhead.py [--requests 400] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
BODY = {"model": "rrr", "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": TOOLS}

STUB = r"""
import asyncio, json, sys, time, uuid
delay = float(sys.argv[2]) / 1000
REPLY = {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "base",
         "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
             "role": "assistant", "content": None, "tool_calls": [{"id": "chatcmpl-tool-0123456789abcdef",
             "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}}],
         "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
BODY = json.dumps(REPLY).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": "base", "object": "model", "created": 0,
                     "owned_by": "vllm", "root": "base", "parent": None}]}).encode()

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    path = scope["path"]
    if path.endswith("/chat/completions"):
        if delay:
            await asyncio.sleep(delay)
        body = BODY
    elif path.endswith("/models"):
        body = MODELS
    else:
        body = b""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

import uvicorn
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cmd: list[str], core: int | None) -> list[str]:
    if core is not None and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core), *cmd]
    return cmd


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f}s")


async def drive(
    url: str, clients: int, *, requests: int | None = None, seconds: float | None = None
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + 3600.0  # the warm-up is bounded by count; the measured run by time too
    remaining = [0]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while remaining[0] > 0 and time.monotonic() < stop_at:
                remaining[0] -= 1
                started = time.perf_counter()
                response = await client.post(url, json=BODY)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors += 1

        remaining[0] = 20 * clients  # warm-up: open connections, fill caches
        await asyncio.gather(*(worker() for _ in range(clients)))
        latencies.clear()
        errors = 0
        remaining[0] = requests if requests is not None else 10**9
        stop_at = time.monotonic() + (seconds or 3600.0)
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - began
    q = statistics.quantiles(latencies, n=100)
    return {
        "n": len(latencies),
        "errors": errors,
        "p50_ms": q[49] * 1000,
        "p95_ms": q[94] * 1000,
        "p99_ms": q[98] * 1000,
        "rps": len(latencies) / elapsed,
    }


def start_pair(delay_ms: float, workdir: Path) -> tuple[list[subprocess.Popen[bytes]], str, str]:
    stub_port, rrr_port = free_port(), free_port()
    stub = subprocess.Popen(pinned([sys.executable, "-c", STUB, str(stub_port), str(delay_ms)], 0))
    stub_url = f"http://127.0.0.1:{stub_port}"
    procs = [stub]
    try:
        wait_ready(stub_url + "/v1/models", stub)
        rrr_url = start_rrr(stub_url, rrr_port, delay_ms, workdir, procs)
    except BaseException:
        stop(procs)
        raise
    return procs, stub_url + "/v1/chat/completions", rrr_url + "/v1/chat/completions"


def start_rrr(
    stub_url: str, rrr_port: int, delay_ms: float, workdir: Path, procs: list[subprocess.Popen[bytes]]
) -> str:
    env = {**os.environ, "RRR_DATA_DIR": str(workdir / f"data-{delay_ms:g}"), "RRR_LOG_LEVEL": "WARNING"}
    rrr = subprocess.Popen(
        pinned(
            [
                sys.executable,
                "-m",
                "cli",
                "serve",
                "--engine-url",
                stub_url + "/v1",
                "--database-url",
                f"sqlite:///{workdir}/rrr-{delay_ms:g}.db",
                "--host",
                "127.0.0.1",
                "--port",
                str(rrr_port),
            ],
            1,
        ),
        env=env,
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
    )
    procs.append(rrr)
    rrr_url = f"http://127.0.0.1:{rrr_port}"
    wait_ready(rrr_url + "/health", rrr)
    return rrr_url


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def report(name: str, direct: dict[str, float], proxied: dict[str, float]) -> dict[str, object]:
    print(f"\n{name}")
    print(f"{'':>10} {'n':>6} {'err':>4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for label, row in (("direct", direct), ("via rrr", proxied)):
        print(
            f"{label:>10} {row['n']:>6.0f} {row['errors']:>4.0f} {row['p50_ms']:>8.2f} {row['p95_ms']:>8.2f} "
            f"{row['p99_ms']:>8.2f} {row['rps']:>8.1f}"
        )
    added = {k: proxied[k] - direct[k] for k in ("p50_ms", "p95_ms", "p99_ms")}
    print(
        f"{'added':>10} {'':>6} {'':>4} {added['p50_ms']:>8.2f} {added['p95_ms']:>8.2f} {added['p99_ms']:>8.2f} "
        f"{proxied['rps'] / direct['rps']:>7.2f}x"
    )
    return {"direct": direct, "rrr": proxied, "added": added, "rps_ratio": proxied["rps"] / direct["rps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="requests for the one-client latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the 16-client throughput run")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    args = parser.parse_args()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for delay_ms, clients, name in (
            (0.0, 1, "latency: 1 client, upstream answers at once"),
            (50.0, 16, "throughput: 16 clients, 50 ms upstream"),
        ):
            procs, direct_url, rrr_url = start_pair(delay_ms, Path(tmp))
            try:
                kw = {"requests": args.requests} if clients == 1 else {"seconds": args.seconds}
                direct = asyncio.run(drive(direct_url, clients, **kw))
                proxied = asyncio.run(drive(rrr_url, clients, **kw))
                results[name] = report(name, direct, proxied)
            finally:
                stop(procs)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
