"""R1/R10/R11: one request's verification never stalls the others, and its cost is bounded.

A hostile request's verification runs off the event loop: while a registered execution target
sleeps for seconds (``tools.catalog.examples:wait``), `/health` and other clients' chat requests
are answered at their normal latency. The whole verification of a request shares one time budget
(``RRR_VERIFY_BUDGET_S``): past it the verdict is a failure with a reason and the episode is stored.
A client's verifier spec whose cost (leaves x verified answers) exceeds ``RRR_MAX_VERIFIER_COST`` is
a 400 naming ``rrr.verifier`` before any model call.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.api.conftest import ADMIN, GOOD, INFER, MESSAGES, OTHER, TOOLS, Rrr, running
from tests.support.upstream import Script, text, tool_call
from tools.catalog.examples import FUNCTIONS

HOSTILE_SLEEP_S = 6.0
WAIT_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "wait",
        "description": "Sleep a while",
        "parameters": {"type": "object", "properties": {"seconds": {"type": "number"}}, "required": ["seconds"]},
    },
}
EXECUTION = {"type": "execution", "functions": {"wait": FUNCTIONS["wait"]}, "timeout_s": 60}


def _responder(seconds: float) -> Any:
    def reply(body: dict[str, Any]) -> Any:
        names = {t["function"]["name"] for t in body.get("tools") or []}
        if "wait" in names:
            return tool_call("wait", {"seconds": seconds})
        return GOOD if body["messages"][-1]["role"] == "user" else text("ok")

    return reply


def _post(url: str, key: str, payload: dict[str, Any], timeout: float = 60) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout) as http:
        response = http.post("/v1/chat/completions", json=payload)
    return response, time.monotonic() - start


def _hostile(seconds: float, **rrr: Any) -> dict[str, Any]:
    return {
        "model": "rrr",
        "messages": [{"role": "user", "content": "wait a while"}],
        "tools": [WAIT_TOOL],
        "rrr": {"verifier": EXECUTION, **rrr},
    }


def _timed_get(url: str, path: str) -> tuple[int, float]:
    start = time.monotonic()
    with httpx.Client(base_url=url, timeout=60) as http:
        status = http.get(path).status_code
    return status, time.monotonic() - start


def test_health_and_other_clients_keep_their_latency_while_a_slow_verification_runs(tmp_path: Path) -> None:
    with running(tmp_path, Script(responder=_responder(HOSTILE_SLEEP_S)), verify_budget_s=30.0) as rrr:
        normal = {"model": "rrr", "messages": MESSAGES, "tools": TOOLS}
        assert _post(rrr.url, OTHER, normal)[0].status_code == 200  # warm up
        with ThreadPoolExecutor(4) as pool:
            hostile = pool.submit(_post, rrr.url, INFER, _hostile(HOSTILE_SLEEP_S, max_retries=0))
            time.sleep(1.0)  # the hostile answer is being verified now (the target sleeps 6 s)
            assert not hostile.done()
            health = pool.submit(_timed_get, rrr.url, "/health").result()
            other, other_s = pool.submit(_post, rrr.url, OTHER, normal).result()
            still_verifying = not hostile.done()
            hostile_response, hostile_s = hostile.result()

        assert health[0] == 200 and health[1] < 1.0, f"/health took {health[1]:.2f}s during a slow verification"
        assert other.status_code == 200 and other.headers["x-rrr-verified"] == "true"
        assert other_s < 1.0, f"another client's request took {other_s:.2f}s during a slow verification"
        assert still_verifying, "the hostile verification must still be running while the others are served"
        assert hostile_response.status_code == 200, hostile_response.text
        assert hostile_response.headers["x-rrr-verified"] == "true"  # within the budget, it passes
        assert hostile_s >= HOSTILE_SLEEP_S - 0.5


def test_verification_past_the_request_budget_is_a_failed_verdict_and_the_episode_is_stored(tmp_path: Path) -> None:
    with running(tmp_path, Script(responder=_responder(20.0)), verify_budget_s=1.5) as rrr:
        response, elapsed = _post(rrr.url, INFER, _hostile(20.0, max_retries=1), timeout=40)
        assert response.status_code == 200, response.text
        assert elapsed < 6.0, f"the budget of 1.5 s did not bound verification ({elapsed:.1f}s)"
        body = response.json()
        assert response.headers["x-rrr-verified"] == "false"
        assert body["rrr"]["status"] == "failed"
        assert "verification budget" in body["rrr"]["reason"]
        episode = rrr.episode(body["rrr"]["episode_id"])
        assert episode["status"] == "failed"
        verdicts = [a["verdict"] for a in episode["attempts"] if a["kind"] != "reflection"]
        assert verdicts and all(not v["ok"] and "verification budget" in v["reason"] for v in verdicts)


def _rejected_count(rrr: Rrr) -> float:
    with httpx.Client(base_url=rrr.url, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        text_metrics = http.get("/metrics").text
    total = 0.0
    for line in text_metrics.splitlines():
        if line.startswith("rrr_rejected_requests_total{") and 'reason="verifier_cost"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_verifier_spec_over_the_cost_cap_is_a_400_before_any_model_call(tmp_path: Path) -> None:
    wide = {"type": "all", "of": [EXECUTION] * 16}
    deep: dict[str, Any] = {"type": "schema"}
    for _ in range(4):
        deep = {"type": "all", "of": [deep] * 16}  # 16**4 = 65,536 schema leaves
    with running(tmp_path, Script(answer=[GOOD]), max_verifier_cost=8) as rrr:
        for spec in ({"type": "all", "of": [wide] * 4}, deep):  # 64 execution leaves; 65,536 schema leaves
            before = rrr.upstream.calls()
            start = time.monotonic()
            response, _ = _post(rrr.url, INFER, {**_hostile(1.0), "rrr": {"verifier": spec}})
            assert response.status_code == 400, response.text
            assert time.monotonic() - start < 5.0
            error = response.json()["error"]
            assert error["param"] == "rrr.verifier" and error["type"] == "invalid_request_error"
            assert "rrr.verifier" in error["message"] and "cost" in error["message"] and "8" in error["message"]
            assert rrr.upstream.calls() == before  # no model call
        assert _rejected_count(rrr) == 2
        # within the cap: 4 leaves x 2 verified answers (max_retries 1) = 8
        small = {"type": "all", "of": [{"type": "schema"}] * 4}
        response, _ = _post(
            rrr.url, INFER, {"model": "rrr", "messages": MESSAGES, "tools": TOOLS, "rrr": {"verifier": small}}
        )
        assert response.status_code == 200, response.text
        too_many = {"type": "all", "of": [{"type": "schema"}] * 5}
        response, _ = _post(
            rrr.url, INFER, {"model": "rrr", "messages": MESSAGES, "tools": TOOLS, "rrr": {"verifier": too_many}}
        )
        assert response.status_code == 400
        response, _ = _post(
            rrr.url,
            INFER,
            {"model": "rrr", "messages": MESSAGES, "tools": TOOLS, "rrr": {"verifier": too_many, "max_retries": 0}},
        )
        assert response.status_code == 200, response.text  # 5 leaves x 1 answer
