"""Turn model output into tool calls: hermes ``<tool_call>`` text, OpenAI messages, strict arguments.

Who calls it: the local engine and its vLLM-compatible server (``parse_hermes`` reproduces vLLM's
non-streaming hermes parser, docs/vllm.md §3.5), the agent loop on every answer from an
engine (``parse_openai_tool_calls``), and the verifiers. Nothing here raises on model output: a
malformed call comes back as a reason string, which the loop turns into a verdict (R9).

Deliberately not done: streaming, name checks against the offered tools (the schema verifier
does that), and schema validation of the arguments (``tools.schema``).

Where we are stricter than vLLM: a block whose arguments are not a strict JSON object (NaN,
duplicate keys, integers beyond 2**53, lone surrogates, non-object ``arguments``) or whose name is
empty is malformed here. vLLM would pass such a call through with arguments that
``parse_openai_tool_calls`` then rejects, so the verdict is the same either way.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from tools.spec import ToolCall

TOOL_CALL_START = "<tool_call>"
_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)
_SURROGATE_RE = re.compile("[\ud800-\udfff]")

MAX_ARGUMENTS_CHARS = 4 * 1024 * 1024
MAX_STRING_CHARS = 1024 * 1024
MAX_NESTING = 32
MAX_SAFE_INTEGER = 2**53
MAX_NUMBER_CHARS = 64


class _Rejected(ValueError):
    """Raised inside the strict decoder's hooks; its message is the reason given back."""


def _reject_constant(name: str) -> Any:
    raise _Rejected(f"{name} is not valid JSON (NaN and Infinity are not allowed)")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > 16:  # 2**53 has 16 digits: longer literals are out of range
        raise _Rejected(f"integer {_clip(text)} has too many digits; integers must be within ±2**53")
    value = int(text)
    if abs(value) > MAX_SAFE_INTEGER:
        raise _Rejected(f"integer {text} is outside ±2**53 and would lose precision")
    return value


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Rejected(f"number {_clip(text)} is longer than {MAX_NUMBER_CHARS} characters")
    value = float(text)
    if not math.isfinite(value):
        raise _Rejected(f"number {text} is out of range")
    return value


def _check_key(key: str) -> None:
    if len(key) > MAX_STRING_CHARS:
        raise _Rejected(f"an object key is longer than {MAX_STRING_CHARS} characters")
    if _SURROGATE_RE.search(key):
        raise _Rejected(f"key {_clip(key)!r} contains a lone surrogate (invalid Unicode)")


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Rejected(f"duplicate key {_clip(key)!r}")
        _check_key(key)
        result[key] = value
    return result


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_pairs, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_reject_constant
)


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _check_tree(value: Any) -> None:
    """Depth and string checks over the decoded value, iteratively."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if len(node) > MAX_STRING_CHARS:
                raise _Rejected(f"a string is {len(node)} characters long; the limit is {MAX_STRING_CHARS}")
            if _SURROGATE_RE.search(node):
                raise _Rejected(f"string {_clip(node)!r} contains a lone surrogate (invalid Unicode)")
        elif isinstance(node, dict | list):
            if depth > MAX_NESTING:
                raise _Rejected(f"JSON is nested more than {MAX_NESTING} levels deep")
            items = node.values() if isinstance(node, dict) else node
            stack.extend((item, depth + 1) for item in items)


def strict_loads(raw: str) -> Any:
    """Decode one strict JSON value or raise ValueError with a reason a model can act on."""
    if len(raw) > MAX_ARGUMENTS_CHARS:
        raise _Rejected(f"JSON text is {len(raw)} characters long; the limit is {MAX_ARGUMENTS_CHARS}")
    if not raw.strip():
        raise _Rejected("empty JSON text; expected a JSON object such as {}")
    try:
        value = _DECODER.decode(raw)
    except _Rejected:
        raise
    except json.JSONDecodeError as exc:
        what = "text after the JSON value" if exc.msg == "Extra data" else exc.msg
        raise _Rejected(f"invalid JSON: {what} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise _Rejected(f"JSON is nested more than {MAX_NESTING} levels deep") from None
    except ValueError as exc:  # e.g. int() limits
        raise _Rejected(f"invalid JSON: {exc}") from None
    _check_tree(value)
    return value


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def parse_arguments(raw: str) -> tuple[dict[str, Any] | None, str | None]:
    """Strict JSON for tool-call arguments: ``(object, None)`` or ``(None, reason)``; never raises."""
    if not isinstance(raw, str):
        return None, f"arguments must be a JSON string, got {type(raw).__name__}"
    try:
        value = strict_loads(raw)
    except ValueError as exc:
        return None, str(exc)
    if not isinstance(value, dict):
        return None, f"arguments must be a JSON object, got {_json_type(value)}"
    return value, None


@dataclass(frozen=True)
class HermesParse:
    """vLLM's ``ExtractedToolCallInformation`` plus the reason vLLM only logs."""

    tools_called: bool
    tool_calls: list[ToolCall]
    content: str | None
    error: str | None


def _hermes_block(body: str) -> tuple[ToolCall | None, str | None]:
    try:
        obj = json.loads(body)  # vLLM's own check first, so that its verdict is ours
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, json.JSONDecodeError):
            return None, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        return None, f"invalid JSON: {_clip(str(exc), 200)}"
    if not isinstance(obj, dict):
        return None, f'expected a JSON object with "name" and "arguments", got {_json_type(obj)}'
    for key in ("name", "arguments"):
        if key not in obj:
            return None, f'missing "{key}"'
    if not isinstance(obj["name"], str):
        return None, f'"name" must be a string, got {_json_type(obj["name"])}'
    if not obj["name"].strip():
        return None, '"name" is empty'
    try:
        strict = strict_loads(body)
    except ValueError as exc:
        return None, str(exc)
    if not isinstance(strict["arguments"], dict):
        return None, f'"arguments" must be a JSON object, got {_json_type(strict["arguments"])}'
    return ToolCall(name=strict["name"], arguments=strict["arguments"]), None


def parse_hermes(text: str) -> HermesParse:
    """vLLM's non-streaming hermes parser: all ``<tool_call>`` blocks parse, or none count."""
    if not isinstance(text, str):
        return HermesParse(False, [], None, f"model output must be text, got {type(text).__name__}")
    if TOOL_CALL_START not in text:
        return HermesParse(False, [], text, None)
    calls: list[ToolCall] = []
    for index, match in enumerate(_TOOL_CALL_RE.finditer(text), start=1):
        body = match.group(1) or match.group(2) or ""
        call, reason = _hermes_block(body)
        if call is None:
            unclosed = " (no closing </tool_call>)" if match.group(1) is None else ""
            return HermesParse(False, [], text, f"<tool_call> block {index}{unclosed}: {reason}")
        calls.append(call)
    before = text[: text.find(TOOL_CALL_START)]
    return HermesParse(True, calls, before if before.strip() else None, None)


def _openai_call(item: Any) -> tuple[ToolCall | None, str | None]:
    if hasattr(item, "model_dump"):  # an openai SDK object
        item = item.model_dump()
    if not isinstance(item, dict):
        return None, f"expected an object, got {type(item).__name__}"
    if item.get("type", "function") != "function":
        return None, f"unsupported tool call type {_clip(str(item.get('type')))!r}"
    fn = item.get("function", item)
    if not isinstance(fn, dict):
        return None, '"function" must be an object'
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, "missing function name"
    raw = fn.get("arguments")
    if isinstance(raw, dict):
        try:
            raw = json.dumps(raw, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            return None, f"{name}: arguments are not JSON: {exc}"
    if raw is None:
        return None, f"{name}: missing arguments"
    arguments, reason = parse_arguments(raw)
    if arguments is None:
        return None, f"{name}: arguments: {reason}"
    call_id = item.get("id")
    return ToolCall(name=name, arguments=arguments, id=call_id if isinstance(call_id, str) else None), None


def parse_openai_tool_calls(
    tool_calls: list[dict[str, Any]] | None, content: str | None
) -> tuple[list[ToolCall], str | None]:
    """Calls from a server-parsed assistant message, and the first problem found (or None).

    ``<tool_call>`` text left in ``content`` means the server could not parse a call (vLLM returns
    the raw text when a block is malformed): that is an error, with the block's reason when known.
    Never raises, whatever the shapes.
    """
    calls: list[ToolCall] = []
    errors: list[str] = []
    if tool_calls is not None and not isinstance(tool_calls, list):
        errors.append(f"tool_calls must be a list, got {type(tool_calls).__name__}")
        tool_calls = []
    for index, item in enumerate(tool_calls or [], start=1):
        try:
            call, reason = _openai_call(item)
        except Exception as exc:  # a hostile object's model_dump or mapping methods
            call, reason = None, f"unreadable tool call: {type(exc).__name__}"
        if call is None:
            errors.append(f"tool call {index}: {reason}")
        else:
            calls.append(call)
    if isinstance(content, str):
        if TOOL_CALL_START in content:
            leftover = parse_hermes(content)
            errors.append(
                f"malformed tool call in content: {leftover.error}"
                if leftover.error
                else "content contains <tool_call> text that the server did not return as a tool call"
            )
    elif content is not None:
        errors.append(f"content must be a string or null, got {type(content).__name__}")
    return calls, (errors[0] if errors else None)
