"""CSR loading, including the exact CSR libziti 0.29.3 (mbedTLS) sent during enrollment."""

from __future__ import annotations

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tunneler.controller.csr import load_csr, strip_ecdsa_null_params
from tunneler.errors import EnrollmentError

# Captured from openziti==0.6.0 enrolling against this controller: its outer signatureAlgorithm
# is SEQUENCE { ecdsa-with-SHA256, NULL }, which cryptography alone rejects.
LIBZITI_CSR = b"""-----BEGIN CERTIFICATE REQUEST-----
MIIBXzCCAQMCAQAwcTELMAkGA1UEBhMCVVMxCzAJBgNVBAgMAk5ZMREwDwYDVQQK
DAhPcGVuWml0aTEnMCUGCgmSJomT8ixkARkWF2h0dHBzOi8vbG9jYWxob3N0OjE4
NDQzMRkwFwYDVQQDDBAwNmJlODFlYTRiOGIxYjg2MFkwEwYHKoZIzj0CAQYIKoZI
zj0DAQcDQgAEgN0lrke8k20rRpFIGmi+dQXslNCiRgd9xqMxH0qboqUoC2Cet++9
R3v5eMQeM+SnNIPDuQDjvPkEGEsN0Fn+yKAwMC4GCSqGSIb3DQEJDjEhMB8wCgYD
VR0PBAMDAQAwEQYJYIZIAYb4QgEBBAQDAgeAMAwGCCqGSM49BAMCBQADSAAwRQIg
QpZjhxTZjXVLAPtLY9L6Ra9IqcFJdzBzfAlttXldwP0CIQDQudx6ywJ5qXQCP4yu
zNtgRdXU2FTejtOzllG4Ryuzdg==
-----END CERTIFICATE REQUEST-----
"""


def make_csr(name: str = "x") -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM)


def test_libziti_csr_is_accepted() -> None:
    csr = load_csr(LIBZITI_CSR)
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)
    assert csr.is_signature_valid


def test_standard_csr_is_accepted() -> None:
    _, pem = make_csr()
    assert load_csr(pem).is_signature_valid


def test_tampered_csr_is_refused() -> None:
    _, pem = make_csr("a")
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the ECDSA signature's s
    tampered = (b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der))
                + b"-----END CERTIFICATE REQUEST-----\n")
    with pytest.raises(EnrollmentError, match="signature does not verify"):
        load_csr(tampered)


def test_ecdsa_null_params_are_stripped_only_where_needed() -> None:
    _, pem = make_csr()
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    assert strip_ecdsa_null_params(der) == der


@pytest.mark.parametrize("data", [b"", b"hello", b"-----BEGIN CERTIFICATE REQUEST-----\n!!\n"
                                  b"-----END CERTIFICATE REQUEST-----", b"x" * 70000,
                                  b"-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n"
                                  b"-----END CERTIFICATE REQUEST-----"])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(EnrollmentError):
        load_csr(data)
