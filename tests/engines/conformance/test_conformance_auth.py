"""§5.5: `--api-key` guards /v1 (and /v2, /inference, /cohere) with a bearer token; the rest stays open.

Runs against the locked server started here, or against `RRR_VLLM_URL` when `RRR_VLLM_API_KEY` is set.
"""

from __future__ import annotations

import httpx
import pytest

from tests.engines.conformance.target import EXTERNAL_URL, Target


@pytest.fixture()
def keyed(target: Target, request: pytest.FixtureRequest) -> tuple[str, str]:
    if EXTERNAL_URL:
        if not target.api_key:
            pytest.skip("the server under test has no API key (set RRR_VLLM_API_KEY)")
        return target.url, target.api_key
    from tests.engines.conftest import LOCKED_KEY

    return request.getfixturevalue("locked_engine_server").url, LOCKED_KEY


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}])
def test_v1_needs_the_bearer_key(keyed: tuple[str, str], headers: dict[str, str]) -> None:
    url, _ = keyed
    for path in ("/v1/models", "/v1/no-such-route"):
        response = httpx.get(url + path, headers=headers, timeout=30)
        assert (response.status_code, response.json()) == (401, {"error": "Unauthorized"}), path
    posted = httpx.post(f"{url}/v1/chat/completions", json={"messages": []}, headers=headers, timeout=30)
    assert posted.status_code == 401


def test_the_scheme_is_case_blind(keyed: tuple[str, str]) -> None:
    url, key = keyed
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert (
            httpx.get(f"{url}/v1/models", headers={"Authorization": f"{scheme} {key}"}, timeout=30).status_code == 200
        ), scheme


def test_health_metrics_version_and_ping_stay_open(keyed: tuple[str, str]) -> None:
    url, _ = keyed
    for path in ("/health", "/metrics", "/version", "/ping"):
        assert httpx.get(url + path, timeout=30).status_code == 200, path


def test_options_is_never_checked(keyed: tuple[str, str]) -> None:
    url, _ = keyed
    assert httpx.options(f"{url}/v1/models", timeout=30).status_code != 401
