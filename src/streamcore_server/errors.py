"""API errors and the one place they become HTTP responses.

Every error body is {"error": {"code", "message", "details"}}; no stack trace reaches a client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

log = logging.getLogger("streamcore_server.errors")


class ApiError(Exception):
    """An error the client should see, with a machine-readable code."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details
        self.headers = headers


class MalformedJson(ApiError):
    status, code = 400, "malformed_json"


class InvalidCursor(ApiError):
    status, code = 400, "invalid_cursor"


class InvalidQuery(ApiError):
    status, code = 400, "invalid_query"


class Unauthorized(ApiError):
    """Missing credentials, or credentials that do not match (login)."""

    status, code = 401, "unauthorized"

    def __init__(self, message: str = "Authentication required.", **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kwargs)


class InvalidToken(Unauthorized):
    code = "invalid_token"


class NotFound(ApiError):
    status, code = 404, "not_found"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class ValidationFailed(ApiError):
    """details is a list of {"field", "message"}, one per bad field."""

    status, code = 422, "validation_failed"


class TooManyRequests(ApiError):
    status, code = 429, "too_many_requests"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """Shape one error the way every endpoint answers."""
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Build the JSON response for one error."""
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "too_many_requests",
}


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.routes:
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches({**request.scope, "method": "GET"})[0] != Match.NONE:
            methods |= set(route_methods)
    return ", ".join(sorted(methods))


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": allowed_methods(request)}
    return error_response(exc.status_code, code, str(exc.detail), None, headers)


# nginx's "client closed request": the client left before it was answered. A 4xx, so a client
# that drops mid-body never counts against availability or fires a 5xx alert.
CLIENT_CLOSED_REQUEST = 499


async def client_disconnect_handler(request: Request, exc: Exception) -> Response:
    log.info("client disconnected before the request was read", extra={"path": request.url.path})
    return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it; the log line does


def internal_error_response() -> JSONResponse:
    """The answer to any failure the app did not foresee: nothing about its cause."""
    return error_response(500, "internal_error", "The server failed to handle this request.")


async def unhandled_error_handler(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log, never to the client.
    log.exception("unhandled error", extra={"path": request.url.path})
    return internal_error_response()


EXCEPTION_HANDLERS = {
    ApiError: api_error_handler,
    ClientDisconnect: client_disconnect_handler,
    HTTPException: http_exception_handler,
    Exception: unhandled_error_handler,
}
