"""Server-sent events for streamed chat completions, in vLLM 0.33's frame order (docs/vllm.md §3.6).

Who calls it: the chat route of the engine server feeds text deltas from the local engine into
`ChatStream` and writes the frames it returns. Order: a role chunk `{"role":"assistant","content":""}`,
`{"content": ...}` deltas for plain text, then per tool call a chunk with `index`/`id`/`type`/`name`
followed by argument fragments, then the chunk with `finish_reason`, an optional usage chunk
(`choices: []`) and `data: [DONE]`. An error after the 200 is a `data: {"error": ...}` frame.

With tools active, text that could be the start of `<tool_call>` is held back; from the first
`<tool_call>` on, the rest of the output is collected and split into calls when generation ends.
As in vLLM's streaming path the arguments are not validated: a block whose JSON does not parse
still streams if its name can be read (arguments = the raw text), and a block without a readable
name is dropped, never sent as content. With another tool-call format (`tool_call_parser`:
llama3_json, mistral, pythonic) the whole output is collected and parsed as the non-streaming
response is (docs/vllm.md §3.9): calls stream if it found calls, else the text is one content delta.
It does not generate text or validate requests.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

from engines.server.errors import error_body
from engines.wire import tool_call_id
from tools.parse import TOOL_CALL_START
from tools.toolcall_formats import DEFAULT_TOOL_CALL_PARSER, tool_call_format

_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)
_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGUMENTS = re.compile(r'"arguments"\s*:\s*')
_FRAGMENT = 16


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


DONE = sse("[DONE]")


def split_tool_calls(text: str) -> list[tuple[str, str]]:
    """(name, raw arguments) per `<tool_call>` block; blocks without a readable name are dropped."""
    calls = []
    for match in _BLOCK.finditer(text):
        body = (match.group(1) if match.group(1) is not None else match.group(2) or "").strip()
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            args = obj.get("arguments", {})
            calls.append((obj["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)))
            continue
        name = _NAME.search(body)
        if name is None:
            continue
        raw = ""
        start = _ARGUMENTS.search(body)
        if start is not None:
            raw = body[start.end() :].rstrip()
            if raw.endswith("}") and raw.count("}") > raw.count("{"):
                raw = raw[:-1].rstrip()  # the closing brace of the outer object
        calls.append((_unescape(name.group(1)), raw))
    return calls


def _unescape(text: str) -> str:
    """A JSON string body as text; a broken escape is kept as written rather than failing the stream."""
    try:
        return str(json.loads(f'"{text}"'))
    except ValueError:
        return text


def _held_back(text: str) -> int:
    """Length of the longest suffix of `text` that could begin `<tool_call>`."""
    for size in range(min(len(text), len(TOOL_CALL_START) - 1), 0, -1):
        if TOOL_CALL_START.startswith(text[-size:]):
            return size
    return 0


class ChatStream:
    """Turns the engine's text deltas for one request into SSE frames."""

    def __init__(
        self,
        model: str,
        *,
        parse_tools: bool,
        parallel_tool_calls: bool = True,
        named_tool: bool = False,
        include_usage: bool = False,
        tool_call_parser: str = DEFAULT_TOOL_CALL_PARSER,
    ) -> None:
        self.format = tool_call_format(tool_call_parser)
        self.collect = parse_tools and tool_call_parser != DEFAULT_TOOL_CALL_PARSER
        self.id = "chatcmpl-" + secrets.token_hex(8)
        self.created = int(time.time())
        self.model = model
        self.parse_tools = parse_tools
        self.parallel_tool_calls = parallel_tool_calls
        self.named_tool = named_tool
        self.include_usage = include_usage
        self._pending = ""
        self._sent_text = False
        self._tool_text: str | None = None

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        choice.update(extra)
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [choice],
            }
        )

    def start(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def feed(self, delta: str) -> list[bytes]:
        """Frames for one text delta (possibly none while text is held back)."""
        if self._tool_text is not None or self.collect:
            self._tool_text = (self._tool_text or "") + delta
            return []
        text, self._pending = self._pending + delta, ""
        if not self.parse_tools:
            return self._emit(text)
        at = text.find(TOOL_CALL_START)
        if at >= 0:
            self._tool_text = text[at:]
            # Blank text before a tool call is not content (non-streaming gives null).
            return self._emit(text[:at]) if self._sent_text or text[:at].strip() else []
        keep = _held_back(text)
        if keep:
            text, self._pending = text[:-keep], text[-keep:]
        if not self._sent_text and not text.strip():
            self._pending = text + self._pending  # may still turn out to precede a tool call
            return []
        return self._emit(text)

    def _emit(self, text: str) -> list[bytes]:
        if not text:
            return []
        self._sent_text = True
        return [self._chunk({"content": text})]

    def finish(
        self,
        engine_finish_reason: str,
        stop_reason: str | int | None = None,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> list[bytes]:
        """The remaining frames: tool calls, the finish chunk, the usage chunk and `[DONE]`."""
        frames: list[bytes] = []
        if self.collect:
            calls = self._collected_calls(frames)
        else:
            calls = split_tool_calls(self._tool_text) if self._tool_text is not None else []
        if self._tool_text is None:
            frames += self._emit(self._pending)
        if not self.parallel_tool_calls:
            calls = calls[:1]
        for index, (name, arguments) in enumerate(calls):
            frames.append(
                self._chunk(
                    {
                        "tool_calls": [
                            {"id": tool_call_id(), "type": "function", "index": index, "function": {"name": name}}
                        ]
                    }
                )
            )
            for at in range(0, len(arguments), _FRAGMENT):
                frames.append(
                    self._chunk(
                        {"tool_calls": [{"index": index, "function": {"arguments": arguments[at : at + _FRAGMENT]}}]}
                    )
                )
        finish = engine_finish_reason
        if calls and engine_finish_reason == "stop" and not self.named_tool:
            finish = "tool_calls"
        frames.append(self._chunk({}, finish, stop_reason=stop_reason))
        if self.include_usage:
            frames.append(
                sse(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "total_tokens": prompt_tokens + completion_tokens,
                            "completion_tokens": completion_tokens,
                        },
                    }
                )
            )
        frames.append(DONE)
        return frames

    def _collected_calls(self, frames: list[bytes]) -> list[tuple[str, str]]:
        """(name, arguments) of the collected output's calls; its content (all of it if no calls) goes to `frames`."""
        text, self._tool_text = self._tool_text or "", None
        parsed = self.format.parse(text)
        if not (parsed.tools_called and parsed.tool_calls):
            frames += self._emit(text)
            return []
        if parsed.content and parsed.content.strip():
            frames += self._emit(parsed.content)
        return [(c.name, json.dumps(c.arguments, ensure_ascii=False)) for c in parsed.tool_calls]

    def error(self, status: int, message: str, type_: str, param: str | None = None) -> list[bytes]:
        """An error after the 200 was sent: one error frame, then `[DONE]`."""
        return [sse(error_body(status, message, type_, param)), DONE]
