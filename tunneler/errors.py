"""The exception hierarchy of tunneler.

    TunnelerError
    ├── ConfigError            bad configuration or input file; message says what and how to fix
    ├── IdentityError          identity file missing, unreadable, wrong mode, bad PEM
    ├── EnrollmentError        enrollment token invalid, expired, used; controller refused
    ├── CacheError             a persisted service cache is unreadable or too readable
    ├── ControllerError        Edge Client API error (carries the API error code)
    │   └── NotAuthorized      the API session is invalid or expired (re-authenticate)
    ├── ProtocolError          a peer broke the channel/edge protocol
    │   ├── FrameError         a frame could not be decoded (bad magic, oversized, truncated)
    │   └── CryptoError        end-to-end encryption failed (bad header, failed decrypt)
    └── DialError              a dial or bind failed (carries the reason from the router/host)
"""

from __future__ import annotations


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


class ControllerError(TunnelerError):
    """The controller answered with an error envelope."""

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class NotAuthorized(ControllerError):
    """The API session is not (or no longer) valid."""


class ProtocolError(TunnelerError):
    """A peer violated the channel or edge protocol."""


class FrameError(ProtocolError):
    """A channel frame could not be decoded."""


class CryptoError(ProtocolError):
    """End-to-end encryption failed."""


class DialError(TunnelerError):
    """A dial or bind was refused or failed."""
