"""vLLM's error contract for `rrr engine serve` (docs/vllm.md §4).

Who calls it: the routes of the engine server raise `ServerError`; `install_error_handlers` turns
it, FastAPI's body validation and anything unexpected into `{"error": {message, type, param, code}}`
with HTTP status = code (or the pre-0.10.1 flat shape when the legacy switch is on), messages
sanitised the way vLLM does. Unknown routes and wrong methods keep FastAPI's `{"detail": ...}`
bodies, as on a real vLLM. It does not decide which error a request deserves.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)

_ADDRESS = re.compile(r" at 0x[0-9a-f]+>")
_TRACE_FRAME = re.compile(r'\n?\s*File "[^"]+", line \d+, in \S+(\n\s+.*)?')
_SYSTEM_PATH = re.compile(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+")
_FILE_PATH = re.compile(r"(?:/[\w\-]+)+/[\w\-]+\.\w+")
_MAX_ERRORS = 10
_MAX_INPUT = 200
_MAX_ERROR_TEXT = 1000


def sanitize_message(message: str) -> str:
    """Drop addresses and traceback frames; absolute system paths and file paths become `<path>`."""
    message = _ADDRESS.sub(">", message)
    message = _TRACE_FRAME.sub("", message)
    message = _SYSTEM_PATH.sub("<path>", message)
    message = _FILE_PATH.sub("<path>", message)
    return message.strip()


class ServerError(Exception):
    """An error the server answers in vLLM's shape; `message` is sanitised on the way out."""

    def __init__(
        self, status: int, message: str, type_: str, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.headers = headers


def bad_request(message: str, param: str | None = None) -> ServerError:
    """A request-validator error: 400 BadRequestError, message suffixed with the parameter as vLLM does."""
    text = f"{message} (parameter={param})" if param is not None else message
    return ServerError(400, text, "BadRequestError", param)


def error_body(status: int, message: str, type_: str, param: str | None, *, legacy: bool = False) -> dict[str, Any]:
    info = {"message": sanitize_message(message), "type": type_, "param": param, "code": status}
    return {"object": "error", **info} if legacy else {"error": info}


def error_response(exc: ServerError, *, legacy: bool = False) -> JSONResponse:
    return JSONResponse(
        error_body(exc.status, exc.message, exc.type, exc.param, legacy=legacy),
        status_code=exc.status,
        headers=exc.headers,
    )


def _loc_param(loc: Any) -> str | None:
    if not isinstance(loc, (tuple, list)) or not loc:
        return None
    # pydantic spells union branches and wrappers into `loc`; vLLM keeps only real field names.
    parts = [str(p) for p in loc if not re.search(r"[\[\]{}()]", str(p))]
    return ".".join(parts or [str(p) for p in loc])


def _short_input(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= _MAX_INPUT else value[:_MAX_INPUT] + "...[truncated]"
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        return f"<{type(value).__name__} of {len(value)} items>"
    if isinstance(value, (bytes, bytearray)):
        return f"<{type(value).__name__} of {len(value)} bytes>"
    return value


def validation_message(errors: list[Any]) -> tuple[str, str | None]:
    """vLLM's text for a body validation failure (built from the errors, never from str(exc))."""
    if not errors:
        return "Validation error", None
    lines = []
    for err in errors[:_MAX_ERRORS]:
        if isinstance(err, dict):
            err = dict(err)
            if "input" in err:
                err["input"] = _short_input(err["input"])
            if isinstance(err.get("loc"), (tuple, list)):
                err["loc"] = _loc_param(err["loc"])
        text = str(err)
        lines.append(text if len(text) <= _MAX_ERROR_TEXT else text[:_MAX_ERROR_TEXT] + "...[truncated]")
    label = "error" if len(errors) == 1 else "errors"
    message = f"{len(errors)} validation {label}:\n" + "".join(f"  {line}\n" for line in lines)
    if len(errors) > _MAX_ERRORS:
        message += f"  ...and {len(errors) - _MAX_ERRORS} more {label}\n"
    first = errors[0]
    param = _loc_param(first.get("loc")) if isinstance(first, dict) else None
    return message.rstrip(), param


def install_error_handlers(app: FastAPI, *, legacy: bool = False) -> None:
    """Body validation -> 400 `Bad Request`; ServerError -> its status; anything else -> 500."""

    async def on_server_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServerError)
        return error_response(exc, legacy=legacy)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message, param = validation_message(list(exc.errors()))
        return JSONResponse(
            error_body(400, message, HTTPStatus.BAD_REQUEST.phrase, param, legacy=legacy), status_code=400
        )

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail), HTTPStatus(exc.status_code).phrase, None, legacy=legacy),
            status_code=exc.status_code,
        )

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in the engine server")
        return JSONResponse(
            error_body(500, str(exc) or type(exc).__name__, "InternalServerError", None, legacy=legacy), status_code=500
        )

    app.add_exception_handler(ServerError, on_server_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
