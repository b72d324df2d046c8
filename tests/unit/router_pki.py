"""Test PKI for the router tests: a network CA, a server cert and client certs (EC P-256)."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Leaf:
    """An issued certificate with its key on disk."""

    cert_path: Path
    key_path: Path
    fingerprint: str  # lowercase hex SHA-1 of the DER, as the router computes it


class TestPki:
    """A throwaway CA that issues a router server cert and client certs into `directory`."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "test network CA") -> None:
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(name)
        self._cert = (_builder(subject, subject, self._key.public_key())
                      .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                      .sign(self._key, hashes.SHA256()))
        self.ca_path = directory / f"{name.replace(' ', '_')}.pem"
        self.ca_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, server: bool = False) -> Leaf:
        """A leaf certificate for `name` (server: SANs localhost/127.0.0.1)."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _builder(_name(name), self._cert.subject, key.public_key())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.DNSName("127.0.0.1"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_path, key_path = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        der = cert.public_bytes(serialization.Encoding.DER)
        return Leaf(cert_path, key_path, hashlib.sha1(der).hexdigest())

    def server_context(self, leaf: Leaf) -> ssl.SSLContext:
        """TLS 1.2+, CERT_REQUIRED against this CA only (what the router's caller builds)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(self.ca_path))
        context.load_cert_chain(leaf.cert_path, leaf.key_path)
        return context

    def client_context(self, leaf: Leaf | None) -> ssl.SSLContext:
        """A client trusting only this CA, presenting `leaf`."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(cafile=str(self.ca_path))
        if leaf is not None:
            context.load_cert_chain(leaf.cert_path, leaf.key_path)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name,
             public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))
