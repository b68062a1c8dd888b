"""Open routes (/health, /metrics, docs), R6 at the API (database down: serving goes on), and R14 (errors
leak nothing)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.auth import require_admin
from tests.api.conftest import ADMIN, BAD, GOOD, LiveServer, Rrr, StartRrr, make_settings
from tests.support.upstream import Script, free_port, text

LEAKS = ("Traceback", "/home/", "/tmp/", "/srv/", "secretpw", "postgresql", "sqlite:", ".py", "127.0.0.1")


def _samples(rrr: Rrr) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = rrr.http(None).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_health_is_open_and_ok(rrr: Rrr) -> None:
    response = rrr.http(None).get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["engine"]["up"] is True


def test_metrics_count_requests_verdicts_retries_and_writer(rrr: Rrr) -> None:
    before = _samples(rrr)
    rrr.reset(Script(answer=[BAD], retry=[GOOD]))
    assert rrr.chat().status_code == 200
    assert rrr.chat(n=2).status_code == 400
    assert rrr.http(None).get("/nowhere").status_code == 404
    rrr.flush()
    after = _samples(rrr)

    def grew(name: str, by: float = 1.0, **labels: str) -> bool:
        return _value(after, name, **labels) - _value(before, name, **labels) == by

    route = "/v1/chat/completions"
    assert grew("rrr_http_requests_total", method="POST", route=route, status="200")
    assert grew("rrr_http_requests_total", method="POST", route=route, status="400")
    assert grew("rrr_http_requests_total", method="GET", route="unmatched", status="404")
    assert grew("rrr_episodes_total", status="retry_ok")
    assert grew("rrr_verdicts_total", kind="answer", ok="false")
    assert grew("rrr_verdicts_total", kind="retry", ok="true")
    assert grew("rrr_retries_total")
    assert grew("rrr_model_calls_total", kind="reflection")
    assert grew("rrr_rejected_requests_total", reason="n")
    assert grew("rrr_http_request_duration_seconds_count", by=2, route=route)
    assert _value(after, "rrr_http_request_duration_seconds_bucket", route=route, le="+Inf") >= 2
    assert _value(after, "rrr_writer_records_total", state="written") >= 2  # the episode and the rejection
    assert _value(after, "rrr_writer_degraded") == 0 and _value(after, "rrr_engine_up") == 1


def test_docs_and_openapi_are_open(rrr: Rrr) -> None:
    http = rrr.http(None)
    assert "swagger" in http.get("/docs").text.lower()
    spec = http.get("/openapi.json").json()
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert "rrr" in chat["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"/v1/episodes", "/v1/stats", "/v1/adapters/{name}/activate", "/health"} <= set(spec["paths"])


def test_unknown_routes_and_methods_answer_in_openai_shape(rrr: Rrr) -> None:
    http = rrr.http(ADMIN)
    for response, status in (
        (http.get("/v2/things"), 404),
        (http.delete("/v1/models"), 405),
        (http.get("/v1/chat/completions"), 405),
    ):
        assert response.status_code == status
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.fixture
def broken_app(tmp_path: Path) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path, engine_urls=[f"http://127.0.0.1:{free_port()}/v1"])
    app = create_app(settings)

    async def boom() -> None:
        raise RuntimeError("cannot open /home/alice/rrr/secret.db via postgresql://rrr:secretpw@127.0.0.1/rrr")

    app.add_api_route("/v1/boom", boom, methods=["GET"], dependencies=[Depends(require_admin)])
    with LiveServer(app) as server:
        yield server


def test_an_unexpected_error_is_a_generic_500(broken_app: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{broken_app.port}") as http:
        response = http.get("/v1/boom", headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 500
    assert response.json()["error"] == {
        "message": "Internal error; it has been logged.",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    assert "RuntimeError" in caplog.text  # the operator gets the details, the client does not


def test_database_down_keeps_serving_and_leaks_nothing(start_rrr: StartRrr) -> None:
    url = f"postgresql://rrr:secretpw@127.0.0.1:{free_port()}/rrr"
    rrr = start_rrr(Script(answer=[GOOD]), database_url=url, auto_migrate=False)
    response = rrr.chat()
    assert response.status_code == 200, response.text  # R6: the base model serves on the last known policy
    assert response.headers["x-rrr-verified"] == "true"
    rrr.flush()
    stats = rrr.state.writer.stats()
    assert stats["spooled"] >= 1 and stats["degraded"] is True
    health = rrr.http(None).get("/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    admin = rrr.http(ADMIN)
    for path in ("/v1/episodes", "/v1/stats", "/v1/adapters", "/v1/training-runs", "/v1/models"):
        failed = admin.get(path)
        assert failed.status_code == 503, path
        assert failed.json()["error"]["code"] == "database_unavailable"
        assert "retry-after" in failed.headers
        for leak in LEAKS:
            assert leak not in failed.text, (path, leak)


def test_nothing_works_is_a_503_health(start_rrr: StartRrr) -> None:
    url = f"postgresql://rrr:secretpw@127.0.0.1:{free_port()}/rrr"
    rrr = start_rrr(engine_url=f"http://127.0.0.1:{free_port()}/v1", database_url=url, auto_migrate=False)
    assert rrr.chat().status_code == 503
    rrr.flush()
    health = rrr.http(None).get("/health")
    assert health.status_code == 503 and health.json()["status"] == "down"
    engine_only_down = start_rrr(engine_url=f"http://127.0.0.1:{free_port()}/v1")
    health = engine_only_down.http(None).get("/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"


def test_error_bodies_leak_nothing(start_rrr: StartRrr) -> None:
    rrr = start_rrr(Script(answer=[text("fine")]))
    http = rrr.http(ADMIN)
    bodies = [
        http.post("/v1/chat/completions", content=b"{broken").text,
        http.post("/v1/chat/completions", json={"model": "/home/alice/model", "messages": []}).text,
        http.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "x"}],
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"$ref": "file:///etc/passwd"}}}
                ],
            },
        ).text,
        http.get("/v1/episodes/../../etc/passwd").text,
        http.post("/v1/adapters/..%2F..%2Fetc/activate").text,
        http.get("/v1/episodes", params={"cursor": "/tmp/x"}).text,
    ]
    for body in bodies:
        assert '"error"' in body
        for leak in (*LEAKS, "/etc/passwd"):
            assert leak not in body, (leak, body)
