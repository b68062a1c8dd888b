"""R10/R11: limits and unsafe schemas are refused with 4xx in OpenAI shape, fast, with no model call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import ADMIN, INFER, MESSAGES, TOOLS, Rrr, running

LIMITS = dict(
    max_body_bytes=64 * 1024,
    max_messages=8,
    max_tools=4,
    max_schema_bytes=2048,
    max_schema_depth=8,
    max_json_depth=16,
    max_tokens_cap=100,
    max_client_retries=1,
)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rrr]:
    with running(tmp_path_factory.mktemp("limits"), **LIMITS) as rrr:
        yield rrr


def _tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def _deep_json(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


BASE: dict[str, Any] = {"model": "rrr", "messages": MESSAGES, "tools": TOOLS}
# Each case changes BASE (a None removes the field) and names the expected status and error param.
CASES: dict[str, tuple[dict[str, Any], int, str | None]] = {
    "too_many_messages": ({"messages": MESSAGES * 9}, 400, "messages"),
    "no_messages": ({"messages": []}, 400, "messages"),
    "bad_role": ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages"),
    "too_many_tools": ({"tools": [_tool(f"t{i}", {"type": "object"}) for i in range(5)]}, 400, "tools"),
    "empty_tools": ({"tools": []}, 400, "tools"),
    "schema_too_big": ({"tools": [_tool("big", {"type": "object", "description": "x" * 3000})]}, 400, "tools"),
    "schema_too_deep": ({"tools": [_tool("deep", _nested(5))]}, 400, "tools"),
    "remote_ref": ({"tools": [_tool("r", {"$ref": "https://example.com/schema.json"})]}, 400, "tools"),
    "recursive_ref": ({"tools": [_tool("r", {"type": "object", "properties": {"a": {"$ref": "#"}}})]}, 400, "tools"),
    "nested_quantifier": (
        {"tools": [_tool("p", {"type": "object", "properties": {"a": {"type": "string", "pattern": "(a+)+$"}}})]},
        400,
        "tools",
    ),
    "invalid_schema": ({"tools": [_tool("bad", {"type": "object", "properties": {"a": {"type": 5}}})]}, 400, "tools"),
    "duplicate_tool_names": ({"tools": [TOOLS[0], TOOLS[0]]}, 400, "tools"),
    "json_too_deep": ({"metadata": _deep_json(20)}, 400, None),
    "n_is_2": ({"n": 2}, 400, "n"),
    "max_tokens_over_cap": ({"max_tokens": 101}, 400, "max_tokens"),
    "max_completion_tokens_over_cap": ({"max_completion_tokens": 1000}, 400, "max_completion_tokens"),
    "max_tokens_zero": ({"max_tokens": 0}, 400, "max_tokens"),
    "temperature_out_of_range": ({"temperature": 7}, 400, "temperature"),
    "tool_choice_unknown_tool": (
        {"tool_choice": {"type": "function", "function": {"name": "nope"}}},
        400,
        "tool_choice",
    ),
    "tool_choice_without_tools": ({"tools": None, "tool_choice": "required"}, 400, "tool_choice"),
    "stream_not_bool": ({"stream": "yes"}, 400, "stream"),
    "rrr_not_object": ({"rrr": "fast"}, 400, "rrr"),
    "rrr_unknown_field": ({"rrr": {"verifer": "schema"}}, 400, "rrr"),
    "rrr_bad_verifier": ({"rrr": {"verifier": "magic"}}, 400, "rrr.verifier"),
    "rrr_execution_outside_allowed_modules": (
        {"rrr": {"verifier": {"type": "execution", "functions": {"get_weather": "os:system"}}}},
        400,
        "rrr.verifier",
    ),
    "rrr_reference_without_expected": ({"rrr": {"verifier": "reference"}}, 400, "rrr.expected_tool_calls"),
    "rrr_bad_expected": ({"rrr": {"expected_tool_calls": "Paris"}}, 400, "rrr.expected_tool_calls"),
    "rrr_too_many_retries": ({"rrr": {"max_retries": 5}}, 400, "rrr.max_retries"),
    "unknown_model": ({"model": "gpt-17"}, 404, "model"),
}


def _rejected_count(rrr: Rrr) -> float:
    with rrr.http(None) as http:
        text = http.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("rrr_rejected_requests_total{")
    )


@pytest.mark.parametrize("case", list(CASES))
def test_limit_is_a_4xx_without_a_model_call(limited: Rrr, case: str) -> None:
    change, status, param = CASES[case]
    limited.reset(limited.upstream.script)
    before = _rejected_count(limited)
    response = limited.chat(**change)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["message"]
    assert limited.upstream.calls() == 0
    assert _rejected_count(limited) == before + 1


def _raw(rrr: Rrr, content: bytes | Iterator[bytes], headers: dict[str, str] | None = None) -> httpx.Response:
    return rrr.http(INFER).post(
        "/v1/chat/completions", content=content, headers={"Content-Type": "application/json", **(headers or {})}
    )


def test_body_over_the_cap_is_a_413_before_parsing(limited: Rrr) -> None:
    big = json.dumps({**BASE, "messages": [{"role": "user", "content": "x" * 70_000}]}).encode()
    response = _raw(limited, big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap applies while reading
        yield big[:40_000]
        yield big[40_000:]

    response = _raw(limited, chunks())
    assert response.status_code == 413
    assert limited.upstream.calls() == 0


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{",
        b"[1, 2]",
        b'{"messages": NaN}',
        b"\xff\xfe",
        b'"just a string"',
        b'{"model": "rrr", "messages": [{"role": "user", "content": Infinity}]}',
    ],
)
def test_invalid_json_is_a_400(limited: Rrr, payload: bytes) -> None:
    response = _raw(limited, payload)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert limited.upstream.calls() == 0


def test_rejections_are_stored_as_rejected_episodes(tmp_path: Path) -> None:
    with running(tmp_path, **LIMITS) as rrr:
        assert rrr.chat(n=3).status_code == 400
        rrr.flush()
        with rrr.http(ADMIN) as http:
            rejected = http.get("/v1/episodes", params={"status": "rejected"}).json()["data"]
        assert len(rejected) == 1
        assert rejected[0]["error"].startswith("400:") and rejected[0]["client_key_id"]
