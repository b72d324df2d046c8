"""Test helpers: client keys and CSRs, and a foreign CA with its own client certificate."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tunneler.controller import pki


def make_csr(common_name: str = "ignored") -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A fresh EC P-256 key and a PEM CSR for it (what libziti generates)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM)


def write_client_files(directory: Path, name: str, cert_pem: bytes,
                       key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    """Write a client cert and key (0600) for ssl.SSLContext.load_cert_chain."""
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert_pem)
    pki.write_key(key_path, key)
    return cert_path, key_path


def foreign_client(directory: Path) -> tuple[Path, Path]:
    """A client certificate issued by a CA that is not the network's."""
    ca_cert, ca_key = pki.create_ca("foreign CA")
    key, csr_pem = make_csr()
    csr = x509.load_pem_x509_csr(csr_pem)
    cert = pki.issue_client_cert(csr, "intruder", "foreign", ca_cert, ca_key)
    return write_client_files(directory, "foreign", pki.cert_pem(cert), key)


def client_context(ca_pem: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ client context trusting only `ca_pem`, optionally presenting a client cert."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(ca_pem))
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def not_after(cert_pem: bytes) -> datetime.datetime:
    """Expiry of a PEM certificate."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
