"""A scripted upstream that speaks the OpenAI chat-completions wire format, for loop and API tests.

It is not a mock of our classes: rrr talks to it over real HTTP through the real `openai` SDK,
exactly as to vLLM. Each request is classified as an answer, a reflection or a retry (from the
prompts the agent sends) and answered from a script; faults are real socket behaviour:
``hang`` (accept, never answer), ``drop`` (close the connection mid-response), ``error:<status>``
(optionally ``error:<status>:<message>``), and ``Raw`` (these exact bytes as the body, with a status
and content type: a hostile engine's answer, an error body of any shape). With ``lora=True`` it
also answers vLLM's runtime LoRA routes (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``)
and lists loaded adapters in ``/v1/models``; ``fail_loads`` makes every load fail with vLLM's 500.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.prompts import MATH_REFLECTION_PROMPT, REFLECTION_PROMPT, RETRY_PROMPT


@dataclass(frozen=True)
class Raw:
    """A reply sent byte for byte: ``body`` with ``status`` and ``content_type`` (no chat-completion wrapper)."""

    body: bytes
    status: int = 200
    content_type: str = "application/json"


Reply = dict[str, Any] | str | Raw  # an assistant message, a fault name, or raw bytes


def tool_call(name: str, arguments: dict[str, Any] | str) -> dict[str, Any]:
    """An assistant message with one server-parsed tool call."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "chatcmpl-tool-" + uuid.uuid4().hex[:16],
                "type": "function",
                "function": {"name": name, "arguments": args},
            }
        ],
    }


def text(content: str) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def classify(messages: list[dict[str, Any]]) -> str:
    last = messages[-1].get("content") if messages else None
    if isinstance(last, str) and last.startswith((REFLECTION_PROMPT[:40], MATH_REFLECTION_PROMPT[:40])):
        return "reflection"
    if last == RETRY_PROMPT:
        return "retry"
    return "answer"


@dataclass
class Script:
    """Replies per request kind, used in order; the last one repeats."""

    answer: list[Reply] = field(default_factory=list)
    reflection: list[Reply] = field(default_factory=lambda: [text("I used the wrong argument.")])
    retry: list[Reply] = field(default_factory=list)
    delay_s: float = 0.0
    responder: Callable[[dict[str, Any]], Reply] | None = None

    def next(self, kind: str, counts: dict[str, int]) -> Reply:
        replies: list[Reply] = getattr(self, kind) or self.answer
        i = counts.get(kind, 0)
        counts[kind] = i + 1
        return replies[min(i, len(replies) - 1)]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # bursts of concurrent connections must not overflow the listen backlog


class ScriptedUpstream:
    """Run with ``with ScriptedUpstream(script) as up: up.url``; ``up.requests`` keeps every body."""

    def __init__(self, script: Script, model: str = "base", *, port: int = 0, lora: bool = False) -> None:
        self.script = script
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.lora = lora
        self.fail_loads = False
        self.adapters: dict[str, str] = {}  # name -> path, as loaded through the admin routes
        self.admin_calls: list[str] = []
        self.server = _Server(("127.0.0.1", port), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def calls(self, kind: str | None = None) -> int:
        with self._lock:
            return len(self.requests) if kind is None else sum(classify(r["messages"]) == kind for r in self.requests)

    def _reply(self, body: dict[str, Any]) -> Reply:
        if self.script.responder is not None:
            return self.script.responder(body)
        with self._lock:
            self.requests.append(body)
            return self.script.next(classify(body.get("messages", [])), self.counts)

    # Complexity: one branch per scripted behaviour of the fake server.
    def _handler(self) -> type[BaseHTTPRequestHandler]:  # noqa: C901
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stalls

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/health":
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/v1/models":
                    now = int(time.time())
                    cards = [
                        {
                            "id": upstream.model,
                            "object": "model",
                            "created": now,
                            "owned_by": "vllm",
                            "root": upstream.model,
                            "parent": None,
                        }
                    ]
                    cards += [
                        {
                            "id": name,
                            "object": "model",
                            "created": now,
                            "owned_by": "vllm",
                            "root": path,
                            "parent": upstream.model,
                        }
                        for name, path in list(upstream.adapters.items())
                    ]
                    self._send(200, {"object": "list", "data": cards})
                else:
                    self._send(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if upstream.lora and self.path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
                    self._admin(body)
                    return
                if self.path != "/v1/chat/completions":
                    self._send(404, {"detail": "Not Found"})
                    return
                if upstream.script.delay_s:
                    time.sleep(upstream.script.delay_s)
                reply = upstream._reply(body)
                if isinstance(reply, Raw):
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    return
                if reply == "hang":
                    upstream._stop.wait(60)
                    return
                if reply == "drop":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b'{"id": "chatcmpl-x", "choi')
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(reply, str) and reply.startswith("error:"):
                    _, code, *rest = reply.split(":", 2)
                    status = int(code)
                    self._send(
                        status,
                        {
                            "error": {
                                "message": rest[0] if rest else "scripted failure",
                                "type": "InternalServerError",
                                "param": None,
                                "code": status,
                            }
                        },
                    )
                    return
                assert isinstance(reply, dict)
                message = {"role": "assistant", "content": None, **reply}
                finish = message.pop("finish_reason", "tool_calls" if message.get("tool_calls") else "stop")
                if not message.get("tool_calls"):
                    message.pop("tool_calls", None)
                self._send(
                    200,
                    {
                        "id": "chatcmpl-" + uuid.uuid4().hex[:16],
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model") or upstream.model,
                        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                    },
                )

            def _text(self, status: int, text: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _admin(self, body: dict[str, Any]) -> None:
                name = str(body.get("lora_name") or "")
                with upstream._lock:
                    upstream.admin_calls.append(self.path)
                if self.path == "/v1/unload_lora_adapter":
                    if upstream.adapters.pop(name, None) is None:
                        self._send(
                            404,
                            {
                                "error": {
                                    "message": f"The lora adapter '{name}' cannot be found.",
                                    "type": "NotFoundError",
                                    "param": None,
                                    "code": 404,
                                }
                            },
                        )
                        return
                    self._text(200, f"Success: LoRA adapter '{name}' removed successfully.")
                    return
                if upstream.fail_loads:
                    self._send(
                        500,
                        {
                            "error": {
                                "message": "Call to add_lora method failed: scripted",
                                "type": "InternalServerError",
                                "param": None,
                                "code": 500,
                            }
                        },
                    )
                    return
                upstream.adapters[name] = str(body.get("lora_path") or "")
                self._text(200, f"Success: LoRA adapter '{name}' added successfully.")

        return Handler


def free_port() -> int:
    """A loopback port with nothing listening (for 'connection refused' tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
