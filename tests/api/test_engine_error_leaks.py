"""R14 for the engine's own errors: a 400, 413 or 422 from the engine reaches the client as rrr's words.

The client gets the engine's status, a fixed message for that status, and a reason only where the
engine's text is one of vLLM's well-known messages (context length, ``max_tokens``), re-written from
its numbers alone; ``param`` only when it names a field of the chat request. Everything else the
engine wrote (hosts, ports, addresses, paths, credentials, tokens, tracebacks, odd types) is dropped.
The engine answers through a scripted upstream over real HTTP, byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.conftest import Rrr
from tests.support.upstream import Raw, Script

STATUSES = (400, 413, 422)
# rrr's own request fields: the only values of `param` a client may see.
REQUEST_FIELDS = {
    "model",
    "messages",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "n",
}


def _vllm(message: Any, param: Any = None, type_: Any = "BadRequestError", code: Any = 400) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


# (engine body, substrings that must not reach the client)
HOSTILE: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "hostname_with_port": (
        _vllm("could not reach inference-7.gpu.internal.example.com:8000 for the tokenizer"),
        ("inference-7", "example.com", "internal", ":8000"),
    ),
    "ipv6_with_port": (
        _vllm("upstream [fd00:dead:beef::17]:8443 refused the prompt"),
        ("fd00", "dead:beef", "8443"),
    ),
    "ipv4_with_port": (_vllm("worker 10.20.30.40:29500 died"), ("10.20.30.40", "29500")),
    "one_segment_path": (_vllm("route /models is missing; try /admin"), ("/models", "/admin")),
    "absolute_paths": (
        _vllm("cannot open /etc/passwd nor /home/alice/.cache/huggingface/hub/model.safetensors"),
        ("/etc/passwd", "passwd", "/home/alice", "alice", "huggingface", "safetensors"),
    ),
    "windows_path": (_vllm("missing C:\\Users\\alice\\model\\config.json"), ("Users", "alice", "config.json")),
    "url_with_credentials": (
        _vllm("lookup failed for postgresql://admin:hunter2@db.internal:5432/vllm"),
        ("postgresql", "admin", "hunter2", "db.internal", "5432"),
    ),
    "credentials_without_scheme": (
        _vllm("auth admin:hunter2@cache-host failed"),
        ("admin:", "hunter2", "cache-host"),
    ),
    "api_tokens": (
        _vllm(
            "keys sk-live-0123456789abcdefABCDEF, hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345 and "
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl were rejected"
        ),
        ("sk-live", "0123456789abcdef", "hf_AbCd", "eyJhbGci", "c2lnbmF0dXJl"),
    ),
    "param_is_a_path": (_vllm("bad value", param="/etc/passwd"), ("/etc/passwd", "passwd")),
    "param_is_a_url": (_vllm("bad value", param="http://10.1.2.3:8000/v1"), ("10.1.2.3", "http")),
    "param_is_not_a_request_field": (_vllm("bad value", param="input_tokens_secret"), ("input_tokens_secret",)),
    "traceback": (
        _vllm('Traceback (most recent call last):\n  File "/opt/vllm/entrypoints/openai/serving.py", line 42'),
        ("Traceback", "/opt/vllm", "serving.py", "line 42"),
    ),
    "huge_message": (_vllm("leaky-blob " * 200_000), ("leaky-blob",)),
    "message_is_an_object": (
        _vllm({"detail": "/srv/secret", "token": "sk-abcdefabcdefabcdef"}, param={"p": "/srv/x"}),
        ("/srv", "secret", "sk-abc"),
    ),
    "message_is_a_list": (_vllm(["/var/lib/vllm", 8000], param=["tools", "/var/x"]), ("/var",)),
    "message_is_a_number": (_vllm(123456789, param=987654321, type_=5, code="x"), ("123456789", "987654321")),
    "type_and_code_hostile": (
        _vllm("bad", type_="/usr/lib/python3/secret.py", code="10.9.8.7:22"),
        ("/usr/lib", "secret.py", "10.9.8.7"),
    ),
    "flat_legacy_shape": (
        json.dumps({"object": "error", "message": "at /opt/models/qwen", "param": "/opt/x", "code": 400}).encode(),
        ("/opt",),
    ),
    "detail_shape": (json.dumps({"detail": "db.internal.example.org:6379 down"}).encode(), ("db.internal", "6379")),
    "plain_text_body": (b"Internal path /data/adapters/v3 at gpu-node-3.cluster.local:9000", ("/data", "gpu-node")),
    "whitelisted_message_with_trailer": (
        _vllm(
            "This model's maximum context length is 4096 tokens. However, your request has 5000 input "
            "tokens. Please reduce the length of the input messages. See http://10.0.0.9:8000/docs sk-trailer-123456789"
        ),
        ("10.0.0.9", "sk-trailer", "docs"),
    ),
}


def _check_shape(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    assert isinstance(error["message"], str) and error["message"].startswith("The model engine")
    assert error["type"] == "invalid_request_error" and error["code"] == "engine_rejected_request"
    assert error["param"] is None or error["param"] in REQUEST_FIELDS
    return error


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize(("body", "leaks"), list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_engine_errors_reach_the_client_as_a_fixed_message(
    rrr: Rrr, status: int, body: bytes, leaks: tuple[str, ...]
) -> None:
    rrr.reset(Script(answer=[Raw(body, status=status)]))
    response = rrr.chat()
    error = _check_shape(response, status)
    assert len(response.content) < 1000  # nothing of the engine's text rides along, however long
    seen = response.text + json.dumps(dict(response.headers))
    for leak in leaks:
        assert leak not in seen, (leak, error)
    assert rrr.upstream.calls() == 1  # a refused request is not retried


@pytest.mark.parametrize("status", STATUSES)
def test_each_status_has_its_own_fixed_message(rrr: Rrr, status: int) -> None:
    rrr.reset(Script(answer=[Raw(_vllm("whatever the engine says", param="tools"), status=status)]))
    error = _check_shape(rrr.chat(), status)
    assert error["param"] == "tools"  # a field of the request: kept
    assert "whatever" not in error["message"]
    messages = set()
    for other in STATUSES:
        rrr.reset(Script(answer=[Raw(_vllm("x"), status=other)]))
        messages.add(_check_shape(rrr.chat(), other)["message"])
    assert len(messages) == len(STATUSES)


KNOWN: dict[str, tuple[str, Any, tuple[str, ...], str]] = {
    # vLLM's own wording (docs/vllm.md §3.2), then what the client reads: its numbers and the request's field
    "prompt_too_long": (
        "This model's maximum context length is 4096 tokens. However, your request has 5000 input tokens. "
        "Please reduce the length of the input messages.",
        None,
        ("4096", "5000"),
        "messages",
    ),
    "prompt_too_long_local_engine": (
        "This model's maximum context length is 16 tokens. However, your prompt contains 20 input tokens. "
        "Please reduce the length of the input messages. (parameter=input_tokens)",
        "input_tokens",
        ("16 tokens", "20 tokens"),
        "messages",
    ),
    "prompt_plus_completion_too_long": (
        "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
        "(4000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion.",
        None,
        ("4096", "5000", "4000", "1000"),
        "messages",
    ),
    "max_tokens_too_large": (
        "'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's maximum context length is "
        "4096 tokens and your request has 2778 input tokens (8000 > 4096 - 2778). None",
        None,
        ("8000", "4096", "2778"),
        "max_tokens",
    ),
}


@pytest.mark.parametrize(("message", "param", "numbers", "field"), list(KNOWN.values()), ids=list(KNOWN))
def test_well_known_vllm_messages_are_passed_on_as_numbers_only(
    rrr: Rrr, message: str, param: Any, numbers: tuple[str, ...], field: str
) -> None:
    rrr.reset(Script(answer=[Raw(_vllm(message, param=param), status=400)]))
    error = _check_shape(rrr.chat(), 400)
    for number in numbers:
        assert number in error["message"], error
    assert "Please reduce" not in error["message"]  # re-written, not copied
    assert error["param"] == field


SANITIZED: dict[str, tuple[str, tuple[str, ...]]] = {
    "hostname_with_port": (
        "reach inference-7.gpu.internal.example.com:8000 now",
        ("inference-7", "example.com", "8000"),
    ),
    "ipv6_with_port": ("upstream [fd00:dead:beef::17]:8443 refused", ("fd00", "beef", "8443")),
    "ipv6_without_port": ("upstream [::1] refused", ("::1",)),
    "credentials_without_scheme": ("auth admin:hunter2@cache-host failed", ("admin", "hunter2", "cache-host")),
    "url_with_credentials": (
        "see postgresql://admin:hunter2@db.internal:5432/vllm",
        ("admin", "hunter2", "db.internal"),
    ),
    "api_tokens": (
        "keys sk-live-0123456789abcdefABCDEF and hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
        ("sk-live", "0123456789", "hf_AbCd"),
    ),
    "bearer": ("header Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln", ("eyJhbGci", "c2ln")),
}


@pytest.mark.parametrize(("text", "leaks"), list(SANITIZED.values()), ids=list(SANITIZED))
def test_the_last_line_sanitizer_drops_hosts_credentials_and_tokens(text: str, leaks: tuple[str, ...]) -> None:
    """What rrr stores and shows admins (episode and run errors) still passes `sanitize`."""
    from api.errors import sanitize

    cleaned = sanitize(text)
    for leak in leaks:
        assert leak not in cleaned, (leak, cleaned)
    assert cleaned.split()[0] == text.split()[0]  # the words around what was dropped stay


def test_the_sanitizer_keeps_ordinary_text() -> None:
    from api.errors import sanitize

    text = "rrr.max_retries: 3 at 12:30, ratio 3:2, version 0.10.1, task sk-learning, tools[0].function.name"
    assert sanitize(text) == text
