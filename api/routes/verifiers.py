"""``GET /v1/verifiers`` (admin key): the verifier policy in force (``tools.verifiers.policy``).

The default verifier, the per-tool verifiers (as the specs stored on episodes), the declared
webhooks (URL, timeout, whether re-runnable, whether a key is set; never the key), the enabled
plugins, and whether a client's ``rrr.verifier`` may add checks.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from api.auth import require_admin
from api.errors import json_response
from api.state import get_state
from tools.verifiers.plugin import installed_plugins
from tools.verifiers.specs import VERIFIER_TYPES

router = APIRouter(tags=["inspection"], dependencies=[Depends(require_admin)])


@router.get("/v1/verifiers", response_model=None, summary="The verifier policy in force")
async def get_verifiers(request: Request) -> Response:
    policy = get_state(request).policy
    return json_response(
        {
            "object": "verifier_policy",
            **policy.describe(),
            "types": list(VERIFIER_TYPES),
            "installed_plugins": sorted(installed_plugins()),
        }
    )
