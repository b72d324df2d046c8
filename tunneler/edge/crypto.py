"""End-to-end encryption between the two SDK ends of a circuit, as libziti does it.

libsodium `crypto_kx` derives a key pair per direction; each direction is one
`crypto_secretstream_xchacha20poly1305` stream whose 24-byte header is the first Data message
sent. One Data message carries exactly one chunk (plaintext + 17 bytes); FIN is never
encrypted. See openziti-protocol.md §3.8.

Key exchange runs on PyNaCl (once per connection); the streams run on `secretstream`, a
byte-exact reimplementation on OpenSSL, faster than PyNaCl's for bulk (64 KiB) chunks.

Dialer ("client"): key pair per Connect, peer key from StateConnected.
Hoster ("server"): key pair per Bind, peer key from each Dial.
"""

from __future__ import annotations

from dataclasses import dataclass

from nacl import bindings as sodium

from tunneler.edge import secretstream
from tunneler.errors import CryptoError

HEADER_BYTES = secretstream.HEADER_BYTES  # 24
OVERHEAD = secretstream.ABYTES  # 17
PUBLIC_KEY_BYTES = sodium.crypto_kx_PUBLIC_KEY_BYTES  # 32


@dataclass(frozen=True)
class KeyPair:
    """A `crypto_kx` key pair."""

    public: bytes
    secret: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh random key pair."""
        public, secret = sodium.crypto_kx_keypair()
        return cls(public, secret)


@dataclass(frozen=True)
class SessionKeys:
    """`rx` decrypts what the peer sends; `tx` encrypts what we send."""

    rx: bytes
    tx: bytes


def _check_peer_key(peer_public: bytes | None) -> bytes:
    if peer_public is None or len(peer_public) != PUBLIC_KEY_BYTES:
        raise CryptoError("peer public key missing or not 32 bytes")
    return peer_public


def client_keys(own: KeyPair, server_public: bytes | None) -> SessionKeys:
    """Dialer side session keys."""
    rx, tx = sodium.crypto_kx_client_session_keys(own.public, own.secret,
                                                  _check_peer_key(server_public))
    return SessionKeys(rx, tx)


def server_keys(own: KeyPair, client_public: bytes | None) -> SessionKeys:
    """Hosting side session keys."""
    rx, tx = sodium.crypto_kx_server_session_keys(own.public, own.secret,
                                                  _check_peer_key(client_public))
    return SessionKeys(rx, tx)


class Encryptor:
    """The sending half: `header` goes out first, then `encrypt()` per Data message."""

    def __init__(self, tx_key: bytes) -> None:
        self._stream = secretstream.PushStream(tx_key)
        self.header: bytes = self._stream.header

    def encrypt(self, plaintext: bytes | memoryview) -> bytes:
        """One chunk (tag MESSAGE, no additional data): len(plaintext) + 17 bytes."""
        return self._stream.push(plaintext)


class Decryptor:
    """The receiving half: the first Data body must be the peer's 24-byte header."""

    def __init__(self, rx_key: bytes) -> None:
        self._key = rx_key
        self._stream: secretstream.PullStream | None = None

    @property
    def ready(self) -> bool:
        """True once the peer's stream header has been received."""
        return self._stream is not None

    def feed(self, body: bytes) -> bytes | None:
        """Process one Data body: the header (returns None) or a chunk (returns plaintext).

        Like libziti, the chunk's tag is not acted on beyond what the stream itself does
        (REKEY rekeys); any failure raises CryptoError and leaves the stream unchanged.
        """
        if self._stream is None:
            if len(body) != HEADER_BYTES:
                raise CryptoError(f"expected {HEADER_BYTES}-byte stream header, got {len(body)}")
            self._stream = secretstream.PullStream(self._key, body)
            return None
        try:
            plaintext, _tag = self._stream.pull(body)
        except CryptoError as exc:
            raise CryptoError(f"end-to-end decryption failed: {exc}") from exc
        return plaintext
