"""``GET /v1/models``: the alias ``rrr``, the base model and the registered adapters (OpenAI model cards).

Cards come from ``agent.policy.PolicyResolver.models`` through the app's ``ModelResolver``; they
never carry adapter paths. An inference key is enough.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from api.auth import require_inference
from api.errors import json_response
from api.state import get_state

router = APIRouter(tags=["inference"], dependencies=[Depends(require_inference)])


@router.get("/v1/models", response_model=None, summary="List the models a client may name")
async def list_models(request: Request) -> Response:
    cards = await get_state(request).models.models()
    return json_response({"object": "list", "data": cards})
