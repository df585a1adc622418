"""OpenSSH public key lines: whether a line of an ``id_*.pub`` file is a key sshd can use.

Pure: a line in, a problem (or None) out. The schema checks the line's shape (a type, base64,
an optional comment of printable characters, as ``ssh-keygen -C "Jane Doe"`` writes); this
room checks what the shape cannot: that the base64 decodes to a key blob of the named type,
laid out as RFC 4253 / OpenSSH's PROTOCOL.u2f say, so a mistyped or truncated key is refused
here instead of being ignored by sshd on every host.
"""

from __future__ import annotations

import base64
import binascii

# The placeholder in the starter and example blueprints. It is not a key (its base64 is one
# character short); validation names it so that a fleet is not deployed with it unknowingly.
EXAMPLE_KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIOwuibuildExampleKeyReplaceWithYourOwn00000"

_CURVES = {"nistp256": 65, "nistp384": 97, "nistp521": 133}  # uncompressed point sizes


class _Blob:
    """RFC 4251 wire-format reader over a decoded key blob."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def string(self) -> bytes:
        if len(self.data) - self.at < 4:
            raise ValueError("it ends early")
        size = int.from_bytes(self.data[self.at : self.at + 4], "big")
        start, self.at = self.at + 4, self.at + 4 + size
        if self.at > len(self.data):
            raise ValueError("it ends early")
        return self.data[start : self.at]

    def done(self) -> None:
        if self.at != len(self.data):
            raise ValueError("it has bytes after the key")


def _check_body(key_type: str, blob: _Blob) -> None:
    """Raise ValueError unless the rest of ``blob`` is a key of ``key_type``."""
    if key_type in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"):
        if len(blob.string()) != 32:
            raise ValueError("its Ed25519 key is not 32 bytes")
    elif key_type == "ssh-rsa":
        exponent, modulus = blob.string(), blob.string()
        if not exponent or len(modulus) < 128:
            raise ValueError("its RSA key is missing or shorter than 1024 bits")
    else:  # ecdsa-sha2-<curve> and sk-ecdsa-sha2-nistp256@openssh.com
        curve = key_type.removeprefix("sk-").removeprefix("ecdsa-sha2-").split("@")[0]
        if blob.string().decode("ascii", "replace") != curve:
            raise ValueError(f"its curve is not {curve}")
        point = blob.string()
        if len(point) != _CURVES[curve] or point[:1] != b"\x04":
            raise ValueError(f"its {curve} point is malformed")
    if key_type.startswith("sk-"):
        blob.string()  # the FIDO application, e.g. "ssh:"
    blob.done()


def problem(line: str) -> str | None:
    """Why sshd could not use this public key line, or None. Expects the schema's shape."""
    fields = line.split(" ", 2)
    if len(fields) < 2:
        return "has no base64 key after the key type"
    key_type, encoded = fields[0], fields[1]
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return "has a key that is not valid base64 (is it cut short?)"
    blob = _Blob(raw)
    try:
        named = blob.string().decode("ascii", "replace")
        if named != key_type:
            return f"says {key_type} but its key is of type {named or 'none'}"
        _check_body(key_type, blob)
    except ValueError as exc:
        return f"is not a valid {key_type} key: {exc}"
    return None
