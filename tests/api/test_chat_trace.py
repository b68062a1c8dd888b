"""`rrr.include_attempts`: the answer carries every model call of its episode (what `rrr eval run` scores)."""

from __future__ import annotations

import json
from typing import Any

from tests.api.conftest import BAD, GOOD, MESSAGES, TOOLS, Rrr
from tests.support.upstream import Script, text


def _create(rrr: Rrr, **ext: Any) -> Any:
    return rrr.client().chat.completions.create(model="rrr", messages=MESSAGES, tools=TOOLS, extra_body={"rrr": ext})  # type: ignore[arg-type]


def test_the_trace_lists_answer_reflection_and_retry_with_their_verdicts(rrr: Rrr) -> None:
    rrr.reset(Script(answer=[BAD], reflection=[text("The city is a string.")], retry=[GOOD]))
    extra = _create(rrr, include_attempts=True).model_extra["rrr"]
    trace = extra["trace"]
    assert [(s["index"], s["kind"]) for s in trace] == [(0, "answer"), (1, "reflection"), (2, "retry")]
    answer, reflection, retry = trace
    assert answer["verdict"]["ok"] is False and "city" in answer["verdict"]["reason"]
    assert answer["verdict"]["code"] == "type_mismatch"
    assert json.loads(answer["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": 7}
    assert answer["finish_reason"] == "tool_calls"
    assert reflection["verdict"] is None and reflection["message"]["content"] == "The city is a string."
    assert retry["verdict"] == {"ok": True, "reason": None, "code": None}
    assert retry["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert extra["attempts"] == 3 and extra["status"] == "retry_ok"


def test_no_trace_unless_asked(rrr: Rrr) -> None:
    assert "trace" not in _create(rrr).model_extra["rrr"]
    assert "trace" not in _create(rrr, include_attempts=False).model_extra["rrr"]


def test_include_attempts_must_be_a_boolean(rrr: Rrr) -> None:
    response = rrr.chat(rrr={"include_attempts": "yes"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "rrr.include_attempts"
    assert rrr.upstream.calls() == 0


def test_a_streamed_answer_carries_the_trace_in_its_finish_chunk(rrr: Rrr) -> None:
    rrr.reset(Script(answer=[BAD], retry=[GOOD]))
    chunks = list(
        rrr.client().chat.completions.create(
            model="rrr",
            messages=MESSAGES,
            tools=TOOLS,
            stream=True,  # type: ignore[arg-type]
            extra_body={"rrr": {"include_attempts": True}},
        )
    )
    (finish,) = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [s["kind"] for s in finish.model_extra["rrr"]["trace"]] == ["answer", "reflection", "retry"]
