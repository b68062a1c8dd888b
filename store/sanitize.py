"""Make any value storable identically on SQLite and PostgreSQL (docs/reliability.md, R8).

The column types in ``store.models`` (``SafeString``, ``SafeText``, ``SafeJSON``) call these
functions on every value bound to a string or JSON column, so the policy is applied in exactly one
place, whatever the write path (ORM, Core insert, update, the writer's batches, filters).

Policy (the stored value is the same on both backends):

* ``U+0000`` (NUL) in any string, JSON key or JSON string value → ``U+FFFD``. PostgreSQL text and
  JSONB reject NUL; SQLite would keep it.
* Surrogate code points: a high+low pair written as two code units is joined into the character it
  encodes; any remaining lone surrogate → ``U+FFFD``. psycopg cannot encode lone surrogates to
  UTF-8 and SQLite would store invalid UTF-8.
* Non-finite floats (NaN, +Infinity, -Infinity) inside JSON → ``null``. JSONB rejects them and
  ``json.dumps`` would emit invalid JSON.
* Inside JSON: tuples become lists, dict keys that are not strings are kept as ``json.dumps``
  writes them, and any other non-JSON object is stored as ``str(obj)``.
* Integers bound to an ``integer`` column are clamped to the signed 32-bit range (PostgreSQL
  rejects larger values, SQLite would keep them); NaN → 0. Integers inside JSON are kept exactly.
* Strings bound to a length-limited column (``String(n)``) are cut to ``n`` characters, because
  PostgreSQL enforces ``varchar(n)`` and SQLite does not.

Known difference that the policy does not hide: JSONB keeps numbers as ``numeric``, so a float with
an integral value written in exponent form (``1e20``) reads back as an ``int`` on PostgreSQL (equal
under ``==``), and JSONB does not keep key order or duplicate keys.

This module does not validate anything and never raises on odd input.
"""

from __future__ import annotations

import math
import re
from typing import Any

REPLACEMENT = "\ufffd"

_SUSPECT = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """Return ``value`` with NUL and lone surrogates replaced by U+FFFD (pairs are joined)."""
    if _SUSPECT.search(value) is None:
        return value
    if "\x00" in value:
        value = value.replace("\x00", REPLACEMENT)
    if _SURROGATE.search(value) is not None:
        # UTF-16 round trip joins valid pairs; 'replace' turns what is left alone into U+FFFD.
        value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return value


def clean_json(value: Any) -> Any:
    """Return a copy of a JSON-like value that both backends store and return identically."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            out[clean_text(key) if isinstance(key, str) else key] = clean_json(item)
        return out
    if isinstance(value, list | tuple):
        return [clean_json(item) for item in value]
    return clean_text(str(value))


def clean_limited(value: str, length: int | None) -> str:
    """``clean_text`` and then cut to ``length`` characters (for ``String(length)`` columns)."""
    value = clean_text(value)
    if length is not None and len(value) > length:
        value = value[:length]
    return value


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def clamp_int32(value: int | float) -> int:
    """``int(value)`` limited to the signed 32-bit range of an SQL ``integer`` column (NaN → 0)."""
    if isinstance(value, float) and not math.isfinite(value):
        return 0 if math.isnan(value) else (INT32_MAX if value > 0 else INT32_MIN)
    return max(INT32_MIN, min(INT32_MAX, int(value)))
