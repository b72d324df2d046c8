"""Client certificate renewal before expiry, as OpenZiti clients do it (openziti-current.md §2.5).

When two thirds of the certificate's validity have passed (and at start if that is already
so), `Renewal.renew()` makes a new key pair and CSR, asks `POST .../authenticators/{id}/extend`
for a certificate, writes the renewed identity next to the current file as `<file>.renewing`
(atomically, mode 0600), confirms with `extend-verify`, then moves it over the identity file.
Until the controller has the new certificate verified the current file stays as it is, so a
crash at any point leaves a working identity: at the next start `resume()` verifies a
`.renewing` file left behind (or adopts it, when the controller already verified it and so no
longer accepts the old certificate). Failures are retried with backoff (`RETRY_CAP`); status
shows the expiry, the last renewal and the last error, and `expiring()` says when an identity
is within `WARN_BEFORE` (or a tenth of its lifetime) of expiry.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from tunneler import keys
from tunneler.errors import IdentityError
from tunneler.identity import Identity, load_identity, save_identity

RENEW_AT = 2 / 3
RETRY_CAP = 60.0
WARN_BEFORE = 7 * 86400.0
SUFFIX = ".renewing"


def validity(cert: x509.Certificate) -> tuple[float, float]:
    """(not before, not after) in epoch seconds."""
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def renewal_due(cert: x509.Certificate) -> float:
    """When to renew: two thirds into the validity (epoch seconds)."""
    start, end = validity(cert)
    return start + (end - start) * RENEW_AT


def expiring(cert: x509.Certificate, now: float) -> bool:
    """Within 7 days, or a tenth of the lifetime for short ones, of the expiry (or past it)."""
    start, end = validity(cert)
    return end - now <= min(WARN_BEFORE, (end - start) / 10)


def pending_path(path: Path) -> Path:
    """Where a renewed identity waits for the controller's verification."""
    return path.with_name(path.name + SUFFIX)


@dataclass(frozen=True)
class RenewalState:
    """What status shows about an identity's certificate."""

    expires_at: float
    renewed_at: float | None
    error: str | None
    expiring: bool


class Renewal:
    """Renewal bookkeeping and steps for one identity file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.renewed_at: float | None = None
        self.error: str | None = None

    def state(self, identity: Identity, now: float) -> RenewalState:
        """The certificate's expiry and the renewal history, for status and metrics."""
        cert = identity.certificate
        return RenewalState(validity(cert)[1], self.renewed_at, self.error,
                            expiring(cert, now) and self.error is not None)

    def pending(self) -> Identity | None:
        """A renewed identity left by an earlier run, or None (an unreadable one is dropped)."""
        path = pending_path(self.path)
        if not path.exists():
            return None
        try:
            return load_identity(path)
        except IdentityError:
            self.discard()
            return None

    def discard(self) -> None:
        """Forget a renewal that will not be verified."""
        with contextlib.suppress(FileNotFoundError):
            pending_path(self.path).unlink()

    def prepare(self, identity: Identity, cert_pem: str, key_pem: str) -> Identity:
        """Write the renewed identity as `<file>.renewing` (0600, atomic)."""
        renewed = Identity(identity.ztapi, cert_pem, key_pem, identity.ca_pem,
                           self.path, identity.ztapis)
        save_identity(renewed, pending_path(self.path))
        return renewed

    def promote(self, renewed: Identity) -> None:
        """The controller verified it: it becomes the identity file."""
        pending_path(self.path).replace(self.path)
        self.renewed_at = time.time()
        self.error = None

    @staticmethod
    def new_request(identity: Identity) -> tuple[str, str]:
        """(CSR PEM, key PEM) for a fresh key pair, CN = the identity's id."""
        key = keys.new_key()
        return keys.csr_pem(key, identity.name_hint).decode(), keys.private_pem(key)
