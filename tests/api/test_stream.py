"""Streaming (contract §3.6): the verified answer as SSE chunks the openai SDK parses; failures mid-way
end with an error event and no [DONE]."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import BAD, GOOD, INFER, MESSAGES, TOOLS, Rrr, StartRrr
from tests.support.upstream import Script, text


def _frames(response: httpx.Response) -> list[str]:
    """The `data:` payloads and comments of an SSE body, in order."""
    frames = []
    for block in response.text.split("\n\n"):
        if block.startswith("data: "):
            frames.append(block[len("data: ") :])
        elif block.startswith(":"):
            frames.append(block)
    return frames


def _stream_raw(rrr: Rrr, **body: Any) -> httpx.Response:
    payload = {"model": "rrr", "messages": MESSAGES, "tools": TOOLS, "stream": True, **body}
    return rrr.http(INFER).post("/v1/chat/completions", json=payload)


def _collect(stream: Any) -> tuple[dict[int, dict[str, str]], list[Any]]:
    calls: dict[int, dict[str, str]] = {}
    chunks = list(stream)
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                if delta.id:
                    call["id"] = delta.id
                if delta.function and delta.function.name:
                    call["name"] += delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
    return calls, chunks


@pytest.mark.parametrize("start_s", [5.0, 0.0], ids=["decided-before-start", "started-early"])
def test_verified_answer_streams_through_the_sdk(start_rrr: StartRrr, start_s: float) -> None:
    rrr = start_rrr(Script(answer=[BAD], retry=[GOOD], delay_s=0.15), stream_start_s=start_s, stream_keepalive_s=0.05)
    stream = rrr.client().chat.completions.create(
        model="rrr",
        messages=MESSAGES,
        tools=TOOLS,
        stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    calls, chunks = _collect(stream)

    assert calls == {0: {"id": calls[0]["id"], "name": "get_weather", "arguments": '{"city": "Paris"}'}}
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "tool_calls"
    extra = finish[0].model_extra["rrr"]
    assert extra["verified"] is True and extra["status"] == "retry_ok"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 45
    assert all(c.object == "chat.completion.chunk" and c.model == "rrr" for c in chunks)
    assert rrr.upstream.calls() == 3
    assert rrr.episode(extra["episode_id"])["status"] == "retry_ok"


def test_stream_frames_end_with_done_and_carry_keepalives_while_waiting(start_rrr: StartRrr) -> None:
    rrr = start_rrr(Script(answer=[GOOD], delay_s=0.3), stream_start_s=0.0, stream_keepalive_s=0.05)
    response = _stream_raw(rrr)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = _frames(response)
    assert frames[-1] == "[DONE]"
    assert json.loads(frames[0])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert any(f.startswith(":") for f in frames), "keep-alive comments while the loop runs"
    assert "x-rrr-verified" not in response.headers  # unknown when the 200 was sent: see the finish chunk


def test_text_answer_streams_as_content(start_rrr: StartRrr) -> None:
    rrr = start_rrr(Script(answer=[text("Hello, world.")]))
    chunks = list(
        rrr.client().chat.completions.create(model="rrr", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello, world."
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_decided_stream_sets_the_verdict_header(start_rrr: StartRrr) -> None:
    rrr = start_rrr(Script(answer=[BAD]), stream_start_s=5.0)
    response = _stream_raw(rrr)
    assert response.headers["x-rrr-verified"] == "false"
    assert _frames(response)[-1] == "[DONE]"


@pytest.mark.parametrize("fault", ["drop", "hang"])
def test_upstream_failure_mid_stream_ends_with_an_error_event_and_no_done(start_rrr: StartRrr, fault: str) -> None:
    rrr = start_rrr(Script(answer=[fault]), stream_start_s=0.0, stream_keepalive_s=0.05, deadline_s=1.0)
    response = _stream_raw(rrr)
    assert response.status_code == 200  # the stream had started
    frames = _frames(response)
    assert "[DONE]" not in frames
    error = json.loads(frames[-1])["error"]
    assert error["code"] == ("engine_protocol_error" if fault == "drop" else "engine_timeout")
    with pytest.raises(openai.APIError):
        list(rrr.client().chat.completions.create(model="rrr", messages=MESSAGES, stream=True))  # type: ignore[arg-type]
    with rrr.http(None) as http:
        assert "rrr_stream_errors_total 2.0" in http.get("/metrics").text
