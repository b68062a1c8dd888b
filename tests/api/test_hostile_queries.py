"""No 500 on valid-looking queries (docs/reliability.md R8, R10): timestamps at the edge of the
calendar, NUL in path ids, seeds beyond 64 bits. Each is a 4xx in OpenAI's error shape, on both
backends, and nothing reaches the engine."""

from __future__ import annotations

import pytest

from tests.api.conftest import ADMIN, INFER, Rrr

EDGE_TIMES = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"]


def _error(response: object) -> dict[str, object]:
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("stamp", EDGE_TIMES)
@pytest.mark.parametrize("route", ["/v1/episodes", "/v1/stats"])
@pytest.mark.parametrize("field", ["since", "until"])
def test_timestamps_that_overflow_in_utc_are_a_400(db_rrr: Rrr, route: str, field: str, stamp: str) -> None:
    response = db_rrr.http(ADMIN).get(route, params={field: stamp})
    assert response.status_code == 400, response.text
    assert _error(response)["param"] == field


@pytest.mark.parametrize(
    "path",
    ["/v1/episodes/a%00b", "/v1/training-runs/a%00b"],
)
def test_a_nul_in_an_id_is_a_404(db_rrr: Rrr, path: str) -> None:
    response = db_rrr.http(ADMIN).get(path)
    assert response.status_code == 404, response.text
    _error(response)


def test_a_nul_in_an_episode_id_of_feedback_is_a_404(db_rrr: Rrr) -> None:
    response = db_rrr.http(INFER).post("/v1/episodes/a%00b/feedback", json={"ok": False})
    assert response.status_code == 404, response.text
    _error(response)


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 2**70])
def test_a_seed_beyond_64_bits_is_a_400_without_a_model_call(rrr: Rrr, seed: int) -> None:
    calls = len(rrr.upstream.requests)
    response = rrr.chat(seed=seed)
    assert response.status_code == 400, response.text
    assert _error(response)["param"] == "seed"
    assert len(rrr.upstream.requests) == calls
    assert rrr.chat(seed=2**63 - 1).status_code == 200
