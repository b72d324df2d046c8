"""The network's PKI: CA, RSA server certificates, client certificates from CSRs, fingerprints.

Server certificates are RSA 2048 (libziti 0.29.3 verifies the RS256 enrollment JWT with the
controller's leaf key) and carry dNSName SANs for the advertised hostname plus `localhost` and
`127.0.0.1` (mbedTLS 3.1 ignores iPAddress SANs; openziti-protocol.md §1.1).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tunneler.errors import ConfigError, EnrollmentError

CA_DAYS = 3650
SERVER_DAYS = 3650
CLIENT_DAYS = 365
_BACKDATE = datetime.timedelta(minutes=5)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Pki:
    """Paths of the PKI files inside a network directory (`DIR/pki/`)."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    def cert(self, name: str) -> Path:
        return self.root / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tunneler"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def new_rsa_key() -> rsa.RSAPrivateKey:
    """A fresh RSA-2048 key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def create_ca(common_name: str = "tunneler network CA") -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed EC P-256 CA certificate and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf_builder(subject: str, public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
                  ca_cert: x509.Certificate, lifetime: datetime.timedelta,
                  ) -> x509.CertificateBuilder:
    """Valid from a little before now (clock skew: 5 min, or a tenth of a short lifetime, so
    that a client renewing at 2/3 of the validity renews at 2/3 of the lifetime)."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - min(_BACKDATE, lifetime / 10))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
    )


def issue_server_cert(hostname: str, ca_cert: x509.Certificate, ca_key: PrivateKey,
                      ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """An RSA-2048 TLS server certificate with dNSName SANs hostname, localhost, 127.0.0.1."""
    key = new_rsa_key()
    dns_names = list(dict.fromkeys([hostname, "localhost", "127.0.0.1"]))
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    with contextlib.suppress(ValueError):
        sans.append(x509.IPAddress(ipaddress.ip_address(hostname)))
    cert = (
        _leaf_builder(hostname, key.public_key(), ca_cert, datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(sans))), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def issue_client_cert(csr: x509.CertificateSigningRequest, identity_id: str, trust_domain: str,
                      ca_cert: x509.Certificate, ca_key: PrivateKey, *,
                      lifetime: float = CLIENT_DAYS * 86400.0) -> x509.Certificate:
    """A clientAuth cert for `identity_id` (CN, SPIFFE URI SAN) valid `lifetime` seconds; the
    CSR subject is ignored (the caller refuses one that names somebody else)."""
    public_key = csr.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise EnrollmentError("CSR key must be RSA or EC")
    spiffe = f"spiffe://{trust_domain}/identity/{identity_id}"
    return (
        _leaf_builder(identity_id, public_key, ca_cert, datetime.timedelta(seconds=lifetime))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=False, crl_sign=False, content_commitment=False,
            key_encipherment=isinstance(public_key, rsa.RSAPublicKey), data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )


def fingerprint(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-1 of the certificate DER (OpenZiti's fingerprint format)."""
    return cert.fingerprint(hashes.SHA1()).hex()  # an identifier, not a security digest


def fingerprint_der(der: bytes) -> str:
    """`fingerprint` of a DER certificate (as returned by `SSLSocket.getpeercert(True)`)."""
    return fingerprint(x509.load_der_x509_certificate(der))


def pkcs7_certs_only(certs: list[x509.Certificate]) -> bytes:
    """DER PKCS#7 certs-only (degenerate SignedData) bundle, as EST `cacerts` returns."""
    return pkcs7.serialize_certificates(certs, serialization.Encoding.DER)


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def write_key(path: Path, key: PrivateKey) -> None:
    """Write a PKCS#8 PEM private key, created with mode 0600 (never readable by others)."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    """Write a PEM certificate."""
    path.write_bytes(cert_pem(cert))


def load_cert(path: Path) -> x509.Certificate:
    """Read a PEM certificate."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read certificate: {exc}") from exc


def load_key(path: Path) -> PrivateKey:
    """Read a PEM private key (RSA or EC)."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read private key: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: unsupported key type")
    return key


def create_pki(pki: Pki, hostname: str) -> None:
    """Create CA, controller and router certificates in `pki.root` (which must not exist)."""
    pki.root.mkdir(mode=0o700)
    ca_cert, ca_key = create_ca()
    write_key(pki.ca_key, ca_key)
    write_cert(pki.ca_cert, ca_cert)
    for name in ("ctrl", "router"):
        _write_server_cert(pki, name, hostname, ca_cert, ca_key)


def add_server_cert(pki: Pki, name: str, hostname: str) -> None:
    """Issue `name`.pem/.key (a TLS server certificate for `hostname`) from the network's CA."""
    _write_server_cert(pki, name, hostname, load_cert(pki.ca_cert), load_key(pki.ca_key))


def _write_server_cert(pki: Pki, name: str, hostname: str, ca_cert: x509.Certificate,
                       ca_key: PrivateKey) -> None:
    cert, key = issue_server_cert(hostname, ca_cert, ca_key)
    write_key(pki.key(name), key)
    write_cert(pki.cert(name), cert)


def server_ssl_context(pki: Pki, name: str, *, require_client_cert: bool) -> ssl.SSLContext:
    """TLS 1.2+ server context presenting `name`.pem; client certs verified against the CA only.

    Args:
        pki: the network's PKI paths.
        name: "ctrl", "router" (the first router) or "router-NAME" (`network add-router`).
        require_client_cert: CERT_REQUIRED (router) or CERT_OPTIONAL (controller: enrollment
            clients have no certificate yet).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(pki.cert(name), pki.key(name))
    context.load_verify_locations(cafile=str(pki.ca_cert))
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def new_instance_id() -> str:
    """A random stable id for `ziti-instance-id` / network.json."""
    return uuid.uuid4().hex
