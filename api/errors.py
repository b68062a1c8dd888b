"""Every error the API answers, in OpenAI's shape, leaking nothing (R14).

Routes raise ``ApiError`` (or one of the helpers below); ``install_error_handlers`` turns it, the
framework's own 404/405/validation errors and any unexpected exception into
``{"error": {"message", "type", "param", "code"}}`` with a matching HTTP status. Messages are
written for the user to act on. An engine's error text is not shown at all (the chat route
answers an engine 4xx with a fixed message per status); every message still goes through
``sanitize``, which drops tracebacks, URLs, credentials, API tokens, host:port pairs and file paths.
An unexpected exception is logged here with its traceback and answered with a generic 500.

It does not decide which error a request deserves (the routes do).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from api.wire import dumps

log = logging.getLogger(__name__)

_TRACEBACK = re.compile(r"Traceback \(most recent call last\):.*", re.DOTALL)
_FRAME = re.compile(r'File "[^"]*", line \d+(, in \S+)?')
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://\S+")
_USERINFO = re.compile(r"(?<![\w.+\-%~])[\w.+\-%~]+:[^\s@/]+@[\w.\-\[\]:]+")
_BEARER = re.compile(r"\b(Bearer|Basic|Token)\s+[\w.~+/=\-]+", re.IGNORECASE)
_TOKEN = re.compile(r"\b(?:sk|hf|ghp|gho|ghs|ghu|github_pat|glpat|xox[abprs])[-_][\w\-]{16,}")
_HOST_PORT = re.compile(
    r"\b(?:\d{1,3}(?:\.\d{1,3}){3}|localhost)(?::\d+)?\b"
    r"|\[[0-9a-fA-F:.]*:[0-9a-fA-F:.]*\](?::\d+)?"
    r"|\b(?:[A-Za-z0-9](?:[\w\-]{0,62}[A-Za-z0-9])?\.){1,10}[A-Za-z][\w\-]{0,62}:\d{1,5}\b"
)
_PATH = re.compile(r"(?<![\w.#])(?:~|\.{1,2})?(?:/[\w.\-@+]+){2,}/?")
_WIN_PATH = re.compile(r"\b[A-Za-z]:\\[^\s'\"]+")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
MAX_MESSAGE_CHARS = 2000

# OpenAI's error types, by status.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    501: "server_error",
    502: "upstream_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


def sanitize(message: str) -> str:
    """A message safe to show: no traceback, URL, credentials, token, address, host:port or file path; bounded.

    A last line of defence for text rrr stores or builds (episode and run errors, adapter reasons):
    an engine's own error text is never passed through it to a client (``api.routes.chat``
    answers with fixed messages instead).
    """
    text = _TRACEBACK.sub("", message[: 4 * MAX_MESSAGE_CHARS])  # bounded work, whatever the input
    text = _FRAME.sub("", text)
    text = _URL.sub("<url>", text)
    text = _USERINFO.sub("<host>", text)
    text = _BEARER.sub(r"\1 <token>", text)
    text = _TOKEN.sub("<token>", text)
    text = _HOST_PORT.sub("<host>", text)
    text = _PATH.sub("<path>", text)
    text = _WIN_PATH.sub("<path>", text)
    text = _ADDRESS.sub("", text)
    text = text.strip()
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "…"
    return text


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with HTTP ``status``; ``headers`` are added to it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, type_=self.type, param=self.param, code=self.code)


def error_body(
    status: int, message: str, *, type_: str | None = None, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": sanitize(message),
            "type": type_ or _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response serialised once, strictly (no NaN), without a response model's overhead."""
    return Response(dumps(body), status_code=status, headers=headers, media_type="application/json")


def error_response(exc: ApiError) -> Response:
    return json_response(exc.body(), exc.status, exc.headers)


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_request") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(message: str, param: str | None = None, code: str | None = "not_found") -> ApiError:
    return ApiError(404, message, param=param, code=code)


def database_unavailable() -> ApiError:
    return ApiError(
        503, "The database is unavailable; retry shortly.", code="database_unavailable", headers={"Retry-After": "2"}
    )


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = list(exc.errors())
    if not errors:
        return "The request is invalid.", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid value"))
    where = f" ({param})" if param else ""
    more = f" and {len(errors) - 1} more problem(s)" if len(errors) > 1 else ""
    return f"Invalid request{where}: {message}{more}.", param


def install_error_handlers(app: FastAPI) -> None:
    """ApiError → its status; 404/405 and validation → OpenAI shape; anything else → a generic 500."""

    async def on_api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        if status == 404:
            message, code = "Not found: no such route or object.", "not_found"
        elif status == 405:
            message, code = "Method not allowed on this route.", "method_not_allowed"
        else:
            message, code = (str(exc.detail) if isinstance(exc.detail, str) else "Request failed."), None
        headers = dict(exc.headers or {})
        return error_response(ApiError(status, message, code=code, headers=headers))

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        message, param = _validation_message(exc)
        return error_response(bad_request(message, param))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(ApiError(500, "Internal error; it has been logged.", code="internal_error"))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)
