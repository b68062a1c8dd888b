"""R9 and R5 at the API: whatever an engine answers, `rrr serve` never answers 500 and always stores the episode.

A malformed answer that can be read (``tool_calls`` a string, an object, a list of non-objects) is the
model's output, so it is data: a failed verdict that drives a reflection and a retry. A body that cannot
be read as a chat completion (nested 100,000 levels deep, invalid UTF-8) is the engine breaking the
exchange: a 502 in OpenAI's error shape and an ``upstream_error`` episode. Both run against a scripted
upstream over real HTTP, on SQLite and (with ``RRR_TEST_DATABASE_URL``) PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from sqlalchemy import select

from engines.vllm import MAX_BODY_DEPTH
from store.models import Episode
from tests.api.conftest import BAD, INFER, MESSAGES, TOOLS, Rrr, running
from tests.support.upstream import Raw, Script

DEPTH = 100_000
DEEP = b"[" * DEPTH + b"]" * DEPTH


@pytest.fixture(scope="module")
def served(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rrr]:
    """One rrr per backend for this module, on a migrated database of that backend."""
    with running(tmp_path_factory.mktemp("rrr"), database_url=module_db_url) as rrr:
        yield rrr


def _episode_ids(rrr: Rrr) -> set[str]:
    rrr.flush()
    with rrr.state.session_factory() as session:
        return set(session.execute(select(Episode.id)).scalars())


def _new_episode(rrr: Rrr, before: set[str]) -> dict[str, Any]:
    """The one episode stored since ``before``, read back through the admin API."""
    new = _episode_ids(rrr) - before
    assert len(new) == 1, f"expected exactly one new episode, got {len(new)}"
    return rrr.episode(new.pop())


def _completion(message: bytes, finish_reason: str = "tool_calls") -> bytes:
    """A chat-completion body around the raw JSON text of an assistant message."""
    head = b'{"id":"chatcmpl-x","object":"chat.completion","created":1,"model":"base","choices":[{"index":0,"message":'
    tail = (
        b',"logprobs":null,"finish_reason":"'
        + finish_reason.encode()
        + b'"}],"usage":{"prompt_tokens":3,"completion_tokens":2}}'
    )
    return head + message + tail


def _call(arguments: bytes) -> bytes:
    return (
        b'{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",'
        b'"function":{"name":"get_weather","arguments":' + arguments + b"}}]}"
    )


# Readable but malformed: the model's answer, judged like any other (reason fragment expected in the verdict).
MALFORMED_CALLS: dict[str, tuple[dict[str, Any], str]] = {
    "tool_calls_string": ({"content": None, "tool_calls": 'get_weather({"city": "Paris"})'}, "must be a list"),
    "tool_calls_object": (
        {
            "content": None,
            "tool_calls": {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
        },
        "must be a list",
    ),
    "tool_calls_non_objects": ({"content": None, "tool_calls": [1, "x", None]}, "expected an object"),
    "tool_calls_nested_lists": ({"content": None, "tool_calls": [[[[{"function": {}}]]]]}, "expected an object"),
    "function_not_an_object": (
        {"content": None, "tool_calls": [{"id": "c1", "type": "function", "function": "get_weather"}]},
        '"function" must be an object',
    ),
    "tool_calls_mixed": (
        {
            "content": "text",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": 7}'}},
                ["not", "a", "call"],
                None,
            ],
        },
        "",
    ),
}


@pytest.mark.parametrize(("reply", "reason"), list(MALFORMED_CALLS.values()), ids=list(MALFORMED_CALLS))
def test_malformed_tool_calls_are_a_failed_verdict_that_is_stored(
    served: Rrr, reply: dict[str, Any], reason: str
) -> None:
    served.reset(Script(answer=[reply]))  # the retry gets the same answer
    before = _episode_ids(served)
    response = served.chat(tool_choice="required")
    assert response.status_code == 200, response.text
    assert response.headers["x-rrr-verified"] == "false"
    body = response.json()
    openai.types.chat.ChatCompletion.model_validate(body)  # still an answer the SDK parses
    assert body["rrr"]["status"] == "failed" and body["rrr"]["verified"] is False
    # the failure drove a reflection and a retry, and the failed answer was quoted as plain text
    assert (served.upstream.calls("answer"), served.upstream.calls("reflection"), served.upstream.calls("retry")) == (
        1,
        1,
        1,
    )
    failed_turn = served.upstream.requests[1]["messages"][-2]
    assert failed_turn["role"] == "assistant" and isinstance(failed_turn["content"], str)
    assert "tool_calls" not in failed_turn
    episode = _new_episode(served, before)
    assert episode["id"] == body["rrr"]["episode_id"] and episode["status"] == "failed"
    assert [a["kind"] for a in episode["attempts"]] == ["answer", "reflection", "retry"]
    for attempt in (episode["attempts"][0], episode["attempts"][2]):
        assert attempt["verdict"]["ok"] is False
        assert reason in attempt["verdict"]["reason"], attempt["verdict"]


# Unreadable as a chat completion: the engine broke the exchange.
UNREADABLE: dict[str, bytes] = {
    "deep_body": b'{"a":' + DEEP + b"}",
    "deep_top_level_array": DEEP,
    "deep_in_content": _completion(b'{"role":"assistant","content":' + DEEP + b"}", "stop"),
    "deep_in_tool_calls": _completion(b'{"role":"assistant","content":null,"tool_calls":' + DEEP + b"}"),
    "deep_in_arguments": _completion(_call(b'{"city":' + DEEP + b"}")),
    "deep_in_usage": _completion(b'{"role":"assistant","content":"hi"}', "stop")[:-1] + b',"x":' + DEEP + b"}",
    "invalid_utf8_in_content": _completion(b'{"role":"assistant","content":"Paris \xff\xfe \xc3"}', "stop"),
    "invalid_utf8_in_arguments": _completion(_call(b'"{\\"city\\": \\"Par\xe9s\\"}"')),
    "invalid_utf8_in_a_key": _completion(b'{"role":"assistant","content":"hi","\xc0\xaf":1}', "stop"),
}


@pytest.mark.parametrize("raw", list(UNREADABLE.values()), ids=list(UNREADABLE))
def test_an_unreadable_engine_answer_is_a_502_and_an_upstream_error_episode(served: Rrr, raw: bytes) -> None:
    served.reset(Script(answer=[Raw(raw)]))
    before = _episode_ids(served)
    response = served.chat(tool_choice="required")
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "engine_protocol_error" and error["type"] == "upstream_error"
    assert served.upstream.calls() == 1  # a broken exchange is not retried
    episode = _new_episode(served, before)
    assert episode["status"] == "upstream_error" and episode["attempts"] == []
    assert episode["error"] and "EngineProtocolError" in episode["error"]


def test_a_deep_but_readable_answer_within_the_bound_is_a_verdict(served: Rrr) -> None:
    # the body, choices, the choice and the message are 4 levels: this body is exactly MAX_BODY_DEPTH deep
    depth = MAX_BODY_DEPTH - 4
    nested = {"content": None, "tool_calls": json.loads("[" * depth + "]" * depth)}
    served.reset(Script(answer=[nested]))
    before = _episode_ids(served)
    response = served.chat(tool_choice="required")
    assert response.status_code == 200, response.text
    assert response.headers["x-rrr-verified"] == "false"
    episode = _new_episode(served, before)
    assert episode["status"] == "failed"
    assert episode["attempts"][0]["verdict"]["ok"] is False
    assert json.dumps(episode["attempts"][0]["tool_calls"]).count("[") == depth  # stored as it came


def test_an_unreadable_reflection_after_an_answer_still_answers_and_is_stored(served: Rrr) -> None:
    served.reset(Script(answer=[BAD], reflection=[Raw(b'{"a":' + DEEP + b"}")]))
    before = _episode_ids(served)
    response = served.chat()
    assert response.status_code == 200, response.text
    assert response.headers["x-rrr-verified"] == "false"
    assert response.json()["rrr"]["status"] == "failed"
    episode = _new_episode(served, before)
    assert episode["status"] == "failed" and [a["kind"] for a in episode["attempts"]] == ["answer"]
    assert "EngineProtocolError" in episode["error"]


def test_streaming_clients_get_a_verdict_or_a_502_too(served: Rrr) -> None:
    payload = {"model": "rrr", "messages": MESSAGES, "tools": TOOLS, "tool_choice": "required", "stream": True}
    http = served.http(INFER)
    served.reset(Script(answer=[{"content": None, "tool_calls": [1, "x", None]}]))
    before = _episode_ids(served)
    response = http.post("/v1/chat/completions", json=payload)
    assert response.status_code == 200, response.text
    assert response.headers["x-rrr-verified"] == "false"
    assert response.text.rstrip().endswith("data: [DONE]")
    assert _new_episode(served, before)["status"] == "failed"

    served.reset(Script(answer=[Raw(_completion(b'{"role":"assistant","content":"\xff"}', "stop"))]))
    before = _episode_ids(served)
    response = http.post("/v1/chat/completions", json=payload)
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "engine_protocol_error"
    assert _new_episode(served, before)["status"] == "upstream_error"
