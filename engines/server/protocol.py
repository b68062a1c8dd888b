"""The wire side of the engine server: request bodies, vLLM's JSON content-type rule and `--api-key`.

Who calls it: `engines.server.app` declares its routes with these. Bodies are plain pydantic
models, so unknown keys are accepted and ignored as in vLLM; a missing or mistyped field is FastAPI's
validation error, which the server answers as vLLM does (400 `Bad Request`, never 422).
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.types import ASGIApp, Receive, Scope, Send

AUTH_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")


class ChatBody(BaseModel):
    """The fields of a chat-completion request the server reads; others are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    messages: list[dict[str, Any]]
    model: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = True
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = 1


class LoadLoRABody(BaseModel):
    lora_name: str
    lora_path: str
    load_inplace: bool = False
    is_3d_lora_weight: bool = False


class UnloadLoRABody(BaseModel):
    lora_name: str
    lora_int_id: int | None = None


def require_json(request: Request) -> None:
    """vLLM's `validate_json_request`: anything but `application/json` is a 400 validation error."""
    media_type = request.headers.get("content-type", "").lower().split(";", 1)[0].strip()
    if media_type != "application/json":
        raise RequestValidationError(["Unsupported Media Type: Only 'application/json' is allowed"])


class BearerAuth:
    """`--api-key`: paths under /v1, /v2, /inference and /cohere need `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.expected = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "OPTIONS" and scope["path"].startswith(AUTH_PREFIXES):
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.expected):
                await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)
