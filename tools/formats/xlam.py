"""xLAM / APIGen records (``{query, tools, answers}``) converted to ``DatasetItem``s.

Used by ``tools.formats.load_dataset("xlam:...")`` and ``rrr tools convert --from xlam``. The file is
one JSON array or JSON Lines; ``tools`` and ``answers`` may be JSON strings; ``query`` is a string or
a list of dialogue turns (API-Bank style: ``user``, ``agent`` = assistant prose, ``assistant`` = a
fenced JSON list of calls, ``tool`` = the result of the preceding call).

Parameters are ``{name: {type, description, default?}}`` with Python-style type strings (see
``tools.formats.types``) or already a JSON Schema object. **Required rule** for the flat form: a
parameter is required unless (a) it has a ``default``, (b) its type is optional (``Optional[X]``,
``X, optional``, a union with ``None``), (c) its description declares it optional (starts with
``[Optional]``/``(optional)``/``Optional``, or says it is "only needed" in some case), or (d) it
says ``"required": false`` itself (``"required": true`` forces it). A JSON Schema ``parameters``
keeps its own ``required`` list.

**Reference answers**: API-Bank stores every argument as a string (``"2"``, ``"False"``,
``"['a', 'b']"``). A string value is decoded (JSON, then a Python literal) when its parameter's
type does not admit strings and the decoded value has the declared type; otherwise it is kept
as is, so a wrong answer stays wrong. An optional parameter with a ``default`` may be omitted or
given its default (``""`` joins its acceptable values, BFCL style).

Does not verify anything: ``tools.verify`` judges calls against the ``expected`` built here.
"""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path
from typing import Any

from tools.formats.item import DatasetError, DatasetItem, maybe_json, read_records, require_object
from tools.formats.types import normalize_schema, nullable, parse_type
from tools.spec import ToolCall, ToolSpec
from tools.verify import expected_from_calls

_OPTIONAL_DESCRIPTION = re.compile(
    r"^\s*[\[(]?\s*optional\b|[\[(]\s*optional\s*[\])]|\bonly needed\b", flags=re.IGNORECASE
)
_ROLES = {
    "user": "user",
    "human": "user",
    "agent": "assistant",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "function_call": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
}
_FENCE = re.compile(r"^```[A-Za-z]*\s*(.*?)\s*```$", flags=re.DOTALL)


def _is_json_schema(params: dict[str, Any]) -> bool:
    # A flat parameter map never has a string "type" entry of "object"; a JSON Schema always does.
    return params.get("type") in ("object", "dict") and isinstance(params.get("properties", {}), dict)


def _flat_parameters(params: dict[str, Any], where: str) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for pname, spec in params.items():
        if isinstance(spec, str):
            spec = {"type": spec}
        if not isinstance(spec, dict):
            raise DatasetError(f"{where}: parameter {pname!r} must be an object, got {type(spec).__name__}")
        type_value = spec.get("type", "any")
        if isinstance(type_value, str):
            info = parse_type(type_value)
            schema, type_optional = dict(info.schema), info.optional
        else:
            schema, type_optional = normalize_schema({"type": type_value}), False
        for key, value in spec.items():
            if key not in ("type", "required", "optional") and key not in schema:
                schema[key] = normalize_schema(value) if key in ("items", "properties") else value
        description = spec.get("description")
        explicit = spec.get("required")
        if isinstance(explicit, bool):
            is_required = explicit
        else:
            is_required = not (
                "default" in spec
                or type_optional
                or spec.get("optional") is True
                or (isinstance(description, str) and _OPTIONAL_DESCRIPTION.search(description) is not None)
            )
        if type_optional and "default" in spec and spec["default"] is None:
            schema = nullable(schema)
        properties[pname] = schema
        if is_required:
            required.append(pname)
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    return out


def convert_xlam_tool(obj: Any, where: str = "tool") -> ToolSpec:
    """One xLAM tool ``{name, description, parameters}`` as a ``ToolSpec`` (``return`` is dropped)."""
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: a tool must be an object, got {type(obj).__name__}")
    if obj.get("type") == "function" and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise DatasetError(f"{where}: a tool needs a non-empty string 'name'")
    where = f"{where} ({name})"
    params = obj.get("parameters")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise DatasetError(f"{where}: 'parameters' must be an object, got {type(params).__name__}")
    if _is_json_schema(params):
        parameters = normalize_schema({**params, "type": "object"})
    else:
        parameters = _flat_parameters(params, where)
    description = obj.get("description") or ""
    if not isinstance(description, str):
        description = json.dumps(description, ensure_ascii=False)
    return ToolSpec(name=name, description=description, parameters=parameters)


def convert_xlam_tools(tools: Any, where: str = "tools") -> list[ToolSpec]:
    """A record's ``tools`` (a list or its JSON string) as ``ToolSpec``s, in order."""
    tools = maybe_json(tools, "'tools'", where)
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise DatasetError(f"{where}: 'tools' must be a list, got {type(tools).__name__}")
    return [convert_xlam_tool(t, f"{where}, tool {i}") for i, t in enumerate(tools)]


def _calls_in_text(text: str) -> list[ToolCall] | None:
    """The calls of an API-Bank ``assistant`` turn (a fenced JSON list), or None for prose."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    if not body.startswith(("[", "{")):
        return None
    try:
        value = json.loads(body)
        items = [value] if isinstance(value, dict) else value
        if not isinstance(items, list) or not items:
            return None
        return [ToolCall.from_dict(v) for v in items]
    except (ValueError, TypeError, AttributeError):
        return None


def convert_xlam_messages(query: Any, where: str = "query") -> list[dict[str, Any]]:
    """``query`` as OpenAI chat messages (agent -> assistant, call turns -> ``tool_calls``)."""
    if isinstance(query, str):
        return [{"role": "user", "content": query}]
    if not isinstance(query, list) or not query:
        raise DatasetError(f"{where}: 'query' must be a string or a non-empty list of turns")
    messages: list[dict[str, Any]] = []
    pending: list[str] = []
    last_id: str | None = None
    for j, turn in enumerate(query):
        if isinstance(turn, str):
            turn = {"role": "user", "content": turn}
        if not isinstance(turn, dict):
            raise DatasetError(f"{where}, turn {j}: expected an object, got {type(turn).__name__}")
        raw_role = turn.get("role", turn.get("from", turn.get("speaker")))
        role = _ROLES.get(str(raw_role).lower()) if raw_role is not None else None
        if role is None:
            raise DatasetError(f"{where}, turn {j}: unknown role {raw_role!r}")
        content = next((turn[k] for k in ("content", "text", "value", "message") if k in turn), None)
        if content is not None and not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        if role == "assistant" and isinstance(turn.get("tool_calls"), list):
            messages.append({**turn, "role": "assistant"})
            pending = [c["id"] for c in turn["tool_calls"] if isinstance(c, dict) and isinstance(c.get("id"), str)]
            last_id = pending[-1] if pending else last_id
            continue
        calls = _calls_in_text(content) if role == "assistant" and content else None
        if calls:
            ids = [f"call_{j}_{k}" for k in range(len(calls))]
            tool_calls = [c.to_openai(i) for c, i in zip(calls, ids, strict=True)]
            messages.append({"role": "assistant", "content": None, "tool_calls": tool_calls})
            pending, last_id = list(ids), ids[-1]
        elif role == "tool":
            call_id = turn.get("tool_call_id") or (pending.pop(0) if pending else last_id)
            if call_id is None:
                raise DatasetError(f"{where}, turn {j}: a tool result with no tool call before it")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": content or ""})
        else:
            messages.append({"role": role, "content": content or ""})
    return messages


def _types_of(schema: dict[str, Any]) -> set[str] | None:
    """JSON types a schema admits, or None when unconstrained."""
    if "anyOf" in schema or "oneOf" in schema:
        found: set[str] = set()
        for sub in schema.get("anyOf", schema.get("oneOf", [])):
            sub_types = _types_of(sub) if isinstance(sub, dict) else None
            if sub_types is None:
                return None
            found |= sub_types
        return found
    t = schema.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return {x for x in t if isinstance(x, str)}
    if "enum" in schema:
        return {_json_type(v) for v in schema["enum"]}
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return "object"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError("non-string key")
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("not a finite number")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ValueError(f"not JSON: {type(value).__name__}")


def coerce_value(value: Any, schema: dict[str, Any]) -> Any:
    """Decode a stringified argument when its declared type is not a string (see module doc)."""
    if not isinstance(value, str):
        return value
    types = _types_of(schema)
    if types is None or "string" in types:
        return value
    for decode in (json.loads, ast.literal_eval):
        try:
            decoded = _jsonable(decode(value))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        kind = _json_type(decoded)
        if kind in types or (kind == "integer" and "number" in types):
            return decoded
    return value


def _acceptable(value: Any) -> Any:
    """``value`` as one acceptable value in the verifier's shape (nested dicts get their own lists)."""
    return expected_from_calls([ToolCall("_", {"v": value})])[0]["_"]["v"][0]


def convert_xlam_answers(answers: Any, tools: list[ToolSpec], where: str = "answers") -> list[dict[str, Any]]:
    """Reference answers as BFCL-shaped expected calls (values decoded, defaults made optional)."""
    answers = maybe_json(answers, "'answers'", where)
    if isinstance(answers, dict):
        answers = [answers]
    if not isinstance(answers, list):
        raise DatasetError(f"{where}: 'answers' must be a list, got {type(answers).__name__}")
    by_name = {t.name: t for t in tools}
    expected: list[dict[str, Any]] = []
    for k, answer in enumerate(answers):
        try:
            call = ToolCall.from_dict(answer)
        except ValueError as exc:
            raise DatasetError(f"{where}, answer {k}: {exc}") from None
        tool = by_name.get(call.name)
        props: dict[str, Any] = tool.parameters.get("properties", {}) if tool else {}
        required = set(tool.parameters.get("required", [])) if tool else set()
        params: dict[str, list[Any]] = {}
        for pname, value in call.arguments.items():
            schema = props.get(pname, {})
            decoded = coerce_value(value, schema)
            acceptable = [_acceptable(decoded)]
            if pname not in required and "default" in schema and coerce_value(schema["default"], schema) == decoded:
                acceptable.append("")
            params[pname] = acceptable
        for pname, schema in props.items():
            if pname not in params and pname not in required and "default" in schema:
                default = coerce_value(schema["default"], schema)
                params[pname] = [""] if default == "" else ["", _acceptable(default)]
        expected.append({call.name: params})
    return expected


def convert_xlam_record(rec: Any, index: int, where: str | None = None) -> DatasetItem:
    """One ``{query, tools, answers}`` record; id = its ``id`` if present, else ``str(index)``."""
    where = where or f"record {index}"
    if not isinstance(rec, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for key in ("query", "answers"):
        if key not in rec:
            raise DatasetError(f"{where}: missing {key!r}")
    tools = convert_xlam_tools(rec.get("tools", []), where)
    messages = convert_xlam_messages(rec["query"], where)
    expected = convert_xlam_answers(rec["answers"], tools, where)
    item_id = str(rec["id"]) if rec.get("id") is not None else str(index)
    return DatasetItem(id=item_id, messages=messages, tools=tools, expected=expected, task="tool_call")


def load_xlam(path: str | Path) -> list[DatasetItem]:
    """All records of an xLAM file (a JSON array or JSON Lines)."""
    return [convert_xlam_record(require_object(rec), i, rec.where) for i, rec in enumerate(read_records(path))]


def load_xlam_tools(path: str | Path) -> list[ToolSpec]:
    """Every record's tools, in file order (not deduplicated)."""
    out: list[ToolSpec] = []
    for rec in read_records(path):
        obj = require_object(rec)
        out.extend(convert_xlam_tools(obj.get("tools", []), rec.where))
    return out
