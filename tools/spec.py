"""Tool specifications in OpenAI function format, tool calls, and a stable hash per schema.

Everyone who handles tools (converters, verifiers, the agent, the learner) uses these two types.
This module does not validate schemas (see ``tools.schema``) or parse model output (``tools.parse``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class ToolSpec:
    """One function a model may call, as in OpenAI's ``tools=[{"type": "function", "function": ...}]``."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    @classmethod
    def from_openai(cls, obj: dict[str, Any]) -> ToolSpec:
        """Accept ``{"type": "function", "function": {...}}`` or the bare function object."""
        if not isinstance(obj, dict):
            raise ValueError(f"a tool must be a JSON object, got {type(obj).__name__}")
        fn = obj.get("function", obj) if obj.get("type", "function") == "function" else None
        if not isinstance(fn, dict):
            raise ValueError(f"unsupported tool type {obj.get('type')!r}; only 'function' tools are supported")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("a tool needs a non-empty string 'name'")
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise ValueError(f"tool {name!r}: 'parameters' must be a JSON Schema object")
        description = fn.get("description") or ""
        if not isinstance(description, str):
            raise ValueError(f"tool {name!r}: 'description' must be a string")
        return cls(name=name, description=description, parameters=params)

    def to_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    @property
    def schema_hash(self) -> str:
        """A stable hash of the whole tool version (name, description, parameters)."""
        return hashlib.sha256(canonical_json(self.to_openai()).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ToolCall:
    """One call a model made (or a reference answer): a tool name and its decoded arguments."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ToolCall:
        """Accept ``{"name", "arguments"}`` (arguments an object or a JSON string) or OpenAI's
        ``{"id", "type": "function", "function": {"name", "arguments"}}``."""
        if not isinstance(obj, dict):
            raise ValueError(f"a tool call must be a JSON object, got {type(obj).__name__}")
        inner = obj.get("function")
        fn: dict[str, Any] = inner if isinstance(inner, dict) else obj
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("a tool call needs a non-empty string 'name'")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            args = json.loads(args) if args.strip() else {}
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ValueError(f"tool call {name!r}: 'arguments' must be a JSON object")
        call_id = obj.get("id")
        return cls(name=name, arguments=args, id=call_id if isinstance(call_id, str) else None)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}

    def to_openai(self, call_id: str) -> dict[str, Any]:
        return {
            "id": self.id or call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }
