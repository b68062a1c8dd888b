"""Safe JSON Schema compilation (R11): every rejection, runtime regex bounds, no network, bounded cache."""

from __future__ import annotations

import socket
import time
import urllib.request
from typing import Any

import pytest
from referencing.exceptions import Unresolvable

import tools.schema as schema_mod
from tools.schema import (
    CACHE_SIZE,
    MAX_PATTERN_LENGTH,
    SchemaError,
    compile_schema,
    compile_tools,
    regex_budget,
    validate_tool_specs,
)
from tools.spec import ToolSpec
from tools.verifiers.base import VerificationBudget


def obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def rejected(schema: Any) -> str:
    with pytest.raises(SchemaError) as info:
        compile_schema(schema)
    return str(info.value)


# --- good schemas ---------------------------------------------------------------------------


def test_a_plain_tool_schema_compiles_and_reports_errors_with_paths_and_rules() -> None:
    compiled = compile_schema(
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
            "additionalProperties": False,
        }
    )
    assert compiled.errors({"city": "Paris", "unit": "celsius"}) == []
    errors = compiled.errors({"unit": "kelvin", "extra": 1})
    assert any(e.startswith("$.unit:") and "kelvin" in e and e.endswith("(enum)") for e in errors)
    assert any("'city' is a required property" in e and e.endswith("(required)") for e in errors)
    assert any("'extra' was unexpected" in e and e.endswith("(additionalProperties)") for e in errors)
    assert compiled.is_valid({"city": "Oslo"}) and not compiled.is_valid({})


def test_local_refs_resolve_and_validate_through_the_target() -> None:
    compiled = compile_schema(
        {
            "type": "object",
            "properties": {"when": {"$ref": "#/$defs/Date"}, "where": {"$ref": "#place"}},
            "$defs": {
                "Date": {"type": "string", "pattern": "^\\d{4}-\\d{2}-\\d{2}$"},
                "Place": {"$anchor": "place", "type": "string", "minLength": 2},
            },
        }
    )
    assert compiled.errors({"when": "2024-01-31", "where": "Rome"}) == []
    errors = compiled.errors({"when": "31/01/2024", "where": "R"})
    assert any(e.startswith("$.when:") and "(pattern)" in e for e in errors)
    assert any(e.startswith("$.where:") and "(minLength)" in e for e in errors)


def test_draft07_schema_with_definitions_is_supported() -> None:
    compiled = compile_schema(
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"n": {"$ref": "#/definitions/Count"}},
            "definitions": {"Count": {"type": "integer", "minimum": 0}},
        }
    )
    assert compiled.errors({"n": 3}) == []
    assert compiled.errors({"n": -1})[0].startswith("$.n:")


def test_a_small_bounded_repeat_of_a_repeating_group_is_allowed() -> None:
    compiled = compile_schema(obj(ip={"type": "string", "pattern": "^(\\d{1,3}\\.){3}\\d{1,3}$"}))
    assert compiled.errors({"ip": "10.0.0.1"}) == []
    assert compiled.errors({"ip": "10.0.0"}) != []


def test_root_id_with_a_remote_uri_resolves_local_refs_without_fetching() -> None:
    compiled = compile_schema(
        {"$id": "https://example.invalid/tool.json", "type": "object",
         "properties": {"a": {"$ref": "#/$defs/A"}}, "$defs": {"A": {"type": "integer"}}}
    )  # fmt: skip
    assert compiled.errors({"a": "x"})[0].startswith("$.a:")


# --- every rejection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    ["http://127.0.0.1:9/schema.json", "https://example.com/s.json#/x", "file:///etc/passwd", "other.json", "urn:x:y"],
)
def test_non_local_refs_are_rejected(ref: str) -> None:
    assert "only local references" in rejected(obj(a={"$ref": ref}))


def test_recursive_refs_are_rejected() -> None:
    tree = {
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/Node"}},
        "$defs": {
            "Node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}
        },
    }
    assert "recursive $ref" in rejected(tree)
    assert "recursive $ref" in rejected({"type": "object", "properties": {"me": {"$ref": "#"}}})


def test_ref_cycles_between_definitions_are_rejected() -> None:
    cycle = {"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"allOf": [{"$ref": "#/$defs/A"}]}}}
    assert "recursive $ref" in rejected(cycle)


def test_exponential_ref_expansion_is_rejected() -> None:
    defs: dict[str, Any] = {"D0": {"type": "integer"}}
    for i in range(1, 25):
        defs[f"D{i}"] = {"allOf": [{"$ref": f"#/$defs/D{i - 1}"}, {"$ref": f"#/$defs/D{i - 1}"}]}
    assert "expands this schema" in rejected({"$defs": defs, "$ref": "#/$defs/D24"})


def test_unresolvable_local_refs_and_dynamic_refs_are_rejected() -> None:
    assert "does not point to a subschema" in rejected(obj(a={"$ref": "#/$defs/Missing"}))
    assert "anchor" in rejected(obj(a={"$ref": "#nowhere"}))
    assert "$dynamicRef" in rejected(obj(a={"$dynamicRef": "#meta"}))
    assert "nested $id" in rejected(obj(a={"$id": "https://example.com/a", "type": "string"}))


def test_oversized_schema_is_rejected() -> None:
    assert "bytes as JSON" in rejected({"type": "object", "description": "x" * (70 * 1024)})


def test_too_deep_schema_is_rejected() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(20):
        deep = {"type": "object", "properties": {"a": deep}}
    assert "nested more than" in rejected(deep)


def test_self_referencing_python_object_is_rejected_not_a_crash() -> None:
    loop: dict[str, Any] = {"type": "object"}
    loop["properties"] = {"a": loop}
    assert "nested more than" in rejected(loop)


def test_too_many_properties_are_rejected() -> None:
    assert "properties; the limit" in rejected(obj(**{f"p{i}": {"type": "string"} for i in range(300)}))


@pytest.mark.parametrize("pattern", ["^(a+)+$", "(a*)*b", "^(\\w+\\s?)*$", "(?:x|y+){2,}", "((ab)+c)+"])
def test_nested_quantifier_patterns_are_rejected(pattern: str) -> None:
    assert "nested quantifiers" in rejected(obj(s={"type": "string", "pattern": pattern}))


@pytest.mark.parametrize(
    "pattern",
    ["(a|aa)+$|!", "^(a|aa)+$", "(a|a)*", "(\\w|\\d)+", "(foo|foobar)+", "(?:x|[a-z])*y", "(a|)+", "(?:a|b|ab){2,}"],
)
def test_ambiguous_alternation_under_a_repeat_is_rejected(pattern: str) -> None:
    assert "ambiguous alternation" in rejected(obj(s={"type": "string", "pattern": pattern}))
    assert "ambiguous alternation" in rejected({"type": "object", "patternProperties": {pattern: {}}})


@pytest.mark.parametrize(
    "pattern",
    ["^(cat|dog)s?$", "(foo|bar)+", "(ab|ac)+", "^([a-z]|[0-9])+$", "^(red|blue)(,(red|blue))*$", "(a|aa){1,3}"],
)
def test_exclusive_or_bounded_alternations_still_compile(pattern: str) -> None:
    compile_schema(obj(s={"type": "string", "pattern": pattern}))


def test_nested_quantifiers_in_pattern_properties_are_rejected() -> None:
    assert "nested quantifiers" in rejected({"type": "object", "patternProperties": {"^(a+)+$": {"type": "string"}}})


def test_overlong_and_invalid_patterns_are_rejected() -> None:
    assert "characters long" in rejected(obj(s={"type": "string", "pattern": "a" * (MAX_PATTERN_LENGTH + 1)}))
    assert "invalid regex" in rejected(obj(s={"type": "string", "pattern": "(unclosed"}))


def test_invalid_schemas_per_metaschema_are_rejected() -> None:
    assert "invalid schema" in rejected(obj(a={"type": "strin"}))
    assert "invalid schema" in rejected({"type": "object", "required": "city"})
    assert "unsupported $schema" in rejected({"$schema": "http://json-schema.org/draft-03/schema#"})


def test_non_json_schemas_are_rejected() -> None:
    assert "must be a JSON object" in rejected(["type", "object"])
    assert "not plain JSON" in rejected({"type": "object", "default": float("nan")})
    assert "not plain JSON" in rejected({"type": "object", "default": {1, 2}})


def test_unevaluated_properties_with_pattern_properties_is_rejected() -> None:
    schema = {"type": "object", "patternProperties": {"^x": {}}, "unevaluatedProperties": False}
    assert "unevaluatedProperties" in rejected(schema)


# --- runtime bounds -------------------------------------------------------------------------


SLOW = "^(?:a{1,10}){1,10}[bc]$"  # bounded repeats, no alternation: passes the static checks, yet backtracks


def test_a_backtracking_pattern_the_static_check_misses_is_cut_off_by_the_timeout() -> None:
    # the regex engine needs seconds for SLOW on 60 "a"s; each search stops after PATTERN_TIMEOUT_S
    compiled = compile_schema(obj(s={"type": "string", "pattern": SLOW}))
    assert compiled.errors({"s": "aaab"}) == []
    start = time.monotonic()
    errors = compiled.errors({"s": "a" * 60})
    assert time.monotonic() - start < 5
    assert len(errors) == 1 and "took longer" in errors[0]


def test_pattern_properties_and_additional_properties_use_the_bounded_engine() -> None:
    compiled = compile_schema(
        {"type": "object", "patternProperties": {SLOW: {"type": "integer"}}, "additionalProperties": False}
    )
    assert compiled.errors({"ab": 1}) == []
    assert any("(type)" in e for e in compiled.errors({"ab": "x"}))
    assert any("'zz' was unexpected" in e for e in compiled.errors({"zz": 1}))
    errors = compiled.errors({"a" * 60: 1})
    assert any("took longer" in e for e in errors)


def test_all_searches_of_a_request_share_one_regex_time_budget() -> None:
    # each search is cut at PATTERN_TIMEOUT_S, so 20 slow values alone would take 2 s; the budget
    # caps the total and the searches after it are refused at once, each with the budget's reason
    compiled = compile_schema(obj(s={"type": "array", "items": {"type": "string", "pattern": SLOW}}))
    values = {"s": ["a" * 60] * 20}
    budget = VerificationBudget(regex_s=0.25)
    start = time.monotonic()
    with regex_budget(budget):
        errors = compiled.errors(values)
    assert time.monotonic() - start < 1.0
    assert len(errors) == 20 and budget.regex_spent
    assert any("regex time budget of 0.25s is spent" in e for e in errors)
    assert compiled.errors({"s": ["aab"]}) == []  # outside the block no budget applies


# --- no network, ever -----------------------------------------------------------------------


def test_hostile_schemas_never_touch_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.setblocking(False)
    port = server.getsockname()[1]
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    url = f"http://127.0.0.1:{port}/schema.json"
    try:
        for hostile in (
            obj(a={"$ref": url}),
            {"$schema": url, "type": "object"},
            {"$id": url, "$ref": f"{url}#/x", "type": "object"},
            obj(a={"allOf": [{"$ref": url + "#/defs/a"}]}),
        ):
            with pytest.raises(SchemaError):
                compile_schema(hostile)
        # the registry underneath refuses every retrieval, whatever reaches it, also through jsonschema
        with pytest.raises(Unresolvable):
            schema_mod._REGISTRY.resolver().lookup(url)
        unchecked = schema_mod._DRAFTS[schema_mod.DEFAULT_DRAFT]({"$ref": url}, registry=schema_mod._REGISTRY)
        errors = schema_mod.CompiledSchema({"$ref": url}, "unchecked", unchecked).errors({})
        assert len(errors) == 1 and errors[0].startswith("$: could not be validated")
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()
    assert attempts == []


# --- the cache ------------------------------------------------------------------------------


def test_compiled_schemas_are_cached_by_content_hash() -> None:
    a = compile_schema({"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "integer"}}})
    b = compile_schema({"properties": {"y": {"type": "integer"}, "x": {"type": "string"}}, "type": "object"})
    assert a is b
    assert a.schema_hash == b.schema_hash


def test_a_cached_validator_is_immune_to_later_mutation_of_the_callers_dict() -> None:
    schema: dict[str, Any] = obj(x={"type": "string"})
    compiled = compile_schema(schema)
    schema["properties"]["x"]["type"] = "integer"
    assert compiled.errors({"x": "still a string"}) == []


def test_the_validator_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert schema_mod._CACHE.maxsize == CACHE_SIZE == 1024
    small = schema_mod._LRU(4)
    monkeypatch.setattr(schema_mod, "_CACHE", small)
    first = compile_schema(obj(p0={"type": "string"}))
    for i in range(1, 10):
        compile_schema(obj(**{f"p{i}": {"type": "string"}}))
        assert schema_mod.schema_cache_size() <= 4
    assert schema_mod.schema_cache_size() == 4
    assert compile_schema(obj(p0={"type": "string"})) is not first  # evicted, compiled again


def test_the_cache_evicts_the_least_recently_used_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema_mod, "_CACHE", schema_mod._LRU(2))
    a = compile_schema(obj(a={}))
    b = compile_schema(obj(b={}))
    assert compile_schema(obj(a={})) is a  # a is now the most recent
    compile_schema(obj(c={}))  # evicts b
    assert compile_schema(obj(a={})) is a
    assert compile_schema(obj(b={})) is not b


# --- tool lists -----------------------------------------------------------------------------


def test_validate_tool_specs_accepts_good_tools() -> None:
    tools = [ToolSpec("a", parameters=obj(x={"type": "string"})), ToolSpec("b")]
    validate_tool_specs(tools)
    assert set(compile_tools(tools)) == {"a", "b"}


def test_validate_tool_specs_rejects_duplicate_names() -> None:
    with pytest.raises(SchemaError) as info:
        validate_tool_specs([ToolSpec("a"), ToolSpec("b"), ToolSpec("a")])
    assert "duplicate tool name 'a'" in str(info.value)


def test_validate_tool_specs_names_the_tool_with_a_bad_schema() -> None:
    with pytest.raises(SchemaError) as info:
        validate_tool_specs([ToolSpec("good"), ToolSpec("evil", parameters=obj(a={"$ref": "http://x/y"}))])
    assert str(info.value).startswith("tool 'evil': parameters:")
    assert info.value.tool == "evil"


def test_validate_tool_specs_requires_object_parameters() -> None:
    with pytest.raises(SchemaError) as info:
        validate_tool_specs([ToolSpec("s", parameters={"type": "string"})])
    assert "must be an object schema" in str(info.value)
