"""When certificates are renewed and when status warns, and the renewal files (issue 14)."""

from __future__ import annotations

import dataclasses
import datetime
import stat
from pathlib import Path

from ops_support import SampleView

from tests.support.pki import make_csr
from tunneler import keys
from tunneler.client.renewal import Renewal, expiring, pending_path, renewal_due, validity
from tunneler.controller import pki
from tunneler.identity import Identity, load_identity, save_identity
from tunneler.ops.render import render_status
from tunneler.ops.snapshot import IdentityStatus, problems

CA_CERT, CA_KEY = pki.create_ca("test")


def _cert(lifetime: float) -> str:
    _key, csr_pem = make_csr("id-1")
    from tunneler.controller.csr import load_csr
    cert = pki.issue_client_cert(load_csr(csr_pem), "id-1", "trust", CA_CERT, CA_KEY,
                                 lifetime=lifetime)
    return pki.cert_pem(cert).decode()


def test_renewal_is_due_at_two_thirds_and_back_dating_stays_small() -> None:
    for lifetime in (90.0, 365 * 86400.0):
        cert = Identity("https://c", _cert(lifetime), "", "").certificate
        start, end = validity(cert)
        assert end - start <= lifetime * 1.1 + 1
        assert renewal_due(cert) == start + (end - start) * 2 / 3


def test_expiring_means_seven_days_or_a_tenth_of_a_short_lifetime() -> None:
    year = Identity("https://c", _cert(365 * 86400.0), "", "").certificate
    _, end = validity(year)
    assert not expiring(year, end - 8 * 86400)
    assert expiring(year, end - 6 * 86400)
    short = Identity("https://c", _cert(90.0), "", "").certificate
    start, end = validity(short)
    assert not expiring(short, end - 0.2 * (end - start))
    assert expiring(short, end - 0.05 * (end - start))


def test_prepare_promote_and_discard_keep_files_private(tmp_path: Path) -> None:
    identity = Identity("https://c", _cert(600.0), keys.private_pem(keys.new_key()),
                        pki.cert_pem(CA_CERT).decode())
    path = tmp_path / "laptop.json"
    save_identity(identity, path)
    renewal = Renewal(path)
    assert renewal.pending() is None
    new_csr, new_key = renewal.new_request(load_identity(path))
    assert "CERTIFICATE REQUEST" in new_csr and "PRIVATE KEY" in new_key
    renewed = renewal.prepare(load_identity(path), _cert(600.0), new_key)
    assert stat.S_IMODE(pending_path(path).stat().st_mode) == 0o600
    assert renewal.pending() is not None
    renewal.promote(renewed)
    assert not pending_path(path).exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(path).key_pem == new_key and renewal.renewed_at is not None
    pending_path(path).write_text("not an identity")
    assert renewal.pending() is None and not pending_path(path).exists()


def test_status_shows_expiry_and_renewal_and_is_unhealthy_when_renewal_keeps_failing() -> None:
    status = SampleView().status()
    ok = IdentityStatus("laptop", True, True, None, 2, cert_expires_at="2030-01-01T00:00:00+00:00",
                        cert_renewed_at="2029-09-01T00:00:00+00:00")
    healthy = dataclasses.replace(status, identities=(ok,))
    assert problems(healthy) == []
    text = render_status(healthy)
    assert "certificate until 2030-01-01T00:00:00+00:00, renewed 2029-09-01" in text
    failing = dataclasses.replace(ok, cert_renewal_error="CONTROLLER_UNAVAILABLE: down",
                                  cert_expiring=True)
    sick = dataclasses.replace(status, identities=(failing,))
    assert problems(sick) == ["identity laptop certificate expires 2030-01-01T00:00:00+00:00 "
                              "and renewal keeps failing: CONTROLLER_UNAVAILABLE: down"]
    assert "RENEWAL FAILING (CONTROLLER_UNAVAILABLE: down)" in render_status(sick)
    assert datetime.datetime.fromisoformat(ok.cert_expires_at or "").year == 2030
