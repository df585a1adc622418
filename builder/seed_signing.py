"""The fleet's seed-signing key: Ed25519, made from one secret of the secret store.

Only the fleet may change a host: each host keeps the fleet's public key from its first boot
and takes a later seed only with a valid signature over its seed manifest. The private key is
SHA-256 of a label and the store's ``fleet.seed_signing_key`` secret (generated, like every
secret, at the first render: 256 random bits), so any value of the store's form is a key and
the key itself is never written anywhere. Ed25519 signatures are deterministic (RFC 8032),
so the same manifest always gets the same signature and renders stay byte-identical.

Pure apart from that: no I/O, no clock. ``cryptography`` is imported only when a key is made,
so the command line starts fast.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# Which key the secret makes: changing it would make every host refuse every later seed.
LABEL = b"owuibuild seed-signing key v1\x00"


@dataclass(frozen=True)
class SigningKey:
    """The fleet's key, made from its secret: sign() and the public key in PEM."""

    private: Any  # cryptography's Ed25519PrivateKey, kept untyped so mypy need not import it

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data`` (what `openssl pkeyutl -verify -rawin
        -sigfile` reads)."""
        signature: bytes = self.private.sign(data)
        return signature

    @property
    def public_pem(self) -> str:
        """The public key as a PEM SubjectPublicKeyInfo, as `openssl pkeyutl -pubin` reads it."""
        from cryptography.hazmat.primitives import serialization

        pem: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem.decode("ascii")

    @property
    def private_pem(self) -> str:
        """The private key in PEM: only for the verify room to prove it is written nowhere."""
        from cryptography.hazmat.primitives import serialization

        pem: bytes = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return pem.decode("ascii")


@lru_cache(maxsize=8)
def signing_key(secret: str) -> SigningKey:
    """The key that ``secret`` (the store's fleet.seed_signing_key) makes; always the same."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    seed = hashlib.sha256(LABEL + secret.encode("utf-8")).digest()
    return SigningKey(Ed25519PrivateKey.from_private_bytes(seed))


@lru_cache(maxsize=8)
def public_pem(secret: str) -> str:
    return signing_key(secret).public_pem
