"""Safe compilation of client-supplied JSON Schemas (docs/reliability.md, R11).

The API compiles every request's tool schemas here before any model call; the schema verifier and
the learner (re-running verifiers offline) use the same compiled validators. A schema is rejected
with a ``SchemaError`` that says what to change when it is too big or too deep, has too many
properties, refers to anything but itself (``$ref`` other than ``#...``), is recursive, would
expand exponentially through ``$ref``, has a regex that is too long or has nested quantifiers, or
is invalid against its metaschema. At validation time every regex runs on the ``regex`` engine
with a timeout, so a pattern the static check misses still cannot hang a request.

Deliberately not done: fetching anything (the ``referencing`` registry refuses every retrieval),
``$dynamicRef``/``$recursiveRef``, nested ``$id``, and ``format`` assertions (formats are
annotations, as in JSON Schema's default vocabulary).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import itertools
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import jsonschema
import regex
from jsonschema.exceptions import SchemaError as _JSSchemaError
from jsonschema.exceptions import ValidationError as _JSValidationError
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable

from tools.spec import ToolSpec, canonical_json
from tools.verifiers.base import VerificationBudget

MAX_SCHEMA_BYTES = 64 * 1024
MAX_DEPTH = 32
MAX_PROPERTIES = 256
MAX_PATTERN_LENGTH = 512
MAX_EXPANDED_SUBSCHEMAS = 20_000
PATTERN_TIMEOUT_S = 0.1
CACHE_SIZE = 1024
MAX_ERRORS = 20
MAX_MESSAGE_CHARS = 300


class SchemaError(ValueError):
    """A schema we refuse to compile; the message says why (and names the tool when known)."""

    def __init__(self, message: str, *, tool: str | None = None) -> None:
        super().__init__(message)
        self.tool = tool


# ---------------------------------------------------------------------------------------------
# Regex safety: a static check at compile time, a timeout at validation time.


def _read_quantifier(pattern: str, i: int) -> tuple[int, int | None, int] | None:
    """If a quantifier starts at ``pattern[i]``: (min, max or None if unbounded, index after it)."""
    if i >= len(pattern):
        return None
    c = pattern[i]
    if c in "*+?":
        low, high, end = (0 if c != "+" else 1), (1 if c == "?" else None), i + 1
    elif c == "{":
        m = regex.match(r"\{(\d*)(,(\d*))?\}", pattern[i:])
        if m is None or (m.group(1) == "" and not m.group(3)):
            return None  # a literal "{"
        low = int(m.group(1) or 0)
        upper = m.group(1) if m.group(2) is None else m.group(3)
        high = int(upper) if upper else None
        end = i + m.end()
    else:
        return None
    if end < len(pattern) and pattern[end] in "?+":  # lazy or possessive suffix
        end += 1
    return low, high, end


def _varies(low: int, high: int | None) -> bool:
    """A repeat whose count can vary past one: the source of ambiguous backtracking."""
    return high is None or (high > 1 and high != low)


def _nested_quantifier(pattern: str) -> bool:  # noqa: C901 (a small regex scanner)
    """True if a repeated group contains a variable repeat, e.g. ``(a+)+`` or ``(\\w*\\s?)*``: the
    shape of catastrophic backtracking. A small bounded outer repeat such as ``(\\d{1,3}\\.){3}``
    (at most 10) and a fixed inner count such as ``(ab{2})+`` are allowed."""
    varies = [False]  # per open group: does it contain a variable repeat?
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
        elif c == "[":
            i = _skip_class(pattern, i)
        elif c == "(":
            varies.append(False)
            i += 1
            if i < n and pattern[i] == "?":  # skip a group prefix such as ?: ?= ?<name> ?P<name>
                while i < n and pattern[i] not in ":)=!>'":
                    i += 1
                if i < n and pattern[i] != ")":
                    i += 1
        elif c == ")":
            if len(varies) < 2:
                raise SchemaError(f"pattern {pattern!r}: unsupported regex construct")
            inner = varies.pop()
            quantifier = _read_quantifier(pattern, i + 1)
            i += 1
            if quantifier is not None:
                low, high, i = quantifier
                if inner and (high is None or high > 10):
                    return True
                inner = inner or _varies(low, high)
            varies[-1] = varies[-1] or inner
        else:
            quantifier = _read_quantifier(pattern, i)
            if quantifier is None:
                i += 1
            else:
                low, high, i = quantifier
                varies[-1] = varies[-1] or _varies(low, high)
    return False


def _skip_class(pattern: str, i: int) -> int:
    """The index after the character class that starts at ``pattern[i]`` ("[")."""
    n = len(pattern)
    i += 1
    if i < n and pattern[i] == "^":
        i += 1
    if i < n and pattern[i] == "]":
        i += 1
    while i < n and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1


def _repeated_alternations(pattern: str) -> Iterator[list[str]]:
    """The alternatives of every group with a top-level ``|`` that is repeated without a small bound,
    e.g. ``["a", "aa"]`` for ``(a|aa)+``."""
    groups: list[tuple[int, list[int]]] = []  # per open group: where its content starts, its top-level bars
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
        elif c == "[":
            i = _skip_class(pattern, i)
        elif c == "(":
            i += 1
            if i < n and pattern[i] == "?":
                while i < n and pattern[i] not in ":)=!>'":
                    i += 1
                if i < n and pattern[i] != ")":
                    i += 1
            groups.append((i, []))
        elif c == "|" and groups:
            groups[-1][1].append(i)
            i += 1
        elif c == ")" and groups:
            start, bars = groups.pop()
            quantifier = _read_quantifier(pattern, i + 1)
            if bars and quantifier is not None and (quantifier[1] is None or quantifier[1] > 10):
                cuts = [start - 1, *bars, i]
                yield [pattern[a + 1 : b] for a, b in itertools.pairwise(cuts)]
            i += 1
        else:
            i += 1


# Sample characters for the overlap test: ASCII and a few non-ASCII letters, digits and spaces.
_SAMPLE = [chr(c) for c in range(128)] + ["é", "ß", "Ж", "中", "٣", "\u00a0", "\u2003", "😀"]
_MAX_FRONTIER = 64
_MAX_OVERLAP_DEPTH = 6
_MAX_OVERLAP_WORK = 50_000  # partial matches per pattern; past it the pattern counts as ambiguous


class _TooComplex(Exception):
    pass


def _overlap(a: Any, b: Any, work: list[int]) -> bool:
    """Whether some text matched by one alternative is, or starts, a match of the other: both can
    then consume the same characters, and a repeat of the group backtracks exponentially. Searched
    breadth-first over sample characters; undecided after a few characters counts as overlapping."""
    if a.fullmatch("") or b.fullmatch(""):
        return True  # an alternative that matches nothing lets the repeat loop on the empty string
    frontier = [""]
    for _ in range(_MAX_OVERLAP_DEPTH):
        grown: list[str] = []
        for prefix in frontier:
            work[0] += len(_SAMPLE)
            if work[0] > _MAX_OVERLAP_WORK:
                raise _TooComplex
            for char in _SAMPLE:
                text = prefix + char
                in_a = a.fullmatch(text, partial=True)
                in_b = in_a and b.fullmatch(text, partial=True)
                if in_a is None or in_b is None:
                    continue
                if not in_a.partial or not in_b.partial:
                    return True  # one alternative matches all of it, the other matches it or goes on
                grown.append(text)
        if not grown:
            return False
        if len(grown) > _MAX_FRONTIER:
            return True
        frontier = grown
    return True


def _ambiguous_alternation(pattern: str) -> tuple[str, str] | None:
    """Two alternatives of a repeated group that can match the same text (``(a|a)*``, ``(\\w|\\d)+``)
    or where one is a prefix of the other (``(a|aa)+``): the other shape of catastrophic backtracking.
    An alternative that does not compile alone (a backreference to an outer group) is left to the
    timeout; a pattern too costly to decide counts as ambiguous."""
    work = [0]
    for alternatives in _repeated_alternations(pattern):
        compiled: list[tuple[str, Any, frozenset[str]]] = []
        for text in alternatives:
            try:
                alternative = regex.compile(text)
            except (regex.error, ValueError, OverflowError):
                continue
            work[0] += len(_SAMPLE)
            firsts = frozenset(c for c in _SAMPLE if alternative.fullmatch(c, partial=True))
            compiled.append((text, alternative, firsts))
        try:
            for index, (text_a, a, firsts_a) in enumerate(compiled):
                for text_b, b, firsts_b in compiled[index + 1 :]:
                    if (firsts_a & firsts_b or not firsts_a or not firsts_b) and _overlap(a, b, work):
                        return text_a, text_b
        except _TooComplex:
            return alternatives[0], "…"
    return None


def check_pattern(pattern: Any, where: str) -> None:
    """Raise SchemaError unless ``pattern`` is a short regex without nested quantifiers or a repeated
    ambiguous alternation."""
    if not isinstance(pattern, str):
        raise SchemaError(f"{where}: a pattern must be a string")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise SchemaError(f"{where}: pattern is {len(pattern)} characters long; the limit is {MAX_PATTERN_LENGTH}")
    try:
        regex.compile(pattern)
    except (regex.error, ValueError, OverflowError) as exc:
        raise SchemaError(f"{where}: invalid regex {pattern!r}: {exc}") from None
    if _nested_quantifier(pattern):
        raise SchemaError(
            f"{where}: pattern {pattern!r} repeats a group that itself repeats (nested quantifiers "
            "can backtrack catastrophically); rewrite it without a quantified group inside a quantifier"
        )
    ambiguous = _ambiguous_alternation(pattern)
    if ambiguous is not None:
        raise SchemaError(
            f"{where}: pattern {pattern!r} repeats an ambiguous alternation: {ambiguous[0]!r} and {ambiguous[1]!r} "
            "can match the same text (or one starts the other), which can backtrack catastrophically; "
            "make the alternatives exclusive or drop the repeat"
        )


@lru_cache(maxsize=1024)
def _compiled_pattern(pattern: str) -> Any:
    return regex.compile(pattern)


_BUDGET: contextvars.ContextVar[VerificationBudget | None] = contextvars.ContextVar("rrr_regex_budget", default=None)


@contextlib.contextmanager
def regex_budget(budget: VerificationBudget | None) -> Iterator[None]:
    """Charge every pattern search made inside (in this thread or context) to ``budget``."""
    token = _BUDGET.set(budget)
    try:
        yield
    finally:
        _BUDGET.reset(token)


class _BudgetSpent(TimeoutError):
    """The request's regex (or total verification) budget is spent: no search is started."""


def _search(pattern: str, text: str) -> bool:
    """``re.search`` semantics on the ``regex`` engine, bounded by PATTERN_TIMEOUT_S and by the
    request's regex budget when one is set (``regex_budget``); TimeoutError when cut off."""
    budget = _BUDGET.get()
    if budget is None:
        return _compiled_pattern(pattern).search(text, timeout=PATTERN_TIMEOUT_S) is not None
    left = budget.regex_left()
    if left <= 0:
        raise _BudgetSpent(budget.reason())
    started = time.perf_counter()
    try:
        return _compiled_pattern(pattern).search(text, timeout=min(PATTERN_TIMEOUT_S, left)) is not None
    finally:
        budget.charge_regex(time.perf_counter() - started)


def _timeout_error(pattern: str) -> Any:
    budget = _BUDGET.get()
    if budget is not None and budget.regex_spent:
        return _JSValidationError(f"pattern {pattern!r} was not checked: {budget.reason()}")
    return _JSValidationError(f"pattern {pattern!r} took longer than {PATTERN_TIMEOUT_S}s on this value")


def _pattern_keyword(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "string"):
        return
    try:
        if not _search(pattern, instance):
            yield _JSValidationError(f"{instance!r} does not match {pattern!r}")
    except TimeoutError:
        yield _timeout_error(pattern)


def _pattern_properties_keyword(validator: Any, patterns: dict[str, Any], instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            try:
                matched = _search(pattern, key)
            except TimeoutError:
                yield _timeout_error(pattern)
                continue
            if matched:
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties_keyword(validator: Any, additional: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = []
    for key in instance:
        if key in properties:
            continue
        try:
            if any(_search(p, key) for p in patterns):
                continue
        except TimeoutError:
            yield _timeout_error("|".join(patterns))
            continue
        extras.append(key)
    if validator.is_type(additional, "object"):
        for key in extras:
            yield from validator.descend(instance[key], additional, path=key)
    elif additional is False and extras:
        names = ", ".join(repr(k) for k in sorted(extras))
        verb = "was" if len(extras) == 1 else "were"
        yield _JSValidationError(f"Additional properties are not allowed ({names} {verb} unexpected)")


_SAFE_KEYWORDS = {
    "pattern": _pattern_keyword,
    "patternProperties": _pattern_properties_keyword,
    "additionalProperties": _additional_properties_keyword,
}
_DRAFTS: dict[str, Any] = {
    uri: jsonschema.validators.extend(cls, _SAFE_KEYWORDS)
    for uri, cls in [
        ("json-schema.org/draft-04/schema", jsonschema.Draft4Validator),
        ("json-schema.org/draft-06/schema", jsonschema.Draft6Validator),
        ("json-schema.org/draft-07/schema", jsonschema.Draft7Validator),
        ("json-schema.org/draft/2019-09/schema", jsonschema.Draft201909Validator),
        ("json-schema.org/draft/2020-12/schema", jsonschema.Draft202012Validator),
    ]
}
DEFAULT_DRAFT = "json-schema.org/draft/2020-12/schema"


def _refuse_retrieval(uri: str) -> Resource[Any]:
    """The registry's only way to fetch a resource: never (no network, no files)."""
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


_REGISTRY: Registry[Any] = Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]


# ---------------------------------------------------------------------------------------------
# Structural checks: depth, subschemas, $ref resolution, recursion and expansion.

_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies")
_SCHEMA_ONE = (
    "additionalProperties", "additionalItems", "unevaluatedItems", "unevaluatedProperties", "contains",
    "propertyNames", "not", "if", "then", "else", "items",
)  # fmt: skip
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _json_depth(value: Any) -> int:
    """Nesting depth of containers, iteratively (a self-referencing Python object stops at the cap)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _subschemas(schema: Any) -> Iterator[tuple[str, str | None, Any]]:
    """Every subschema as (JSON pointer, parent pointer, subschema), in document order."""
    stack: list[tuple[str, str | None, Any]] = [("", None, schema)]
    while stack:
        pointer, parent, node = stack.pop()
        yield pointer, parent, node
        if not isinstance(node, dict):
            continue
        children: list[tuple[str, str | None, Any]] = []
        for key, value in node.items():
            base = f"{pointer}/{_escape(key)}"
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                children += [
                    (f"{base}/{_escape(k)}", pointer, v) for k, v in value.items() if isinstance(v, dict | bool)
                ]
            elif key in _SCHEMA_LISTS and isinstance(value, list):
                children += [(f"{base}/{i}", pointer, v) for i, v in enumerate(value) if isinstance(v, dict | bool)]
            elif key in _SCHEMA_ONE and isinstance(value, dict | bool):
                children.append((base, pointer, value))
        stack.extend(reversed(children))


def _resolve_ref(ref: str, where: str, positions: dict[str, Any], anchors: dict[str, str]) -> str:
    if not ref.startswith("#"):
        raise SchemaError(
            f"{where}: $ref {ref!r} is not allowed: only local references such as '#/$defs/Name' are "
            "resolved (nothing is fetched from the network or the file system)"
        )
    fragment = unquote(ref[1:])
    if fragment == "" or fragment.startswith("/"):
        target = fragment
        if target not in positions:
            raise SchemaError(f"{where}: $ref {ref!r} does not point to a subschema of this schema")
        return target
    if fragment in anchors:
        return anchors[fragment]
    raise SchemaError(f"{where}: $ref {ref!r} names an anchor that this schema does not define")


# Complexity: one branch per schema keyword that can recurse.
def _check_structure(schema: dict[str, Any], draft: str) -> None:  # noqa: C901
    positions: dict[str, Any] = {}
    children: dict[str, list[str]] = {}
    anchors: dict[str, str] = {}
    has_pattern_properties = has_unevaluated_properties = False
    for pointer, parent, node in _subschemas(schema):
        positions[pointer] = node
        children.setdefault(pointer, [])
        if parent is not None:
            children[parent].append(pointer)
        if not isinstance(node, dict):
            continue
        where = f"schema at #{pointer}"
        for keyword in ("$dynamicRef", "$recursiveRef"):
            if keyword in node:
                raise SchemaError(f"{where}: {keyword} is not supported (dynamic references allow recursion)")
        id_keyword = "id" if draft.endswith("draft-04/schema") else "$id"
        if parent is not None and id_keyword in node:
            raise SchemaError(f"{where}: a nested {id_keyword} is not supported; keep one schema resource")
        if "$ref" in node and not isinstance(node["$ref"], str):
            raise SchemaError(f"{where}: $ref must be a string")
        if isinstance(node.get("$anchor"), str):
            anchors[node["$anchor"]] = pointer
        props = node.get("properties")
        if isinstance(props, dict) and len(props) > MAX_PROPERTIES:
            raise SchemaError(f"{where}: {len(props)} properties; the limit is {MAX_PROPERTIES}")
        if "pattern" in node:
            check_pattern(node["pattern"], f"{where}/pattern")
        if isinstance(node.get("patternProperties"), dict):
            has_pattern_properties = True
            for pattern in node["patternProperties"]:
                check_pattern(pattern, f"{where}/patternProperties")
        has_unevaluated_properties = has_unevaluated_properties or "unevaluatedProperties" in node
    if has_pattern_properties and has_unevaluated_properties:
        raise SchemaError("unevaluatedProperties cannot be combined with patternProperties in one schema")

    refs = {
        pointer: _resolve_ref(node["$ref"], f"schema at #{pointer}", positions, anchors)
        for pointer, node in positions.items()
        if isinstance(node, dict) and "$ref" in node
    }
    _check_expansion(children, refs)


def _check_expansion(children: dict[str, list[str]], refs: dict[str, str]) -> None:
    """Reject recursion (a cycle through ``$ref``) and schemas that ``$ref`` expands past the cap."""

    def edges(pointer: str) -> list[str]:
        return children[pointer] + ([refs[pointer]] if pointer in refs else [])

    size: dict[str, int] = {}
    in_progress = {""}
    stack: list[tuple[str, Iterator[str]]] = [("", iter(edges("")))]
    while stack:
        pointer, pending = stack[-1]
        nxt = next(pending, None)
        if nxt is None:
            stack.pop()
            in_progress.discard(pointer)
            size[pointer] = 1 + sum(size[child] for child in edges(pointer))
            if size[pointer] > MAX_EXPANDED_SUBSCHEMAS:
                raise SchemaError(
                    f"$ref expands this schema to more than {MAX_EXPANDED_SUBSCHEMAS} subschemas; "
                    "reference fewer definitions or inline them"
                )
        elif nxt in in_progress:  # only a $ref edge can reach a schema that is still open
            raise SchemaError(f"recursive $ref: #{pointer} refers back to #{nxt}; recursive schemas are not supported")
        elif nxt not in size:
            in_progress.add(nxt)
            stack.append((nxt, iter(edges(nxt))))


# ---------------------------------------------------------------------------------------------
# Compilation and the validator cache.


def _short(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class CompiledSchema:
    """A validator for one safe schema. ``errors`` never raises on any JSON instance."""

    def __init__(self, schema: dict[str, Any], schema_hash: str, validator: Any) -> None:
        self.schema = schema
        self.schema_hash = schema_hash
        self._validator = validator

    def violations(self, instance: Any, *, limit: int = MAX_ERRORS) -> list[Violation]:
        """The violations, each with its JSON path, a short message and the failing keyword; [] when valid."""
        found: list[Violation] = []
        try:
            for error in self._validator.iter_errors(instance):
                message = _short(error.message)
                keyword = str(error.validator)
                found.append(Violation(_violation_path(error.json_path, keyword, error.message), message, keyword))
                if len(found) >= limit:
                    break
        except (RecursionError, Unresolvable) as exc:  # bounded by the caps; kept as data if reached
            found.append(Violation("$", f"could not be validated: {_short(str(exc))}", "unvalidated"))
        return found

    def errors(self, instance: Any, *, limit: int = MAX_ERRORS) -> list[str]:
        """Human-readable violations, each ``"<JSON path>: <message> (<keyword>)"``; [] when valid."""
        found = []
        for violation in self.violations(instance, limit=limit):
            if violation.keyword == "unvalidated":
                found.append(f"{violation.path}: {violation.message}")
            else:
                found.append(f"{_json_path_of(violation)}: {violation.message} ({violation.keyword})")
        return found

    def is_valid(self, instance: Any) -> bool:
        return not self.errors(instance, limit=1)


@dataclass(frozen=True)
class Violation:
    """One schema violation: ``path`` is the JSON path of the offending value (for ``required`` and
    ``additionalProperties``, of the missing or unexpected property itself), ``keyword`` the failing
    schema keyword (``unvalidated`` if validation gave up)."""

    path: str
    message: str
    keyword: str

    @property
    def timed_out(self) -> bool:
        """A ``pattern`` that was not checked in time (per search, or the request's regex budget)."""
        return self.keyword == "pattern" and ("was not checked" in self.message or "took longer than" in self.message)


_NAMED_PROPERTY = re.compile(r"'((?:[^'\\]|\\.)*)'")


def _violation_path(json_path: str, keyword: str, message: str) -> str:
    if keyword in ("required", "additionalProperties", "unevaluatedProperties", "dependentRequired"):
        named = _NAMED_PROPERTY.search(message)
        if named:
            return f"{json_path}.{named.group(1)}"
    return json_path


def _json_path_of(violation: Violation) -> str:
    """The path as ``errors`` always printed it: the parent object for required/additional properties."""
    if violation.keyword in ("required", "additionalProperties", "unevaluatedProperties", "dependentRequired"):
        return violation.path.rsplit(".", 1)[0]
    return violation.path


class _LRU:
    """A small thread-safe LRU of compiled schemas keyed by the schema's canonical hash."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[str, CompiledSchema] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> CompiledSchema | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, value: CompiledSchema) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_CACHE = _LRU(CACHE_SIZE)


def schema_cache_size() -> int:
    """How many compiled schemas the cache holds now (at most CACHE_SIZE)."""
    return len(_CACHE)


def clear_schema_cache() -> None:
    _CACHE.clear()


def compile_schema(schema: dict[str, Any]) -> CompiledSchema:
    """Compile a client-supplied JSON Schema safely, or raise SchemaError saying what to change."""
    if not isinstance(schema, dict):
        raise SchemaError(f"a schema must be a JSON object, got {type(schema).__name__}")
    depth = _json_depth(schema)
    if depth > MAX_DEPTH:
        raise SchemaError(f"schema is nested more than {MAX_DEPTH} levels deep")
    try:
        text = canonical_json(schema)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"schema is not plain JSON: {exc}") from None
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_SCHEMA_BYTES:
        raise SchemaError(f"schema is {size} bytes as JSON; the limit is {MAX_SCHEMA_BYTES}")
    schema_hash = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()
    cached = _CACHE.get(schema_hash)
    if cached is not None:
        return cached

    own_copy: dict[str, Any] = json.loads(text)
    declared = own_copy.get("$schema")
    if declared is None:
        draft = DEFAULT_DRAFT
    elif isinstance(declared, str):
        draft = declared.removeprefix("https://").removeprefix("http://").rstrip("#")
        if draft not in _DRAFTS:
            raise SchemaError(f"unsupported $schema {declared!r}; use draft-04, -06, -07, 2019-09 or 2020-12")
    else:
        raise SchemaError("$schema must be a string")
    _check_structure(own_copy, draft)
    cls = _DRAFTS[draft]
    try:
        cls.check_schema(own_copy)
    except _JSSchemaError as exc:
        raise SchemaError(f"invalid schema at {exc.json_path}: {_short(exc.message)}") from None
    compiled = CompiledSchema(own_copy, schema_hash, cls(own_copy, registry=_REGISTRY))
    _CACHE.put(schema_hash, compiled)
    return compiled


def compile_tools(tools: list[ToolSpec]) -> dict[str, CompiledSchema]:
    """Compile every tool's parameters schema, keyed by tool name; SchemaError names the tool."""
    compiled: dict[str, CompiledSchema] = {}
    for index, tool in enumerate(tools):
        if not isinstance(tool, ToolSpec):
            raise SchemaError(f"tool {index + 1} is a {type(tool).__name__}, not a ToolSpec")
        if not isinstance(tool.name, str) or not tool.name.strip():
            raise SchemaError(f"tool {index + 1} needs a non-empty name")
        if tool.name in compiled:
            raise SchemaError(f"duplicate tool name {tool.name!r}: tool names must be unique", tool=tool.name)
        params = tool.parameters
        if isinstance(params, dict) and params.get("type", "object") != "object":
            raise SchemaError(
                f'tool {tool.name!r}: parameters must be an object schema ("type": "object"), '
                f"got type {params.get('type')!r}",
                tool=tool.name,
            )
        try:
            compiled[tool.name] = compile_schema(params)
        except SchemaError as exc:
            raise SchemaError(f"tool {tool.name!r}: parameters: {exc}", tool=tool.name) from None
    return compiled


def validate_tool_specs(tools: list[ToolSpec]) -> None:
    """Raise SchemaError (naming the tool) unless every schema compiles and names are unique."""
    compile_tools(tools)
