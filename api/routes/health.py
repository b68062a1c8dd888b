"""Open routes: ``/health`` and ``/metrics`` (no key, R13).

``GET /health`` probes the engines (bounded by ``HEALTH_TIMEOUT_S``) and reads the writer's state:

* ``ok`` (200): an engine answers and episodes are written to the database;
* ``degraded`` (200): one of the two is failing — no engine answers (inspection and admin still
  work), or the episode writer cannot write (the database is unreachable, or a write did not complete
  within ``RRR_DB_WRITE_TIMEOUT_S``) and episodes go to the spool (serving still works, R6);
* ``down`` (503): neither works, or the app is shutting down (``draining``), so a load balancer
  should send traffic elsewhere.

``GET /metrics`` is the Prometheus text exposition of ``api.metrics``.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from api.errors import json_response
from api.metrics import CONTENT_TYPE
from api.state import get_state

router = APIRouter(tags=["health"])

HEALTH_TIMEOUT_S = 2.0


@router.get("/health", response_model=None, summary="Liveness and readiness: ok, degraded or down")
async def health(request: Request) -> Response:
    state = get_state(request)
    try:
        engine_up = bool(await asyncio.wait_for(state.engine.health(), HEALTH_TIMEOUT_S))
    except Exception:  # a probe that fails or hangs means "not answering", nothing more
        engine_up = False
    writer = state.writer.stats()
    store_ok = not writer["degraded"]
    if state.draining or (not engine_up and not store_ok):
        status, code = "down", 503
    elif engine_up and store_ok:
        status, code = "ok", 200
    else:
        status, code = "degraded", 200
    return json_response(
        {
            "status": status,
            "engine": {"up": engine_up},
            "store": {"degraded": not store_ok, "queue_depth": writer["queue_depth"], "dropped": writer["dropped"]},
            "draining": state.draining,
        },
        status=code,
    )


@router.get("/metrics", response_model=None, summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(get_state(request).metrics.render(), media_type=CONTENT_TYPE)
