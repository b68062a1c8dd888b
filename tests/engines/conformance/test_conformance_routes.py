"""§8.1 and §5: health, ping, version, models, metrics, and the framework's own 404/405 bodies."""

from __future__ import annotations

import re

import httpx

from tests.engines.conformance.target import Target

PERMISSION_KEYS = {
    "id",
    "object",
    "created",
    "allow_create_engine",
    "allow_sampling",
    "allow_logprobs",
    "allow_search_indices",
    "allow_view",
    "allow_fine_tuning",
    "organization",
    "group",
    "is_blocking",
}


def test_health_is_200_with_an_empty_body(target: Target) -> None:
    response = httpx.get(f"{target.url}/health", timeout=10)
    assert response.status_code == 200
    assert response.content == b""


def test_ping_answers_get_and_post_like_health(target: Target) -> None:
    for method in ("GET", "POST"):
        response = httpx.request(method, f"{target.url}/ping", timeout=10)
        assert response.status_code == 200, method


def test_version_names_a_version(target: Target) -> None:
    body = httpx.get(f"{target.url}/version", timeout=10).json()
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", body["version"])


def test_models_lists_the_base_card_with_vllms_fields(http: httpx.Client) -> None:
    body = http.get("/v1/models").json()
    assert body["object"] == "list"
    base = body["data"][0]
    assert base["parent"] is None, "base models come first"
    assert set(base) == {"id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"}
    assert (base["object"], base["owned_by"]) == ("model", "vllm")
    assert isinstance(base["created"], int) and isinstance(base["max_model_len"], int)
    assert isinstance(base["root"], str) and base["root"]
    (perm,) = base["permission"]
    assert set(perm) == PERMISSION_KEYS
    assert re.fullmatch(r"modelperm-[0-9a-f]{16,32}", perm["id"])
    assert perm["object"] == "model_permission"
    assert (perm["allow_create_engine"], perm["allow_sampling"], perm["allow_logprobs"]) == (False, True, True)
    assert (perm["allow_search_indices"], perm["allow_view"], perm["allow_fine_tuning"]) == (False, True, False)
    assert (perm["organization"], perm["group"], perm["is_blocking"]) == ("*", None, False)


def test_models_has_no_per_model_route(http: httpx.Client, target: Target) -> None:
    response = http.get(f"/v1/models/{target.base_model()}")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_metrics_are_prometheus_text_with_vllms_names(target: Target) -> None:
    response = httpx.get(f"{target.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert re.search(rf"^{name}\{{[^}}]*model_name=\"[^\"]+\"[^}}]*\}} \d", text, re.M), name
    info = re.search(r"^vllm:lora_requests_info\{([^}]*)\} ", text, re.M)
    assert info is not None
    assert {"max_lora", "running_lora_adapters", "waiting_lora_adapters"} <= set(re.findall(r"(\w+)=", info.group(1)))


def test_unknown_routes_and_wrong_methods_keep_fastapis_bodies(http: httpx.Client) -> None:
    missing = http.get("/v1/no-such-route")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    wrong = http.get("/v1/chat/completions")
    assert (wrong.status_code, wrong.json()) == (405, {"detail": "Method Not Allowed"})
