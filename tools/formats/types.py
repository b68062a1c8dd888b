"""Type names found in datasets, turned into JSON Schema.

Two sources: Python-style type strings of xLAM/APIGen tools (``"str"``, ``"List[int]"``,
``"Optional[float]"``, ``"str, optional"``, ``"list(str)"``, ``"Union[str, int]"``) and the
JSON-Schema-like dialect of BFCL (``"dict"``, ``"float"``, ``"tuple"``, ``"any"``). Both end up as
plain JSON Schema that ``tools.schema`` can compile.

Rules (documented here because datasets rely on them):

* ``str``/``string`` -> string, ``int``/``integer`` -> integer, ``float``/``number`` -> number,
  ``bool``/``boolean`` -> boolean, ``None``/``null`` -> null.
* ``list``/``List[X]``/``list(X)``/``Sequence[X]``/``Set[X]``/``tuple``/``Tuple[X, ...]`` -> array,
  with ``items`` when the element type is known (a tuple only when all members agree).
* ``dict``/``Dict[K, V]``/``Mapping`` -> object (``additionalProperties`` = V when V is constrained).
* ``Optional[X]`` / ``X, optional`` / ``Union[X, None]`` -> X that also admits null, and the
  parameter is *optional* (see ``TypeInfo.optional``). ``Union[A, B]`` / ``A | B`` -> ``anyOf``.
* ``Literal['a', 'b']`` -> ``enum``.
* ``Any``/``any``/``object`` (Python) -> no constraint. An unknown name (``Callable``,
  ``datetime``) -> no constraint and one logged warning per name, never an exception.

This module does not decide which parameters are required; the format converters do.
"""

from __future__ import annotations

import ast
import functools
import logging
import re
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

_SCALARS: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "string": {"type": "string"},
    "char": {"type": "string"},
    "int": {"type": "integer"},
    "integer": {"type": "integer"},
    "long": {"type": "integer"},
    "short": {"type": "integer"},
    "byte": {"type": "integer"},
    "float": {"type": "number"},
    "double": {"type": "number"},
    "number": {"type": "number"},
    "decimal": {"type": "number"},
    "bool": {"type": "boolean"},
    "boolean": {"type": "boolean"},
    "none": {"type": "null"},
    "nonetype": {"type": "null"},
    "null": {"type": "null"},
    "any": {},
}
_ARRAYS = {"list", "array", "sequence", "iterable", "set", "frozenset", "tuple", "arraylist"}
_OBJECTS = {"dict", "object", "mapping", "hashmap", "map"}
_JSON_TYPES = {"string", "integer", "number", "boolean", "array", "object", "null"}


@dataclass(frozen=True)
class TypeInfo:
    """A parsed type string: its JSON Schema and whether the type itself marks the value optional."""

    schema: dict[str, Any]
    optional: bool = False


@functools.lru_cache(maxsize=256)
def _warn_unknown(text: str) -> None:
    # Cached so that a 60k-record file with one odd type name logs it once, not 60k times.
    logger.warning("unknown parameter type %r: left unconstrained", text)


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets: ``"int, List[str, int]"`` -> ``["int", "List[str, int]"]``."""
    parts: list[str] = []
    depth = 0
    current = ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return [p for p in parts if p]


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` that also admits null (unconstrained schemas already do)."""
    if not schema:
        return {}
    t = schema.get("type")
    if isinstance(t, str) and set(schema) <= {
        "type",
        "items",
        "additionalProperties",
        "description",
        "default",
    }:
        return {**schema, "type": [t, "null"]} if t != "null" else schema
    if isinstance(t, list):
        return schema if "null" in t else {**schema, "type": [*t, "null"]}
    if "anyOf" in schema and len(schema) == 1:
        options = schema["anyOf"]
        return schema if {"type": "null"} in options else {"anyOf": [*options, {"type": "null"}]}
    return {"anyOf": [schema, {"type": "null"}]}


def _union(members: list[TypeInfo]) -> TypeInfo:
    is_null = [m.schema == {"type": "null"} for m in members]
    rest = [m.schema for m, n in zip(members, is_null, strict=True) if not n]
    if any(s == {} for s in rest):
        return TypeInfo({}, optional=any(is_null))
    unique: list[dict[str, Any]] = []
    for s in rest:
        if s not in unique:
            unique.append(s)
    schema: dict[str, Any] = unique[0] if len(unique) == 1 else {"anyOf": unique}
    if any(is_null):
        return TypeInfo(nullable(schema), optional=True)
    return TypeInfo(schema)


def _array(args: list[str], *, tuple_like: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array"}
    if tuple_like and len(args) == 2 and args[1] == "...":
        args = args[:1]
    items = [parse_type(a).schema for a in args if a != "..."]
    if items and all(i == items[0] for i in items) and (len(items) == 1 or tuple_like) and items[0]:
        schema["items"] = items[0]
    return schema


def parse_type(text: str) -> TypeInfo:  # noqa: C901 (one branch per Python-style type name)
    """Parse one Python-style (or JSON Schema) type name into JSON Schema; never raises."""
    raw = text.strip()
    if not raw:
        return TypeInfo({})
    m = re.fullmatch(r"(.+?)\s*,\s*optional", raw, flags=re.IGNORECASE)
    if m:
        inner = parse_type(m.group(1))
        return TypeInfo(inner.schema, optional=True)
    if "|" in raw and len(_split_top(raw, "|")) > 1:
        return _union([parse_type(p) for p in _split_top(raw, "|")])
    m = re.fullmatch(r"([A-Za-z_][\w.]*)\s*[\[(](.*)[\])]", raw, flags=re.DOTALL)
    head = (m.group(1) if m else raw).split(".")[-1].lower()
    args = _split_top(m.group(2)) if m else []
    if m and head == "optional":
        inner = parse_type(m.group(2))
        return TypeInfo(nullable(inner.schema), optional=True)
    if m and head == "union":
        return _union([parse_type(a) for a in args])
    if m and head == "literal":
        try:
            values = ast.literal_eval("[" + m.group(2) + "]")
        except (ValueError, SyntaxError):
            _warn_unknown(raw)
            return TypeInfo({})
        return TypeInfo({"enum": values})
    if head in _ARRAYS:
        return TypeInfo(_array(args, tuple_like=head == "tuple"))
    if head in _OBJECTS:
        schema: dict[str, Any] = {"type": "object"}
        if len(args) == 2:
            value = parse_type(args[1]).schema
            if value:
                schema["additionalProperties"] = value
        return TypeInfo(schema)
    if not m and head in _SCALARS:
        return TypeInfo(dict(_SCALARS[head]))
    _warn_unknown(raw)
    return TypeInfo({})


_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "contains")
_SUBSCHEMA_LIST_KEYS = ("anyOf", "oneOf", "allOf", "prefixItems")


def normalize_schema(node: Any) -> Any:
    """Rewrite BFCL/xLAM type names inside a JSON-Schema-like object into JSON Schema, recursively.

    ``dict`` -> object, ``float`` -> number, ``tuple`` -> array, ``any`` -> no ``type``; JSON Schema
    names pass unchanged; Python-style strings (``List[str]``) go through ``parse_type``. Other
    keywords (description, enum, default, required, ...) are kept.
    """
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = _normalize_type(node["type"], node) if "type" in node else {}
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: normalize_schema(sub) for name, sub in value.items()}
        elif key in _SUBSCHEMA_KEYS and isinstance(value, dict):
            out[key] = normalize_schema(value)
        elif (key in _SUBSCHEMA_LIST_KEYS or key == "items") and isinstance(value, list):
            out[key] = [normalize_schema(v) for v in value]
        elif key != "type":
            out[key] = value
    return out


def _normalize_type(value: Any, node: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema for one ``type`` value; keywords the node states itself are not added."""
    if isinstance(value, list):
        names = [_normalize_type(v, {}).get("type") for v in value]
        if not all(isinstance(n, str) for n in names):
            return {}  # a member without a JSON type (``any``) makes the whole union unconstrained
        return {"type": list(dict.fromkeys(names))}
    if not isinstance(value, str):
        _warn_unknown(repr(value))
        return {}
    if value in _JSON_TYPES:
        return {"type": value}
    parsed = parse_type(value).schema
    return {k: v for k, v in parsed.items() if k == "type" or k not in node}
