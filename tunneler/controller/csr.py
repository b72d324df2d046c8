"""Certificate signing requests as libziti sends them, made acceptable to `cryptography`.

mbedTLS (libziti 0.29.3) writes the CSR's outer `signatureAlgorithm` for ECDSA as
`SEQUENCE { ecdsa-with-SHA256, NULL }`; RFC 5758 §3.2 says the parameters MUST be absent and
`cryptography` rejects the NULL. That outer field is not covered by the signature, so it is
rewritten without parameters before parsing (the signed `certificationRequestInfo` is kept
byte for byte and the self-signature is still verified).
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tunneler.errors import EnrollmentError

MAX_CSR_BYTES = 65536
_PEM = re.compile(rb"-----BEGIN (?:NEW )?CERTIFICATE REQUEST-----(.+?)-----END (?:NEW )?"
                  rb"CERTIFICATE REQUEST-----", re.DOTALL)
_SEQUENCE = 0x30
_ECDSA_OID_PREFIX = bytes.fromhex("06082a8648ce3d0403")  # ecdsa-with-SHA256/384/512
_NULL = b"\x05\x00"


def _read_tlv(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at `offset`."""
    if offset + 2 > len(data):
        raise EnrollmentError("CSR is truncated")
    tag, first = data[offset], data[offset + 1]
    start = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or start + count > len(data):
            raise EnrollmentError("CSR has an invalid DER length")
        length = int.from_bytes(data[start:start + count], "big")
        start += count
    if start + length > len(data):
        raise EnrollmentError("CSR is truncated")
    return tag, start, start + length


def _encode_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def strip_ecdsa_null_params(der: bytes) -> bytes:
    """Rewrite `SEQUENCE{ecdsa-with-SHAx, NULL}` in the outer CSR as `SEQUENCE{ecdsa-with-SHAx}`."""
    tag, start, end = _read_tlv(der, 0)
    if tag != _SEQUENCE or end != len(der):
        raise EnrollmentError("CSR is not a DER SEQUENCE")
    _, _, info_end = _read_tlv(der, start)
    alg_tag, alg_start, alg_end = _read_tlv(der, info_end)
    algorithm = der[alg_start:alg_end]
    if alg_tag != _SEQUENCE or not algorithm.startswith(_ECDSA_OID_PREFIX) or \
            not algorithm.endswith(_NULL) or len(algorithm) != 12:
        return der
    fixed_algorithm = bytes([_SEQUENCE, 10]) + algorithm[:10]
    body = der[start:info_end] + fixed_algorithm + der[alg_end:end]
    return bytes([_SEQUENCE]) + _encode_length(len(body)) + body


def load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    """Parse and check a PEM CSR (size, syntax, self-signature, key type).

    Raises:
        EnrollmentError: the CSR is unusable.
    """
    if len(pem) > MAX_CSR_BYTES:
        raise EnrollmentError("CSR too large")
    match = _PEM.search(pem)
    if match is None:
        raise EnrollmentError("body is not a PEM certificate request")
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
        csr = x509.load_der_x509_csr(strip_ecdsa_null_params(der))
        key = csr.public_key()
        valid = csr.is_signature_valid
    except (binascii.Error, ValueError) as exc:
        raise EnrollmentError(f"CSR cannot be parsed: {exc}") from exc
    if not valid:
        raise EnrollmentError("CSR signature does not verify")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return csr
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size >= 256:
        return csr
    raise EnrollmentError("CSR key must be RSA >= 2048 or EC >= P-256")
