"""The exception classes of tunneler, all of them (one home: no module defines its own).

    TunnelerError
    ├── ConfigError            bad configuration or input file; message says what and how to fix
    ├── IdentityError          identity file missing, unreadable, wrong mode, bad PEM
    ├── EnrollmentError        enrollment token invalid, expired, used; controller refused
    ├── CacheError             a persisted service cache is unreadable or too readable
    ├── TokenError             an OIDC token is malformed, forged, expired or not ours (`expired`)
    ├── ControllerError        Edge Client API error (carries the API error code)
    │   └── NotAuthorized      the API session is invalid or expired (re-authenticate)
    ├── OidcError              the embedded controller's OAuth error (RFC 6749 `code`)
    ├── ProtocolError          a peer broke the channel/edge protocol
    │   ├── FrameError         a frame could not be decoded (bad magic, oversized, truncated)
    │   └── CryptoError        end-to-end encryption failed (bad header, failed decrypt)
    ├── DialError              a dial or bind failed (message from the router/host; `DialFailure`)
    │   ├── InvalidSessionError  the router refused the session token: get a new one
    │   └── HelloRejected      the router refused our API session in the channel Hello
    ├── PoolExhausted          no virtual IP is free
    │   └── WildcardQuotaExceeded  a wildcard domain holds its quota of names
    ├── TunError               a TUN device could not be created or used
    ├── JournalError           the undo journal is unreadable, unwritable or owned by a live process
    ├── DnsSetupError          the OS resolver could not be configured or restored
    └── ControlError           the control socket is unreachable, refused us, or answered an error

Outside `TunnelerError`, on purpose (their callers catch them as what they derive from):

    Exception
    └── ApiError               an Edge Client API answer of the embedded controller (HTTP status,
                               code); its middleware turns it into the error envelope
    ValueError
    ├── MalformedMessage       a DNS message could not be decoded (dns/answer.py, sans-IO)
    └── InvalidRequest         the LLM stub cannot serve a request (`param`, OpenAI style)
    RuntimeError
    ├── NetnsError             a demo namespace command failed or a tool is missing
    └── DemoFailed             a demo step did not show what it should
"""

from __future__ import annotations

import enum


class TunnelerError(Exception):
    """Base class of every error tunneler raises on purpose."""


class ConfigError(TunnelerError):
    """Configuration or an input file is invalid."""


class IdentityError(TunnelerError):
    """An identity file cannot be used."""


class EnrollmentError(TunnelerError):
    """Enrollment failed."""


class CacheError(TunnelerError):
    """A persisted service cache could not be used (the daemon then waits for its controller)."""


class TokenError(TunnelerError):
    """A token is malformed, forged, expired, of the wrong type or for someone else."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


class ControllerError(TunnelerError):
    """The controller answered with an error envelope."""

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class NotAuthorized(ControllerError):
    """The API session is not (or no longer) valid."""


class OidcError(TunnelerError):
    """An OAuth error: `code` is the RFC 6749 error code (invalid_request, invalid_grant...)."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class ProtocolError(TunnelerError):
    """A peer violated the channel or edge protocol."""


class FrameError(ProtocolError):
    """A channel frame could not be decoded."""


class CryptoError(ProtocolError):
    """End-to-end encryption failed."""


class DialFailure(enum.Enum):
    """Why a dial failed, as counted (`tunneler.counters`) and shown by `status`."""

    TIMEOUT = "timeout"        # no answer in time (router, host, target connect, resolving)
    NO_ROUTER = "no_router"    # no edge router of the service could be reached
    CONTROLLER = "controller"  # the controller could not give a session
    REFUSED = "refused"        # the router or the host refused it (the default)
    ERROR = "error"            # anything else (not a DialError)


class DialError(TunnelerError):
    """A dial or bind was refused or failed; `reason` says why, set where it is raised."""

    def __init__(self, message: str, reason: DialFailure = DialFailure.REFUSED) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidSessionError(DialError):
    """The router refused the session token ("Invalid Session" or a prefix): get a new one."""


class HelloRejected(DialError):
    """The router refused our API session token (expired, unknown after a restart, ...)."""


class PoolExhausted(TunnelerError):
    """No virtual IP is free (every address is in use or quarantined)."""


class WildcardQuotaExceeded(PoolExhausted):
    """A wildcard domain holds its quota of names and none can be evicted."""


class TunError(TunnelerError):
    """A TUN device could not be created or used; the message says how to fix it."""


class JournalError(TunnelerError):
    """The journal cannot be read, written, or is owned by a live process."""


class DnsSetupError(TunnelerError):
    """The OS resolver could not be configured or restored."""


class ControlError(TunnelerError):
    """The control socket could not be reached, refused us, or answered with an error."""


class ApiError(Exception):
    """An API error answered with the OpenZiti error envelope."""

    def __init__(self, status: int, code: str, message: str, *,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class MalformedMessage(ValueError):
    """A DNS message could not be decoded within the bounds."""


class InvalidRequest(ValueError):
    """The request cannot be served; `param` names the offending field (OpenAI style)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class NetnsError(RuntimeError):
    """A namespace command failed or a tool is missing; the message says which and why."""


class DemoFailed(RuntimeError):
    """A step did not show what it should; the message says what."""
