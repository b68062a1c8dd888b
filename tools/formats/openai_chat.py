"""Our own JSON Lines format: ``{"id"?, "messages", "tools", "expected_tool_calls", "tool_choice"?}``.

``messages`` and ``tools`` are exactly what an OpenAI chat-completion request carries.
``expected_tool_calls`` is either plain calls (``{"name", "arguments"}``, arguments an object or a
JSON string, or OpenAI's ``{"type": "function", "function": {...}}``) or BFCL ground truth
(``{name: {param: [acceptable values]}}``); the shape is detected per entry. ``[]`` means no call
is expected. The id defaults to the 0-based line index among records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.formats.item import DatasetError, DatasetItem, read_jsonl, require_object
from tools.spec import ToolSpec
from tools.verify import normalize_expected


def convert_expected(expected: Any, where: str) -> list[dict[str, Any]]:
    """Plain or BFCL-shaped expected calls as BFCL-shaped ones (``tools.verify.normalize_expected``)."""
    try:
        return normalize_expected(expected)
    except ValueError as exc:
        raise DatasetError(f"{where}: 'expected_tool_calls': {exc}") from None


def convert_openai_record(obj: dict[str, Any], index: int, where: str) -> DatasetItem:
    messages = obj.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise DatasetError(f"{where}: 'messages' must be a list of chat messages with a 'role'")
    raw_tools = obj.get("tools") or []
    if not isinstance(raw_tools, list):
        raise DatasetError(f"{where}: 'tools' must be a list")
    tools = []
    for k, t in enumerate(raw_tools):
        try:
            tools.append(ToolSpec.from_openai(t))
        except ValueError as exc:
            raise DatasetError(f"{where}, tool {k}: {exc}") from None
    if "expected_tool_calls" not in obj:
        raise DatasetError(f"{where}: missing 'expected_tool_calls' (use [] when no call is expected)")
    extra: dict[str, Any] = {}
    if "tool_choice" in obj:
        extra["tool_choice"] = obj["tool_choice"]
    if isinstance(obj.get("category"), str):
        extra["category"] = obj["category"]
    return DatasetItem(
        id=str(obj["id"]) if obj.get("id") is not None else str(index),
        messages=[dict(m) for m in messages],
        tools=tools,
        expected=convert_expected(obj["expected_tool_calls"], where),
        extra=extra,
    )


def load_openai(path: str | Path) -> list[DatasetItem]:
    return [convert_openai_record(require_object(rec), i, rec.where) for i, rec in enumerate(read_jsonl(path))]


def load_openai_tools(path: str | Path) -> list[ToolSpec]:
    return [tool for item in load_openai(path) for tool in item.tools]
