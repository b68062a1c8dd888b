"""The `grounded` verifier: argument values must come from the conversation, not be invented.

Every string and number argument value (inside arrays and objects too) must be traceable to the
conversation's text — the system prompt, the user's messages and tool results — after light
normalisation: case, accents, runs of whitespace and punctuation at the ends are ignored, and a
number matches its written forms (``640``, ``640.0``, ``1,000``, ``1000``). A value the tool's schema
fixes is not checked: an ``enum`` or ``const`` value, the parameter's ``default``, a value with a
``format`` (``date-time``, ``email``, ...), and booleans. ``arguments`` (names) limits the check to
those parameters; ``ignore`` leaves some out. An invented value is ``ungrounded_value`` at its path.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from typing import Any

from tools.spec import ToolSpec
from tools.verifiers.base import ModelOutput, Problem, Verdict, clip, failed, failed_with, passed

MAX_VALUES = 256
MAX_TEXT_CHARS = 1_000_000
_SPACE = re.compile(r"\s+")
_EDGE = re.compile(r"^[\W_]+|[\W_]+$")


def normalize(text: str) -> str:
    """Case-folded, accents removed, whitespace collapsed, punctuation trimmed at the ends."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return _EDGE.sub("", _SPACE.sub(" ", plain).strip())


def conversation_text(messages: list[dict[str, Any]] | None) -> str:
    """The normalised text a value may come from: system, user and tool messages (not the model's own)."""
    parts: list[str] = []
    for message in messages or []:
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "tool"):
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):  # content parts
            parts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    text = " \n ".join(parts)[:MAX_TEXT_CHARS]
    return " " + normalize(text) + " "


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?(?![\d])")


def numbers_in(text: str) -> set[float]:
    """Every number written in the text (``1,250.50`` is 1250.5; ``640`` and ``640.0`` are the same)."""
    return {float(match) for match in _NUMBER.findall(_THOUSANDS.sub("", text))}


def _found(value: Any, text: str, numbers: set[float]) -> bool:
    if isinstance(value, str):
        wanted = normalize(value)
        return not wanted or wanted in text
    return abs(float(value)) in numbers


def _fixed(value: Any, schema: Any) -> bool:
    """The schema decides this value: enum/const/format/default, or a boolean."""
    if isinstance(value, bool) or value is None:
        return True
    if not isinstance(schema, dict):
        return False
    if "enum" in schema or "const" in schema or "format" in schema:
        return True
    return "default" in schema and schema["default"] == value


def _values(value: Any, schema: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(value, dict):
        props = schema.get("properties") if isinstance(schema, dict) else None
        for key, item in value.items():
            sub = props.get(key) if isinstance(props, dict) else None
            yield from _values(item, sub, f"{path}.{key}")
    elif isinstance(value, list):
        items = schema.get("items") if isinstance(schema, dict) else None
        for index, item in enumerate(value):
            yield from _values(item, items, f"{path}[{index}]")
    else:
        yield path, value, schema


def verify_grounded(
    output: ModelOutput,
    tools: list[ToolSpec],
    messages: list[dict[str, Any]] | None,
    *,
    arguments: list[str] | None = None,
    ignore: list[str] | None = None,
) -> Verdict:
    """Pass if every checked argument value appears in the conversation (module docstring)."""
    if output.parse_error:
        return failed(f"malformed tool call: {output.parse_error}", code="parse_error")
    text = conversation_text(messages)
    numbers = numbers_in(text)
    by_name = {tool.name: tool for tool in tools}
    problems: list[Problem] = []
    checked = 0
    for index, call in enumerate(output.tool_calls, start=1):
        if not isinstance(call.arguments, dict):
            continue
        tool = by_name.get(call.name)
        props = tool.parameters.get("properties") if tool is not None else None
        for name, value in call.arguments.items():
            if (arguments is not None and name not in arguments) or (ignore and name in ignore):
                continue
            schema = props.get(name) if isinstance(props, dict) else None
            for path, leaf, leaf_schema in _values(value, schema, f"arguments.{name}"):
                if not isinstance(leaf, str | int | float) or _fixed(leaf, leaf_schema):
                    continue
                checked += 1
                if checked > MAX_VALUES:
                    return failed_with(problems) if problems else passed(checked=checked - 1, truncated=True)
                if not _found(leaf, text, numbers):
                    message = f"call {index} {call.name}: {path} = {clip(leaf)} appears nowhere in the conversation"
                    problems.append(Problem("ungrounded_value", message, path))
    return failed_with(problems) if problems else passed(checked=checked)
