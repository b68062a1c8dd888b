"""Adapters (admin key): list, activate, roll back — atomic pointer flips that never break serving (R19).

The routes are thin: ``adapters.serving.activate`` / ``rollback`` (the same code as ``rrr adapters``)
verify the folder (R16), load it on every engine replica, probe each, and only then flip the active
pointer in one store transaction; a failed check, load or probe answers 409 and changes nothing
(loads made by the attempt are undone). A rollback plans from the registry, loads and probes its
target, and commits only if the plan still holds. After a flip the app's snapshot of the registry
is read again (``ModelResolver.reload``) so the alias ``rrr`` follows at once. Adapter paths and
engine messages are never shown (R14); the engines' own admin endpoints are never exposed (R15).
The replaced adapter stays loaded (the learner's cycle unloads it after its drain).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.orm import Session
from starlette.responses import Response

from adapters import serving
from api.auth import require_admin
from api.errors import ApiError, bad_request, database_unavailable, json_response, not_found, sanitize
from api.state import DB_ERRORS, get_state, run_db
from api.views import adapter_view
from store.models import ADAPTER_STATUSES
from store.registry import AdapterNotFound, list_adapters

log = logging.getLogger(__name__)
router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)])


def _refused(exc: serving.ActivationError) -> ApiError:
    """409 with a message a user can act on; the engine's own words stay in the log."""
    log.warning("adapter change refused: %s", exc)
    name = exc.name
    if exc.kind == "rejected":
        return ApiError(
            409,
            f"Adapter `{name}` was rejected by the evaluation gate and cannot be activated.",
            code="adapter_rejected",
        )
    if exc.kind == "unsafe":
        return ApiError(
            409, f"Adapter `{name}` cannot be loaded: {sanitize(exc.reason)}; nothing changed.", code="adapter_unsafe"
        )
    if exc.kind == "cannot_serve":
        return ApiError(
            409,
            f"Adapter `{name}` could not be loaded and probed on every engine; nothing changed.",
            code="adapter_load_failed",
        )
    return ApiError(409, "The active adapter changed meanwhile; retry the rollback.", code="conflict")


@router.get("/v1/adapters", response_model=None, summary="List adapters, newest version first")
async def list_adapters_route(
    request: Request, status: str | None = Query(None, description=f"One of {', '.join(ADAPTER_STATUSES)}.")
) -> Response:
    if status is not None and status not in ADAPTER_STATUSES:
        raise bad_request(f"status must be one of {', '.join(ADAPTER_STATUSES)}.", "status")
    state = get_state(request)

    def work(session: Session) -> list[dict[str, Any]]:
        return [adapter_view(a) for a in list_adapters(session, status=status)]

    return json_response({"object": "list", "data": await run_db(state, work), "base_model": state.models.base_model})


@router.post("/v1/adapters/rollback", response_model=None, summary="Re-activate the adapter the active one replaced")
async def rollback(request: Request) -> Response:
    state = get_state(request)
    try:
        flip = await serving.rollback(
            session_factory=state.session_factory,
            engines=state.engine,
            adapters_root=state.settings.resolved_adapters_root(),
        )
    except serving.ActivationError as exc:
        raise _refused(exc) from None
    except DB_ERRORS as exc:
        log.warning("database call failed: %s", type(exc).__name__)
        raise database_unavailable() from None
    finally:
        await state.models.reload()  # the flip serves from the next request on
    if not flip.changed:
        raise ApiError(
            409,
            "No adapter is active; the base model serves and there is nothing to roll back.",
            code="nothing_to_roll_back",
        )
    restored = flip.active
    now_serving = restored.name if restored is not None else state.models.base_model
    log.info("rolled back adapter %s -> %s", flip.replaced, now_serving)
    return json_response(
        {
            "object": "adapter_rollback",
            "retired": flip.replaced,
            "active": adapter_view(restored) if restored is not None else None,
            "serving": now_serving,
        }
    )


@router.post("/v1/adapters/{name}/activate", response_model=None, summary="Make an adapter the active policy")
async def activate(request: Request, name: str) -> Response:
    state = get_state(request)
    try:
        flip = await serving.activate(
            name,
            session_factory=state.session_factory,
            engines=state.engine,
            adapters_root=state.settings.resolved_adapters_root(),
        )
    except AdapterNotFound:
        raise not_found(f"No adapter named `{name}`; GET /v1/adapters lists them.", "name") from None
    except serving.ActivationError as exc:
        raise _refused(exc) from None
    except DB_ERRORS as exc:
        log.warning("database call failed: %s", type(exc).__name__)
        raise database_unavailable() from None
    finally:
        await state.models.reload()  # the flip serves from the next request on
    assert flip.active is not None
    log.info("activated adapter %s", name)
    return json_response(adapter_view(flip.active))
