"""Our side of OpenZiti's OIDC login: authorization code with PKCE, certificate login, refresh.

The same steps libziti 1.x takes (openziti-current.md §1.2), over the controller client's
mutual-TLS HTTP session, against the embedded controller or a real OpenZiti 2.x one:
discovery (`<oidc>/.well-known/openid-configuration`), `POST authorize` with PKCE (the answer
redirects with `authRequestID`), `POST /oidc/login/cert?id=…` with the client certificate, the
redirects to the code, then the token endpoint (`authorization_code`, later `refresh_token`).
Redirects are followed by hand: the last one points at a loopback callback that nobody serves.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp

from tunneler import __version__, jwt, oidctokens
from tunneler.errors import ControllerError, NotAuthorized, TokenError

CLIENT_ID = "openziti"
REDIRECT_URI = "http://localhost:20314/auth/callback"
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Tokens:
    """The tokens of one OIDC API session."""

    access: str
    refresh: str
    expires_at: float  # the access token's exp (epoch seconds)
    api_session_id: str
    identity_id: str


class OidcClient:
    """OIDC login and refresh against one controller's `/oidc` API."""

    def __init__(self, http: aiohttp.ClientSession, provider: str) -> None:
        self._http = http
        self.provider = provider.rstrip("/")
        self._config: dict[str, Any] | None = None

    async def login(self) -> Tokens:
        """The whole authorization-code flow with the client certificate.

        Raises:
            ControllerError: the controller is unreachable or refused a step.
        """
        config = await self._configuration()
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state = secrets.token_urlsafe(16)
        location = await self._redirect("POST", str(config["authorization_endpoint"]), params={
            "client_id": CLIENT_ID, "scope": " ".join(oidctokens.SCOPES),
            "response_type": "code", "redirect_uri": REDIRECT_URI, "code_challenge": challenge,
            "code_challenge_method": "S256", "state": state, "audience": oidctokens.AUDIENCE})
        request_id = _query_value(location, "authRequestID")
        location = await self._redirect("POST", urljoin(self.provider, "/oidc/login/cert"),
                                        params={"id": request_id},
                                        json={"sdkInfo": {"type": "tunneler",
                                                          "version": __version__},
                                              "envInfo": {"os": "Linux"}})
        for _ in range(MAX_REDIRECTS):
            if location.startswith(REDIRECT_URI):
                break
            location = await self._redirect("GET", urljoin(self.provider, location))
        else:
            raise ControllerError("OIDC_LOGIN_FAILED", "too many redirects during OIDC login")
        if _query_value(location, "state") != state:
            raise ControllerError("OIDC_LOGIN_FAILED", "the OIDC callback carries another state")
        return await self._token({"grant_type": "authorization_code",
                                  "code": _query_value(location, "code"),
                                  "code_verifier": verifier, "client_id": CLIENT_ID,
                                  "redirect_uri": REDIRECT_URI, "state": state})

    async def refresh(self, tokens: Tokens) -> Tokens:
        """New tokens for the same API session.

        Raises:
            NotAuthorized: the refresh token is no longer good (log in again);
            ControllerError: the controller is unreachable.
        """
        return await self._token({"grant_type": "refresh_token", "refresh_token": tokens.refresh,
                                  "client_id": CLIENT_ID})

    async def _configuration(self) -> dict[str, Any]:
        if self._config is None:
            url = f"{self.provider}/.well-known/openid-configuration"
            config = await self._json("GET", url)
            if not all(isinstance(config.get(k), str)
                       for k in ("authorization_endpoint", "token_endpoint")):
                raise ControllerError("OIDC_CONFIG_INVALID",
                                      "the OIDC configuration lacks its endpoints")
            self._config = config
        return self._config

    async def _token(self, form: dict[str, str]) -> Tokens:
        config = await self._configuration()
        headers = {"Authorization": "Basic " + base64.b64encode(f"{CLIENT_ID}:".encode()).decode()
                   } if form["grant_type"] == "refresh_token" else {}
        payload = await self._json("POST", str(config["token_endpoint"]), data=form,
                                   headers=headers)
        access, refresh = payload.get("access_token"), payload.get("refresh_token")
        if not isinstance(access, str) or not isinstance(refresh, str):
            raise ControllerError("OIDC_TOKEN_INVALID", "the token endpoint sent no tokens")
        claims = _claims(access)
        return Tokens(access, refresh, float(claims.get("exp", 0)), str(claims.get("z_asid", "")),
                      str(claims.get("sub", "")))

    async def _redirect(self, method: str, url: str, **kwargs: Any) -> str:
        """One request whose answer must be a redirect; its Location."""
        try:
            async with self._http.request(method, url, allow_redirects=False,
                                          **kwargs) as response:
                location = response.headers.get("Location")
                status = response.status
                body = await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ControllerError("CONTROLLER_UNAVAILABLE", f"{method} {url}: {exc}") from exc
        if status // 100 != 3 or not location:
            cls = NotAuthorized if status == 401 else ControllerError
            raise cls("OIDC_LOGIN_FAILED", f"{method} {urlsplit(url).path}: {status} "
                      f"{body[:200]}", status)
        return location

    async def _json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            async with self._http.request(method, url, allow_redirects=False,
                                          **kwargs) as response:
                status = response.status
                payload = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ControllerError("CONTROLLER_UNAVAILABLE", f"{method} {url}: {exc}") from exc
        except ValueError as exc:
            raise ControllerError("INVALID_CONTROLLER_RESPONSE", f"{method} {url}: {exc}") from exc
        if not isinstance(payload, dict):
            raise ControllerError("INVALID_CONTROLLER_RESPONSE", f"{method} {url}: not an object")
        if status != 200:
            error = str(payload.get("error", "")) or str(status)
            cls = NotAuthorized if error in ("invalid_grant", "access_denied") or status == 401 \
                else ControllerError
            raise cls(error.upper(), str(payload.get("error_description", "")), status)
        return payload


def _query_value(location: str, name: str) -> str:
    values = parse_qs(urlsplit(location).query).get(name)
    if not values:
        raise ControllerError("OIDC_LOGIN_FAILED", f"the OIDC redirect carries no {name}")
    return values[0]


def _claims(token: str) -> dict[str, Any]:
    try:
        _, claims = jwt.decode_unverified(token, error=TokenError)
    except TokenError as exc:
        raise ControllerError("OIDC_TOKEN_INVALID", f"the access token is not a JWT: {exc}") \
            from exc
    return claims
