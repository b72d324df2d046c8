"""Identity files: load forms, mode checks, atomic 0600 save, TLS context."""

from __future__ import annotations

import base64
import datetime
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tunneler.errors import IdentityError
from tunneler.identity import Identity, load_identity, save_identity


def _self_signed(cn: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


@pytest.fixture(name="identity")
def _identity() -> Identity:
    cert, key = _self_signed("abc123")
    return Identity("https://ctrl.example:1280", cert, key, cert)


def test_save_is_0600_and_round_trips(tmp_path: Path, identity: Identity) -> None:
    path = tmp_path / "sub" / "id.json"
    save_identity(identity, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_identity(path)
    assert (loaded.ztapi, loaded.cert_pem, loaded.key_pem) == (
        identity.ztapi, identity.cert_pem, identity.key_pem)
    assert loaded.name_hint == "abc123"
    assert loaded.controller_address == ("ctrl.example", 1280)
    assert len(loaded.fingerprint) == 40
    assert not list(path.parent.glob(".id.json.*"))  # no temporary left behind


def test_world_readable_identity_refused(tmp_path: Path, identity: Identity) -> None:
    path = tmp_path / "id.json"
    save_identity(identity, path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_identity(path)


def test_file_and_pem_forms(tmp_path: Path, identity: Identity) -> None:
    (tmp_path / "key.pem").write_text(identity.key_pem)
    os.chmod(tmp_path / "key.pem", 0o600)
    path = tmp_path / "id.json"
    path.write_text(json.dumps({"ztAPI": identity.ztapi, "id": {
        "cert": "pem:" + identity.cert_pem, "key": "file://key.pem", "ca": identity.ca_pem}}))
    os.chmod(path, 0o644)  # no inline key: the JSON itself may be readable
    assert load_identity(path).key_pem == identity.key_pem


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not valid JSON"),
        ("{}", "lacks the 'id'"),
        ('{"ztAPI": "ftp://x", "id": {}}', "ztAPI"),
        ('{"ztAPI": "https://x:1", "id": {"cert": "x", "key": "y", "ca": "z"}}', "not PEM"),
        ('{"ztAPI": "https://x:1", "id": {"cert": 5}}', "missing or not a string"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "id.json"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match=message):
        load_identity(path)


def test_a_file_that_is_not_utf8_is_an_identity_error_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "id.json"          # found by tests/support/fuzz.py
    path.write_bytes(b'{"ztAPI": "https://x:1", "id": {"cert": "\xff\xfe"}}')
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="not UTF-8 text"):
        load_identity(path)


def test_missing_file_says_how_to_enroll(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="tunneler enroll"):
        load_identity(tmp_path / "nope.json")


def test_client_context_is_tls12_plus_and_checks_pairing(identity: Identity) -> None:
    context = identity.client_ssl_context()
    assert context.minimum_version.name == "TLSv1_2"
    assert context.check_hostname
    other_cert, _ = _self_signed("other")
    mismatched = Identity(identity.ztapi, other_cert, identity.key_pem, identity.ca_pem)
    with pytest.raises(IdentityError, match="pair"):
        mismatched.client_ssl_context()


def test_a_certificate_of_an_unknown_x509_version_is_an_identity_error(
        tmp_path: Path, identity: Identity) -> None:
    """Found by the fuzzer: cryptography raises InvalidVersion (not a ValueError) for it."""
    der = identity.certificate.public_bytes(serialization.Encoding.DER)
    assert der.count(b"\xa0\x03\x02\x01\x02") == 1       # [0] EXPLICIT INTEGER 2 (v3)
    mutant = der.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x0a")
    with pytest.raises(x509.InvalidVersion):
        x509.load_der_x509_certificate(mutant)
    pem = ("-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(mutant).decode()
           + "-----END CERTIFICATE-----\n")
    save_identity(Identity(identity.ztapi, pem, identity.key_pem, identity.ca_pem),
                  tmp_path / "id.json")
    with pytest.raises(IdentityError, match="not valid PEM"):
        load_identity(tmp_path / "id.json")
