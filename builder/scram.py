"""SCRAM-SHA-256 verifiers (RFC 5802/7677) as PostgreSQL stores them, and their sealed form.

Pure: passwords in, text out. A verifier costs a PBKDF2 of 4096 rounds (about a millisecond,
deliberately slow); a fleet of hundreds of instances would spend most of its render on them.
So the secret store keeps each one next to its password, *sealed*: salt and keys with a tag,
an HMAC keyed by the password over the role, the round count, the salt and the keys.
:func:`unseal` gives the verifier back only when the tag matches the password and role at
hand, so a rotated password or a renamed role gets a freshly computed verifier, never a stale
one. The sealed form is 128 characters of ``A-Z a-z 0-9 _ -``, the form of every secret, so an
older owuibuild reads such a file too (and keeps the entry).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

ITERATIONS = 4096
_SALT_BYTES = 16
_KEY_BYTES = 32  # SHA-256
_TAG_BYTES = 16
SEALED_LENGTH = 4 * (_SALT_BYTES + 2 * _KEY_BYTES + _TAG_BYTES) // 3


def salt(password: str, role: str) -> bytes:
    """Derived from the role and the password instead of drawn at random, so a render stays
    byte-for-byte reproducible."""
    return hashlib.sha256(f"owuibuild-scram:{role}:{password}".encode()).digest()[:_SALT_BYTES]


def _keys(password: str, salt_bytes: bytes) -> tuple[bytes, bytes]:
    """StoredKey and ServerKey. Secrets are ASCII, for which SASLprep is the identity."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt_bytes, ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return stored_key, server_key


def _text(salt_bytes: bytes, stored_key: bytes, server_key: bytes) -> str:
    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return f"SCRAM-SHA-256${ITERATIONS}:{b64(salt_bytes)}${b64(stored_key)}:{b64(server_key)}"


def verifier(password: str, role: str) -> str:
    """The verifier PostgreSQL stores for ``role`` with ``password`` (computed: slow)."""
    s = salt(password, role)
    return _text(s, *_keys(password, s))


def _tag(password: str, role: str, body: bytes) -> bytes:
    message = b"owuibuild-scram-seal\0%s\0%d\0%s" % (role.encode(), ITERATIONS, body)
    return hmac.new(password.encode(), message, hashlib.sha256).digest()[:_TAG_BYTES]


def seal(password: str, role: str) -> str:
    """The verifier for ``password`` and ``role`` in the form the secret store keeps."""
    s = salt(password, role)
    body = s + b"".join(_keys(password, s))
    return base64.urlsafe_b64encode(body + _tag(password, role, body)).decode()


def unseal(sealed: str, password: str, role: str) -> str | None:
    """The verifier ``sealed`` holds, if it was sealed for exactly this password and role."""
    if len(sealed) != SEALED_LENGTH:
        return None
    try:
        raw = base64.urlsafe_b64decode(sealed.encode())
    except ValueError:
        return None
    body, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
    if not hmac.compare_digest(tag, _tag(password, role, body)):
        return None
    s, stored_key, server_key = (
        body[:_SALT_BYTES],
        body[_SALT_BYTES : _SALT_BYTES + _KEY_BYTES],
        body[_SALT_BYTES + _KEY_BYTES :],
    )
    if s != salt(password, role):  # a seal of another salt would make other bytes
        return None
    return _text(s, stored_key, server_key)
