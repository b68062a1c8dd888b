"""Failure codes through the real request path: stored on every failed verdict and on the episode,
filterable (`GET /v1/episodes?failure=`), counted (`GET /v1/stats` failures, Prometheus), returned
in the `rrr` extension; SQLite, and PostgreSQL when configured."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.api.conftest import ADMIN, GOOD, INFER, Rrr
from tests.support.upstream import Script, text, tool_call

FORECAST = {
    "type": "function",
    "function": {
        "name": "get_forecast",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


def _get(rrr: Rrr, path: str, **params: Any) -> dict[str, Any]:
    response = rrr.http(ADMIN).get(path, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_failure_codes_are_stored_filtered_counted_and_exported(db_rrr: Rrr) -> None:
    from tests.api.conftest import TOOLS

    cases = [  # (answer, retry, tools) -> the first failure's code and path
        (tool_call("get_weather", {"city": 7}), GOOD, TOOLS, ("type_mismatch", "arguments.city")),
        (tool_call("get_wether", {"city": "Paris"}), GOOD, TOOLS, ("unknown_tool", None)),
        (tool_call("get_forecast", {"city": "Paris"}), None, [FORECAST], ("missing_argument", "arguments.days")),
        (tool_call("get_forecast", {"city": "Paris"}), None, [FORECAST], ("missing_argument", "arguments.days")),
        (GOOD, None, TOOLS, (None, None)),
    ]
    ids = {}
    for i, (answer, retry, tools, want) in enumerate(cases):
        db_rrr.reset(Script(answer=[answer], reflection=[text("Fix it.")], retry=[retry or answer]))
        response = db_rrr.chat(tools=tools, tool_choice="required")
        assert response.status_code == 200, response.text
        info = response.json()["rrr"]
        assert info["failure_code"] == (want[0] if retry is None else None)  # the answer sent: the retry passed
        ids[info["episode_id"]] = (i, want)
    db_rrr.flush()

    for episode_id, (i, (code, path)) in ids.items():
        episode = _get(db_rrr, f"/v1/episodes/{episode_id}")
        assert episode["failure_code"] == code
        answer = episode["attempts"][0]["verdict"]
        assert (answer["code"], answer["path"]) == (code, path), i
        if code is not None and cases[i][1] is not None:
            assert episode["attempts"][2]["verdict"] == {**episode["attempts"][2]["verdict"], "ok": True, "code": None}

    listed = _get(db_rrr, "/v1/episodes", failure="missing_argument")["data"]
    assert sorted(e["id"] for e in listed) == sorted(e for e, (_, w) in ids.items() if w[0] == "missing_argument")
    assert len(_get(db_rrr, "/v1/episodes", failure="unknown_tool", tool="get_wether")["data"]) == 1
    bad = db_rrr.http(ADMIN).get("/v1/episodes", params={"failure": "bad_vibes"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "failure"

    failures = _get(db_rrr, "/v1/stats")["failures"]
    assert failures["by_code"][0] == {"code": "missing_argument", "episodes": 2}
    assert Counter({r["code"]: r["episodes"] for r in failures["by_code"]}) == Counter(
        {"missing_argument": 2, "type_mismatch": 1, "unknown_tool": 1}
    )
    assert {"tool": "get_forecast", "code": "missing_argument", "episodes": 2} in failures["by_tool"]
    assert {"adapter": None, "code": "missing_argument", "episodes": 2} in failures["by_adapter"]
    assert sum(r["episodes"] for r in failures["by_day"]) == 4

    metrics = db_rrr.http(ADMIN).get("/metrics").text
    line = 'rrr_verdict_failures_total{code="missing_argument",kind="answer"}'
    assert any(row.startswith(line) and float(row.split()[-1]) >= 2 for row in metrics.splitlines()), metrics[-2000:]
    assert INFER not in metrics


def test_an_agent_loop_that_repeats_its_call_is_reflected_on_and_ends_in_text(db_rrr: Rrr) -> None:
    from tests.api.conftest import TOOLS

    called = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    }
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        called,
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 21, "sky": "clear"}'},
    ]
    db_rrr.reset(Script(answer=[GOOD], reflection=[text("I already have the result.")], retry=[text("21 °C, clear.")]))
    response = db_rrr.chat(messages=messages, tools=TOOLS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "21 °C, clear." and body["rrr"]["status"] == "retry_ok"
    db_rrr.flush()
    episode = _get(db_rrr, f"/v1/episodes/{body['rrr']['episode_id']}")
    assert episode["failure_code"] == "repeated_call"
