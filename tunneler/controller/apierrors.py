"""Edge Client API errors: an exception carrying the OpenZiti error code and HTTP status."""

from __future__ import annotations

import json

from aiohttp import web

from tunneler.controller import views


class ApiError(Exception):
    """An API error answered with the OpenZiti error envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def unauthorized(message: str, *, code: str = "UNAUTHORIZED") -> ApiError:
    """A 401: the SDK maps UNAUTHORIZED/INVALID_AUTH to NOT_AUTHORIZED (re-authenticate)."""
    return ApiError(401, code, message)


def not_found(message: str) -> ApiError:
    """A 404 NOT_FOUND: the SDK reports the service as unavailable."""
    return ApiError(404, "NOT_FOUND", message)


def error_response(error: ApiError, request_id: str) -> web.Response:
    """The JSON error envelope for `error`."""
    body = json.dumps(views.error_envelope(error.code, error.message, request_id)).encode()
    return web.Response(body=body, status=error.status, content_type="application/json")
