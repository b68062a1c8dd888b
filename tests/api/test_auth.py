"""R13 and R15: every route walked for auth, keys hashed and never shown, engine admin routes absent."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import Route

from api.app import create_app
from api.auth import BindRefused, KeyRing, check_bind, is_loopback
from tests.api.conftest import ADMIN, INFER, Rrr, StartRrr, make_settings

OPEN = {
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/openapi.json"),
}
INFERENCE = {
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/responses"),
    ("GET", "/v1/models"),
    ("POST", "/v1/episodes/{episode_id}/feedback"),
}
# Every other route needs an admin key: a new route is admin-only until it is listed above.


def _routes(rrr: Rrr) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, included routers flattened."""
    found = []
    for route in iter_route_contexts(rrr.app.routes):
        assert isinstance(route.original_route, APIRoute | Route), route
        for method in sorted(route.methods or []):
            if method != "HEAD":
                found.append((method, str(route.path)))
    return found


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def test_the_route_table_is_what_this_test_knows(rrr: Rrr) -> None:
    routes = set(_routes(rrr))
    assert routes >= OPEN | INFERENCE
    admin = routes - OPEN - INFERENCE
    assert {
        ("GET", "/v1/episodes"),
        ("GET", "/v1/stats"),
        ("POST", "/v1/adapters/rollback"),
        ("GET", "/v1/training-runs"),
    } <= admin
    assert ("POST", "/v1/training-runs") not in routes  # runs are created by the learner only


def test_every_route_is_walked_for_auth(rrr: Rrr) -> None:
    routes = _routes(rrr)
    assert len(routes) >= 15
    with (
        rrr.http(None) as anonymous,
        rrr.http("sk-wrong-key") as wrong,
        rrr.http(INFER) as inference,
        rrr.http(ADMIN) as admin,
    ):
        for method, path in routes:
            url = _concrete(path)
            no_key = anonymous.request(method, url, json={})
            if (method, path) in OPEN:
                assert no_key.status_code == 200, (method, path, no_key.status_code)
                continue
            assert no_key.status_code == 401, (method, path)
            assert no_key.json()["error"]["code"] == "invalid_api_key"
            assert no_key.headers["www-authenticate"] == "Bearer"
            assert wrong.request(method, url, json={}).status_code == 401, (method, path)
            with_inference = inference.request(method, url, json={})
            if (method, path) in INFERENCE:
                assert with_inference.status_code not in (401, 403), (method, path)
            else:
                assert with_inference.status_code == 403, (method, path)
                assert with_inference.json()["error"]["code"] == "admin_key_required"
            assert admin.request(method, url, json={}).status_code not in (401, 403), (method, path)


def test_auth_schemes_and_malformed_headers(rrr: Rrr) -> None:
    with rrr.http(None) as http:
        for header in ("Basic abc", "Bearer", f"Token {INFER}", INFER, "Bearer x y"):
            assert http.get("/v1/models", headers={"Authorization": header}).status_code == 401, header
        assert http.get("/v1/models", headers={"Authorization": f"bearer {INFER}"}).status_code == 200
        assert http.get("/v1/models", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200


def test_engine_admin_routes_are_not_reachable_through_rrr(rrr: Rrr) -> None:
    with rrr.http(ADMIN) as http:
        for path in (
            "/v1/load_lora_adapter",
            "/v1/unload_lora_adapter",
            "/load_lora_adapter",
            "/v1/lora/load",
            "/v1/completions",
            "/pause",
            "/sleep",
        ):
            response = http.post(path, json={"lora_name": "evil", "lora_path": "/tmp/evil"})
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "not_found"
    assert rrr.upstream.admin_calls == [] and rrr.upstream.calls() == 0


def test_keys_are_hashed_and_never_shown_or_logged(rrr: Rrr, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    response = rrr.chat()
    assert response.status_code == 200
    rrr.chat(key="sk-not-a-key")
    episode = rrr.episode(response.json()["rrr"]["episode_id"])
    assert episode["client_key_id"] == hashlib.sha256(INFER.encode()).hexdigest()[:12]
    with rrr.http(None) as http:
        metrics = http.get("/metrics").text
        openapi = http.get("/openapi.json").text
    for text in (caplog.text, metrics, openapi, repr(rrr.settings), repr(vars(rrr.state.keys))):
        for secret in (INFER, ADMIN, "sk-not-a-key"):
            assert secret not in text


def test_keyring_compares_every_hash() -> None:
    ring = KeyRing(["a-key"], ["b-key"])
    assert ring.identify("a-key") is not None and ring.identify("a-key").admin is False  # type: ignore[union-attr]
    assert ring.identify("b-key").admin is True  # type: ignore[union-attr]
    assert ring.identify("c-key") is None
    assert ring.identify("a-ke") is None
    assert not KeyRing([], []).enabled


def test_no_keys_means_loopback_only(tmp_path: Path, start_rrr: StartRrr) -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com", "", "192.168.1.1"))
    check_bind("0.0.0.0", auth_enabled=True)
    with pytest.raises(BindRefused, match="RRR_API_KEYS"):
        check_bind("0.0.0.0", auth_enabled=False)

    settings = make_settings(
        tmp_path, host="0.0.0.0", api_keys=[], admin_keys=[], engine_urls=["http://127.0.0.1:9/v1"]
    )
    app = create_app(settings)

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(BindRefused):
        asyncio.run(start())

    open_rrr = start_rrr(api_keys=[], admin_keys=[])
    with open_rrr.http(None) as http:
        assert http.get("/v1/episodes").status_code == 200
        assert http.get("/v1/models").status_code == 200
