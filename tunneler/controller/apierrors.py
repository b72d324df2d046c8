"""Edge Client API errors: `ApiError` (errors.py) for each status, and its JSON envelope."""

from __future__ import annotations

import json

from aiohttp import web

from tunneler.controller import views
from tunneler.errors import ApiError


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def challenge(scheme: str, error: str, description: str) -> str:
    """One `WWW-Authenticate` challenge as controller 2.x writes it.

    `scheme` is `zt-session` (realm "zt-session") or `Bearer` (realm "openziti-oidc");
    `error` is `missing`, `expired` or `invalid`.
    """
    realm = "zt-session" if scheme == "zt-session" else "openziti-oidc"
    return f'{scheme} realm="{realm}" error="{error}" error_description="{description}"'


def unauthorized(message: str, *, code: str = "UNAUTHORIZED",
                 challenges: tuple[str, ...] = ()) -> ApiError:
    """A 401: the SDK maps UNAUTHORIZED/INVALID_AUTH to NOT_AUTHORIZED (re-authenticate).

    `challenges` become one `WWW-Authenticate` header, comma-separated.
    """
    headers = {"WWW-Authenticate": ",".join(challenges)} if challenges else None
    return ApiError(401, code, message, headers=headers)


def not_found(message: str) -> ApiError:
    """A 404 NOT_FOUND: the SDK reports the service as unavailable."""
    return ApiError(404, "NOT_FOUND", message)


def error_response(error: ApiError, request_id: str) -> web.Response:
    """The JSON error envelope for `error`."""
    body = json.dumps(views.error_envelope(error.code, error.message, request_id)).encode()
    return web.Response(body=body, status=error.status, content_type="application/json",
                        headers=error.headers)
