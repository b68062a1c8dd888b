"""The one item type every dataset format converts into, and the JSON readers they share.

Converters (``tools.formats.xlam`` and friends) build ``DatasetItem``s; the scorer and the
learner's miners read them. Nothing here knows a particular format.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.spec import ToolCall, ToolSpec


class DatasetError(ValueError):
    """Bad dataset input; the message names the file, the line or record, and what is wrong."""


@dataclass
class DatasetItem:
    """One evaluation or mining example, whatever file format it came from.

    ``messages`` are OpenAI chat messages; ``tools`` the functions on offer; ``expected`` the
    reference calls in BFCL ground-truth shape ``[{name: {param: [acceptable values]}}]`` where
    ``[]`` means no call is expected (irrelevance) and ``""`` in a list means the parameter may be
    omitted. ``task`` is ``"tool_call"`` or ``"countdown"``; ``extra`` holds format-specific data
    (``category``, countdown ``nums``/``target``, BFCL ``tool_names``).
    """

    id: str
    messages: list[dict[str, Any]]
    tools: list[ToolSpec] = field(default_factory=list)
    expected: list[dict[str, Any]] = field(default_factory=list)
    task: str = "tool_call"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def category(self) -> str | None:
        value = self.extra.get("category")
        return value if isinstance(value, str) else None

    def reference_calls(self) -> list[ToolCall]:
        """The calls a perfect model would make: the first acceptable value of every parameter,
        leaving out parameters (and nested keys) whose first acceptable value is ``""``."""
        calls = []
        for entry in self.expected:
            ((name, params),) = entry.items()
            arguments = {p: _first_value(acc[0]) for p, acc in params.items() if acc and acc[0] != ""}
            calls.append(ToolCall(name=name, arguments=arguments))
        return calls


def _first_value(acceptable: Any) -> Any:
    """An acceptable value as a plain value: a dict maps each key to its own acceptable list."""
    if isinstance(acceptable, dict):
        out = {}
        for key, options in acceptable.items():
            first = options[0] if isinstance(options, list) and options else options
            if first != "":
                out[key] = _first_value(first)
        return out
    if isinstance(acceptable, list):
        return [_first_value(v) for v in acceptable]
    return acceptable


@dataclass(frozen=True)
class Record:
    """One raw JSON record and where it came from (for error messages)."""

    value: Any
    where: str


def read_text(path: str | Path) -> str:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise DatasetError(f"{p}: is a directory, expected a file") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"{p}: cannot read ({exc.strerror or exc})") from None


def read_jsonl(path: str | Path) -> Iterator[Record]:
    """Records of a JSON Lines file; blank lines are skipped, a bad line raises ``DatasetError``."""
    text = read_text(path)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}, line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        yield Record(value, f"{path}, line {lineno}")


def read_records(path: str | Path) -> Iterator[Record]:
    """Records of a file that is either one JSON array or JSON Lines (detected from the content)."""
    text = read_text(path)
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{path}: not a valid JSON array ({exc.msg} at line {exc.lineno}, column {exc.colno})"
            ) from None
        for index, rec in enumerate(value):
            yield Record(rec, f"{path}, record {index}")
        return
    yield from read_jsonl(path)


def require_object(rec: Record) -> dict[str, Any]:
    if not isinstance(rec.value, dict):
        raise DatasetError(f"{rec.where}: expected a JSON object, got {type(rec.value).__name__}")
    return rec.value


def maybe_json(value: Any, what: str, where: str) -> Any:
    """Datasets store some fields as JSON strings; decode those, pass everything else through."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: {what} is a string but not valid JSON ({exc.msg})") from None


def dedupe_tools(tools: list[ToolSpec]) -> list[ToolSpec]:
    """Tools in first-seen order, one per (name, schema hash)."""
    seen: set[tuple[str, str]] = set()
    out: list[ToolSpec] = []
    for tool in tools:
        key = (tool.name, tool.schema_hash)
        if key not in seen:
            seen.add(key)
            out.append(tool)
    return out
