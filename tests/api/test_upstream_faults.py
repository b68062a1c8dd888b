"""R1-R3 at the API: a dead, crashing or hung engine never hangs a client; answers are bounded in time."""

from __future__ import annotations

import time

import openai
import pytest

from tests.api.conftest import ADMIN, BAD, GOOD, MESSAGES, TOOLS, StartRrr
from tests.support.upstream import Script, free_port


def _stored_statuses(rrr: object) -> list[str]:
    rrr.flush()  # type: ignore[attr-defined]
    with rrr.http(ADMIN) as http:  # type: ignore[attr-defined]
        return [e["status"] for e in http.get("/v1/episodes").json()["data"]]


def test_refused_engine_is_a_fast_503_with_retry_after(start_rrr: StartRrr) -> None:
    rrr = start_rrr(engine_url=f"http://127.0.0.1:{free_port()}/v1")
    started = time.monotonic()
    response = rrr.chat()
    elapsed = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert elapsed <= 2.5
    assert int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert error["code"] == "engine_unavailable" and error["type"]
    assert "127.0.0.1" not in response.text
    # streaming clients get the same status while nothing was sent yet
    with pytest.raises(openai.APIStatusError) as info:
        list(rrr.client().chat.completions.create(model="rrr", messages=MESSAGES, stream=True))  # type: ignore[arg-type]
    assert info.value.status_code == 503
    assert _stored_statuses(rrr) == ["upstream_error", "upstream_error"]


def test_engine_killed_mid_response_is_a_502(start_rrr: StartRrr) -> None:
    rrr = start_rrr(Script(answer=["drop"]))
    response = rrr.chat()
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "engine_protocol_error"
    assert _stored_statuses(rrr) == ["upstream_error"]


def test_hung_engine_is_a_504_at_the_deadline(start_rrr: StartRrr) -> None:
    rrr = start_rrr(Script(answer=["hang"]), deadline_s=1.0)
    started = time.monotonic()
    response = rrr.chat()
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert 0.9 <= elapsed < 3.0
    assert _stored_statuses(rrr) == ["upstream_error"]


def test_repeated_failures_open_the_circuit_and_fail_fast(start_rrr: StartRrr) -> None:
    rrr = start_rrr(Script(answer=["hang"]), deadline_s=0.5, engine_failure_threshold=2, engine_probe_interval_s=5.0)
    assert [rrr.chat().status_code for _ in range(2)] == [504, 504]
    started = time.monotonic()
    response = rrr.chat()
    assert response.status_code == 503
    assert time.monotonic() - started < 0.25
    assert rrr.upstream.calls() == 2  # the third request never reached the engine


def test_engine_failing_after_an_answer_still_answers_unverified(start_rrr: StartRrr) -> None:
    rrr = start_rrr(Script(answer=[BAD], reflection=["drop"]))
    response = rrr.chat()
    assert response.status_code == 200, response.text
    assert response.headers["x-rrr-verified"] == "false"
    body = response.json()
    assert body["rrr"]["status"] == "failed" and "error" in body["rrr"]
    assert _stored_statuses(rrr) == ["failed"]


def test_engine_errors_are_mapped_and_sanitised(start_rrr: StartRrr) -> None:
    secret = "prompt too long for /home/alice/models/qwen/model.safetensors at http://10.1.2.3:8000/v1"
    rrr = start_rrr(Script(answer=[f"error:400:{secret}"]))
    response = rrr.chat()
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("The model engine refused the request")
    for leak in ("/home/alice", "10.1.2.3", "http://", "safetensors"):
        assert leak not in response.text
    rrr.reset(Script(answer=["error:500:boom in /opt/vllm/engine.py"]))
    response = rrr.chat()
    assert response.status_code == 502 and "/opt/vllm" not in response.text
    rrr.reset(Script(answer=[GOOD]))
    assert rrr.chat(tools=TOOLS).status_code == 200
