"""`tunneler enroll`: one-time-token (ott) enrollment, the client side.

1. Decode the JWT (`em`, `iss`, `sub`, `jti`); refuse anything but `ott` and an expired token.
2. Open TLS to `iss` without trusting anything yet; the JWT must verify (RS256) with the public
   key of the controller's leaf certificate - that, and nothing else, authenticates it.
3. Fetch the CA bundle (`/.well-known/est/cacerts`, base64 PKCS#7) pinned to that same leaf.
4. Make an EC P-256 key and CSR locally (the key never leaves this machine); `POST /enroll`
   over TLS verified against the new bundle; write the identity file with mode 0600.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from tunneler import jwt, keys
from tunneler.errors import EnrollmentError
from tunneler.identity import Identity, save_identity
from tunneler.log import get_logger

log = get_logger("enroll")
TIMEOUT = 15.0
MAX_JWT_FILE = 64 * 1024


def read_token(path: Path) -> tuple[str, dict[str, Any]]:
    """Read a JWT file and return (token, claims); checks method and expiry, not the signature."""
    try:
        token = path.read_text()[:MAX_JWT_FILE].strip()
    except OSError as exc:
        raise EnrollmentError(f"cannot read enrollment token {path}: {exc}") from exc
    _header, claims = jwt.decode_unverified(token)
    if claims.get("em") != "ott":
        raise EnrollmentError(f"enrollment method {claims.get('em')!r} is not supported; "
                              "only one-time tokens (ott) are")
    for name in ("iss", "sub", "jti"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise EnrollmentError(f"enrollment token lacks the {name!r} claim")
    exp = jwt.numeric_claim(claims, "exp")
    if exp is not None and jwt.expired(exp, time.time()):
        raise EnrollmentError("enrollment token has expired; ask for a new one")
    return token, claims


async def _leaf_certificate(host: str, port: int) -> x509.Certificate:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # trust comes from the JWT signature, checked next
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=host), TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise EnrollmentError(f"cannot reach controller {host}:{port}: {exc}") from exc
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    writer.close()
    if not der:
        raise EnrollmentError("controller presented no certificate")
    try:
        return x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion) as exc:
        raise EnrollmentError(f"controller certificate is unreadable: {exc}") from None


def _check_leaf(leaf: x509.Certificate, token: str, host: str) -> None:
    key = leaf.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise EnrollmentError("controller certificate key is not RSA; cannot verify the token")
    jwt.verify(token, key, now=time.time())
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = None
    dns_names = names.get_values_for_type(x509.DNSName) if names else []
    if host.lower() not in (name.lower() for name in dns_names):
        raise EnrollmentError(f"controller certificate is not valid for {host}")


def _ca_bundle(body: bytes) -> list[x509.Certificate]:
    try:
        certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
    except ValueError as exc:
        raise EnrollmentError(f"controller sent an unreadable CA bundle: {exc}") from exc
    if not certs:
        raise EnrollmentError("controller sent an empty CA bundle")
    return certs


async def _post_csr(url: str, jti: str, csr: bytes, ca_pem: str) -> str:
    context = ssl.create_default_context(cadata=ca_pem)  # cadata given: no system CAs loaded
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    headers = {"Content-Type": "text/plain", "Accept": "application/json"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.post(f"{url}/enroll", params={"method": "ott", "token": jti}, data=csr,
                  headers=headers, ssl=context) as response,
    ):
        text = await response.text()
        ctype = response.headers.get("Content-Type", "")
    if ctype.lower().startswith("application/x-pem-file"):
        return text
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise EnrollmentError(f"controller answered enrollment with non-JSON: {exc}") from exc
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        raise EnrollmentError(f"enrollment refused: {error.get('code')}: {error.get('message')}")
    cert = (payload.get("data") or {}).get("cert") if isinstance(payload, dict) else None
    if not isinstance(cert, str):
        raise EnrollmentError("controller answered enrollment without a certificate")
    return cert


async def enroll(token_path: Path) -> Identity:
    """Run the whole enrollment and return the new identity (not yet saved)."""
    token, claims = read_token(token_path)
    url = claims["iss"].rstrip("/")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise EnrollmentError(f"enrollment token issuer {url!r} is not an https URL")
    host, port = parts.hostname, parts.port or 443
    leaf = await _leaf_certificate(host, port)
    _check_leaf(leaf, token, host)
    leaf_der = leaf.public_bytes(serialization.Encoding.DER)
    pin = aiohttp.Fingerprint(hashlib.sha256(leaf_der).digest())
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.get(f"{url}/.well-known/est/cacerts", ssl=pin,
                 headers={"Accept": "application/pkcs7-mime"}) as response,
    ):
        if response.status >= 300:
            raise EnrollmentError(f"controller refused the CA bundle: HTTP {response.status}")
        bundle = _ca_bundle(await response.read())
    ca_pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in bundle)
    key = keys.new_key()
    cert_pem = await _post_csr(url, claims["jti"], keys.csr_pem(key, claims["sub"]), ca_pem)
    return Identity(url, cert_pem, keys.private_pem(key), ca_pem)


def cmd_enroll(args: argparse.Namespace) -> int:
    """CLI handler for `tunneler enroll --jwt FILE --identity OUT.json`."""
    out = Path(args.identity)
    if out.exists():
        raise EnrollmentError(f"{out} already exists; choose another --identity path")
    try:
        identity = asyncio.run(enroll(Path(args.jwt)))
    except aiohttp.ClientError as exc:
        raise EnrollmentError(f"enrollment failed talking to the controller: {exc}") from exc
    save_identity(identity, out)
    log.info("enroll.completed", identity_file=str(out), controller=identity.ztapi)
    print(f"enrolled: identity written to {out}")
    return 0
