"""Probes: the wire protocols `owuibuild status` speaks to a running fleet.

This room holds a small PostgreSQL v3 client (SSLRequest, StartupMessage, SCRAM-SHA-256 per
RFC 5802 and RFC 7677 with the server's signature verified, ErrorResponse, one simple query), a
RESP client for Redis (AUTH with an ACL user, PING), optionally over TLS, and an HTTP GET. Each
probe dials one address, spends at most one timeout in total, and answers with an `Outcome`:
unreachable, refused, timed out, rejected and an unverified certificate are states, never
exceptions.

It may touch sockets and the clock, nothing else: no files, no terminal, no secrets store (a
TLS context is made by the caller, from a CA it read; `tls_context` can read one CA file).
Every probe opens its connection with a `Dial`: `direct` from this machine by default, or one
the caller passes (`status --via ssh` passes one that opens it on a fleet host, see `jumphost`),
whose socket the protocol code, TLS included, uses as it would a connected TCP socket.
Passwords come in as arguments, leave only on the wire, and are scrubbed from every detail a
server sends back (an old Redis echoes the arguments of a command it does not know).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import http.client
import os
import socket
import ssl
import stringprep
import struct
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    OK = "ok"
    DOWN = "down"  # reachable or not, but not serving
    REFUSED = "refused"  # the connection (or, for PostgreSQL, pg_hba) turned us away
    AUTH_FAILED = "auth-failed"
    TIMEOUT = "timeout"
    DEGRADED = "degraded"  # serving, but not as the blueprint wants


@dataclass(frozen=True)
class Outcome:
    state: State
    detail: str = ""
    hint: str = ""  # what the state may mean and where to look, when the probe knows


class ProbeFailure(Exception):
    """Ends a probe early with a state; caught inside this module and turned into an Outcome."""

    def __init__(self, state: State, detail: str) -> None:
        super().__init__(detail)
        self.state = state
        self.detail = detail


class Deadline:
    """One timeout for a whole probe: every socket operation gets what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise ProbeFailure(State.TIMEOUT, "no answer within the timeout")
        return left


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every non-empty secret replaced, for details that servers wrote."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


# The detail of a connection the target's kernel turned away: nothing listens on that port.
REFUSED_DETAIL = "connection refused"


def _oserror_outcome(exc: OSError) -> Outcome:
    if isinstance(exc, ssl.SSLError):  # an OSError, but its strerror is OpenSSL's whole line
        return _tls_outcome(exc)
    if isinstance(exc, TimeoutError | socket.timeout):
        return Outcome(State.TIMEOUT, "no answer within the timeout")
    if isinstance(exc, ConnectionRefusedError):
        return Outcome(State.REFUSED, REFUSED_DETAIL)
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return Outcome(State.DOWN, "connection closed by the server")
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return Outcome(State.DOWN, "no route to host")
    return Outcome(State.DOWN, exc.strerror or type(exc).__name__)


def guarded(probe: Callable[[], Outcome], secrets: tuple[str, ...] = ()) -> Outcome:
    """Run ``probe``; network trouble becomes a state, and no detail carries a secret."""
    try:
        outcome = probe()
    except ProbeFailure as exc:
        outcome = Outcome(exc.state, exc.detail)
    except OSError as exc:
        outcome = _oserror_outcome(exc)
    return Outcome(outcome.state, scrub(outcome.detail, secrets), scrub(outcome.hint, secrets))


# Opens a stream to ``address:port`` within ``timeout`` seconds, or raises OSError.
Dial = Callable[[str, int, float], socket.socket]


def direct(address: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection from this machine."""
    sock = socket.create_connection((address, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _connect(address: str, port: int, deadline: Deadline, dial: Dial = direct) -> socket.socket:
    return dial(address, port, deadline.remaining())


# -- TLS --------------------------------------------------------------------------------------------


def tls_context(ca_pem: str | None = None, cafile: str | None = None) -> ssl.SSLContext:
    """A client context that trusts only the given CA (PEM text or a file), never the system
    store: the certificate must chain to it and name the host dialled, over TLS 1.2 or later.

    Raises ValueError without a CA, and ssl.SSLError or OSError for one that cannot be loaded.
    """
    if not ca_pem and not cafile:
        raise ValueError("a TLS context needs a CA to trust (ca_pem or cafile)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # loads no CA of its own
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=cafile, cadata=ca_pem or None)
    return context


def _tls_outcome(exc: ssl.SSLError, stage: str = "TLS") -> Outcome:
    """OpenSSL's reason, short: e.g. "TLS: certificate verify failed: IP address mismatch"."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = str(exc.verify_message or exc.reason or "unknown reason").rstrip(".")
        return Outcome(State.DOWN, f"TLS: certificate verify failed: {why}")
    reason = str(exc.reason or type(exc).__name__)
    return Outcome(State.DOWN, f"{stage}: {reason.lower().replace('_', ' ')}")


def start_tls(
    sock: socket.socket, tls: ssl.SSLContext, server_name: str, deadline: Deadline
) -> ssl.SSLSocket:
    """``sock`` after a TLS handshake that verified ``server_name`` (when ``tls`` checks names).

    On failure the socket is closed and ProbeFailure says why.
    """
    sock.settimeout(deadline.remaining())
    try:
        return tls.wrap_socket(sock, server_hostname=server_name)
    except ssl.SSLError as exc:
        sock.close()
        outcome = _tls_outcome(exc, "TLS handshake failed")
        raise ProbeFailure(outcome.state, outcome.detail) from None
    except ValueError as exc:  # e.g. an empty name to check
        sock.close()
        raise ProbeFailure(State.DOWN, f"TLS: {exc}") from None


def connect(
    address: str,
    port: int,
    deadline: Deadline,
    *,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
    dial: Dial = direct,
) -> socket.socket:
    """A connection to ``address:port`` opened by ``dial``, with TLS from the first byte when
    ``tls`` is given (the certificate must name ``server_name``, by default ``address``)."""
    sock = _connect(address, port, deadline, dial)
    if tls is None:
        return sock
    return start_tls(sock, tls, server_name or address, deadline)


def _recv_exact(sock: socket.socket, size: int, deadline: Deadline) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        sock.settimeout(deadline.remaining())
        chunk = sock.recv(min(left, 65536))
        if not chunk:
            raise ProbeFailure(State.DOWN, "the server closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _send(sock: socket.socket, data: bytes, deadline: Deadline) -> None:
    sock.settimeout(deadline.remaining())
    sock.sendall(data)


# -- SCRAM-SHA-256 (RFC 5802, RFC 7677) -------------------------------------------------------------


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep (stringprep profile) of a password or user name.

    Raises ValueError for a prohibited string; PostgreSQL then uses the raw password, and so
    do we (see `ScramClient`).
    """
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c)
    )
    normal = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21,
        stringprep.in_table_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    if any(check(c) for c in normal for check in prohibited):
        raise ValueError("prohibited character")
    if any(stringprep.in_table_d1(c) for c in normal):
        if any(stringprep.in_table_d2(c) for c in normal):
            raise ValueError("mixed bidirectional text")
        if not (stringprep.in_table_d1(normal[0]) and stringprep.in_table_d1(normal[-1])):
            raise ValueError("bidirectional text must start and end right-to-left")
    return normal


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


# A server can ask for any iteration count; refuse ones that would make a probe burn CPU.
SCRAM_MAX_ITERATIONS = 1_000_000


class ScramClient:
    """The client side of one SCRAM-SHA-256 exchange without channel binding ("n,,").

    PostgreSQL takes the user from the StartupMessage and ignores the SCRAM user name, so the
    PostgreSQL probe passes an empty one, as libpq does.
    """

    GS2_HEADER = "n,,"

    def __init__(self, username: str, password: str, client_nonce: str | None = None) -> None:
        # The nonce is per-exchange randomness, not a stored secret.
        self.client_nonce = client_nonce or base64.b64encode(os.urandom(18)).decode()
        name = username.replace("=", "=3D").replace(",", "=2C")
        self.client_first_bare = f"n={name},r={self.client_nonce}"
        try:
            prepared = saslprep(password)
        except ValueError:
            prepared = password
        self._password = prepared.encode()
        self._server_signature: bytes | None = None

    def client_first(self) -> str:
        return self.GS2_HEADER + self.client_first_bare

    def client_final(self, server_first: str) -> str:
        attrs = _scram_attributes(server_first)
        nonce, salt_b64, iterations_text = attrs.get("r"), attrs.get("s"), attrs.get("i")
        if "m" in attrs or not nonce or not salt_b64 or not iterations_text:
            raise ValueError("malformed server-first-message")
        if not nonce.startswith(self.client_nonce) or len(nonce) == len(self.client_nonce):
            raise ValueError("the server nonce does not extend ours")
        if not iterations_text.isdigit():
            raise ValueError("malformed iteration count")
        iterations = int(iterations_text)
        if not 1 <= iterations <= SCRAM_MAX_ITERATIONS:
            raise ValueError(f"unreasonable iteration count {iterations}")
        salt = base64.b64decode(salt_b64, validate=True)
        salted = hashlib.pbkdf2_hmac("sha256", self._password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        channel = base64.b64encode(self.GS2_HEADER.encode()).decode()
        without_proof = f"c={channel},r={nonce}"
        auth_message = f"{self.client_first_bare},{server_first},{without_proof}".encode()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}"

    def verify_server_final(self, server_final: str) -> None:
        """Raise ValueError unless the server proved that it knows the password, too."""
        attrs = _scram_attributes(server_final)
        if "e" in attrs:
            raise ValueError(f"the server reported {attrs['e']}")
        if self._server_signature is None or "v" not in attrs:
            raise ValueError("malformed server-final-message")
        try:
            claimed = base64.b64decode(attrs["v"], validate=True)
        except ValueError as exc:
            raise ValueError("malformed server signature") from exc
        if not hmac.compare_digest(claimed, self._server_signature):
            raise ValueError("the server's signature does not match")


def _scram_attributes(message: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in message.split(","):
        key, sep, value = part.partition("=")
        if sep and len(key) == 1:
            out.setdefault(key, value)
    return out


# -- PostgreSQL frontend/backend protocol 3.0 --------------------------------------------------------

PG_PROTOCOL_3_0 = 196608
PG_SSL_REQUEST = struct.pack("!II", 8, 80877103)
PG_MAX_MESSAGE = 1 << 20  # no message in a login and `SELECT 1` comes near this

# SQLSTATE -> state: wrong password, or no pg_hba line for this role, database and address.
PG_SQLSTATE_STATES = {
    "28P01": State.AUTH_FAILED,  # invalid_password
    "28000": State.REFUSED,  # invalid_authorization_specification: no pg_hba.conf entry
    "53300": State.DEGRADED,  # too_many_connections
}

AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = (
    0,
    3,
    5,
    10,
    11,
    12,
)


def pg_error_fields(payload: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse body: code letter -> text."""
    fields: dict[str, str] = {}
    for item in payload.split(b"\0"):
        if item:
            fields.setdefault(chr(item[0]), item[1:].decode("utf-8", "replace"))
    return fields


def pg_error_outcome(payload: bytes) -> Outcome:
    fields = pg_error_fields(payload)
    code = fields.get("C", "?????")
    state = PG_SQLSTATE_STATES.get(code, State.DOWN)
    return Outcome(state, f"SQLSTATE {code}: {fields.get('M', 'no message')}")


def _pg_message(tag: bytes, payload: bytes) -> bytes:
    return tag + struct.pack("!I", len(payload) + 4) + payload


def _pg_read(sock: socket.socket, deadline: Deadline) -> tuple[bytes, bytes]:
    header = _recv_exact(sock, 5, deadline)
    tag, length = header[:1], struct.unpack("!I", header[1:])[0]
    if not 4 <= length <= PG_MAX_MESSAGE:
        raise ProbeFailure(State.DOWN, "not a PostgreSQL server (bad message length)")
    return tag, _recv_exact(sock, length - 4, deadline)


def _pg_startup(user: str, database: str) -> bytes:
    params = b"".join(
        k.encode() + b"\0" + v.encode() + b"\0"
        for k, v in (
            ("user", user),
            ("database", database),
            ("application_name", "owuibuild-status"),
        )
    )
    body = struct.pack("!I", PG_PROTOCOL_3_0) + params + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def _pg_authenticate(
    sock: socket.socket, password: str, deadline: Deadline
) -> tuple[str | None, tuple[bytes, bytes]]:
    """Answer the server's authentication requests until it stops asking.

    Returns a note (for a login that needed no password) and the first message after
    authentication.
    """
    scram: ScramClient | None = None
    verified = False
    while True:
        tag, payload = _pg_read(sock, deadline)
        if tag == b"E":
            outcome = pg_error_outcome(payload)
            raise ProbeFailure(outcome.state, outcome.detail)
        if tag != b"R":
            if scram is None:
                raise ProbeFailure(State.DOWN, "not a PostgreSQL server")
            return None, (tag, payload)
        code = struct.unpack("!I", payload[:4])[0]
        if code == AUTH_OK:
            if scram is None:
                note = "logged in without a password: pg_hba should require scram-sha-256"
                return note, _pg_read(sock, deadline)
            if not verified:
                raise ProbeFailure(State.AUTH_FAILED, "SCRAM: the server did not prove itself")
            return None, _pg_read(sock, deadline)
        if code in (AUTH_CLEARTEXT, AUTH_MD5):
            # Never send the password in the clear or as an MD5 hash an eavesdropper can
            # replay: the fleet is configured for SCRAM only, so this is a misconfiguration.
            method = "a cleartext password" if code == AUTH_CLEARTEXT else "MD5"
            raise ProbeFailure(
                State.AUTH_FAILED,
                f"the server asked for {method}; not sent (pg_hba should say scram-sha-256)",
            )
        if code == AUTH_SASL:
            mechanisms = [m.decode() for m in payload[4:].split(b"\0") if m]
            if "SCRAM-SHA-256" not in mechanisms:
                raise ProbeFailure(
                    State.AUTH_FAILED, f"no SCRAM-SHA-256 among {', '.join(mechanisms)}"
                )
            scram = ScramClient("", password)
            first = scram.client_first().encode()
            body = b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first
            _send(sock, _pg_message(b"p", body), deadline)
        elif code == AUTH_SASL_CONTINUE and scram is not None:
            try:
                final = scram.client_final(payload[4:].decode())
            except ValueError as exc:
                raise ProbeFailure(State.AUTH_FAILED, f"SCRAM: {exc}") from None
            _send(sock, _pg_message(b"p", final.encode()), deadline)
        elif code == AUTH_SASL_FINAL and scram is not None:
            try:
                scram.verify_server_final(payload[4:].decode())
            except ValueError as exc:
                raise ProbeFailure(State.AUTH_FAILED, f"SCRAM: {exc}") from None
            verified = True
        else:
            raise ProbeFailure(State.AUTH_FAILED, f"unsupported authentication request {code}")


def _pg_until_ready(
    sock: socket.socket, first: tuple[bytes, bytes], deadline: Deadline
) -> list[tuple[bytes, bytes]]:
    """Messages up to ReadyForQuery; an ErrorResponse ends the probe."""
    seen: list[tuple[bytes, bytes]] = []
    tag, payload = first
    while True:
        if tag == b"E":
            outcome = pg_error_outcome(payload)
            raise ProbeFailure(outcome.state, outcome.detail)
        if tag == b"Z":
            return seen
        seen.append((tag, payload))
        tag, payload = _pg_read(sock, deadline)


def _pg_start_tls(
    sock: socket.socket, tls: ssl.SSLContext, server_name: str, deadline: Deadline
) -> ssl.SSLSocket:
    """SSLRequest, then the handshake when the server answers 'S'.

    Exactly one byte is read before the handshake: anything a server (or a man in the middle)
    sends after its 'S' must pass through TLS, or the handshake fails (CVE-2021-23222).
    """
    _send(sock, PG_SSL_REQUEST, deadline)
    answer = _recv_exact(sock, 1, deadline)
    if answer == b"N":
        raise ProbeFailure(State.DOWN, "the server refused TLS")
    if answer != b"S":
        raise ProbeFailure(State.DOWN, "not a PostgreSQL server (no answer to SSLRequest)")
    return start_tls(sock, tls, server_name, deadline)


def _pg_session(
    sock: socket.socket, user: str, database: str, password: str, deadline: Deadline
) -> Outcome:
    _send(sock, _pg_startup(user, database), deadline)
    note, first = _pg_authenticate(sock, password, deadline)
    _pg_until_ready(sock, first, deadline)
    _send(sock, _pg_message(b"Q", b"SELECT 1\0"), deadline)
    rows = [p for t, p in _pg_until_ready(sock, _pg_read(sock, deadline), deadline) if t == b"D"]
    # DataRow: int16 column count, then int32 length and the value of each column.
    if len(rows) != 1 or rows[0][:2] != b"\0\1" or rows[0][6:] != b"1":
        raise ProbeFailure(State.DEGRADED, "SELECT 1 did not return 1")
    _send(sock, _pg_message(b"X", b""), deadline)
    if note:
        return Outcome(State.DEGRADED, note)
    return Outcome(State.OK, f"{user}@{database}: SELECT 1")


def pg_login(
    address: str,
    port: int,
    user: str,
    database: str,
    password: str,
    timeout: float,
    *,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
    dial: Dial = direct,
) -> Outcome:
    """Log ``user`` in to ``database`` with SCRAM-SHA-256, run ``SELECT 1`` and say goodbye.

    With ``tls`` (the fleet's case: pg_hba has only hostssl lines, like the instances'
    ``sslmode=verify-full``) the probe first sends an SSLRequest and logs in only over TLS,
    with the server's certificate verified against ``tls``'s CA and ``server_name`` (default
    ``address``); a server that answers 'N' is down ("the server refused TLS"), and nothing,
    not even the user name, is then sent in the clear. Without ``tls`` it speaks plain text,
    which the fleet's pg_hba rejects.
    """

    def probe() -> Outcome:
        deadline = Deadline(timeout)
        with _connect(address, port, deadline, dial) as plain:
            if tls is None:
                return _pg_session(plain, user, database, password, deadline)
            with _pg_start_tls(plain, tls, server_name or address, deadline) as secure:
                return _pg_session(secure, user, database, password, deadline)

    return guarded(probe, (password,))


def served_certificate(
    address: str,
    port: int,
    timeout: float,
    *,
    tls: ssl.SSLContext,
    server_name: str | None = None,
    postgres: bool = False,
    dial: Dial = direct,
) -> bytes:
    """The certificate (DER) a TLS service serves, after verifying it as ``tls`` does:
    PostgreSQL's after its SSLRequest (``postgres``), any other's from the first byte.
    Raises ProbeFailure or OSError; callers run it under `guarded`."""
    deadline = Deadline(timeout)
    name = server_name or address
    if postgres:
        with (
            _connect(address, port, deadline, dial) as plain,
            _pg_start_tls(plain, tls, name, deadline) as secure,
        ):
            der = secure.getpeercert(binary_form=True)
    else:
        with connect(address, port, deadline, tls=tls, server_name=name, dial=dial) as secure:
            assert isinstance(secure, ssl.SSLSocket)
            der = secure.getpeercert(binary_form=True)
    if not der:
        raise ProbeFailure(State.DOWN, "TLS: the server sent no certificate")
    return der


# -- Redis RESP2 ------------------------------------------------------------------------------------


class RespError(Exception):
    """An error reply (``-ERR ...``); its text is the reply without the leading '-'."""


RespValue = str | int | bytes | None | list["RespValue"] | RespError
RESP_MAX_BULK = 1 << 20


def resp_encode(*args: str | bytes) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def resp_decode(buffer: bytes, start: int = 0) -> tuple[RespValue, int] | None:
    """One reply from ``buffer[start:]`` and the offset after it; None when incomplete.

    Raises ValueError for bytes that are not RESP.
    """
    end = buffer.find(b"\r\n", start)
    if end < 0:
        return None
    kind, line, after = buffer[start : start + 1], buffer[start + 1 : end], end + 2
    if kind == b"+":
        return line.decode("utf-8", "replace"), after
    if kind == b"-":
        return RespError(line.decode("utf-8", "replace")), after
    if kind == b":":
        return int(line), after
    if kind == b"$":
        size = int(line)
        if size == -1:
            return None, after
        if not 0 <= size <= RESP_MAX_BULK:
            raise ValueError(f"bulk string of {size} bytes")
        if len(buffer) < after + size + 2:
            return None
        if buffer[after + size : after + size + 2] != b"\r\n":
            raise ValueError("bulk string without CRLF")
        return buffer[after : after + size], after + size + 2
    if kind == b"*":
        count = int(line)
        if count == -1:
            return None, after
        items: list[RespValue] = []
        for _ in range(count):
            decoded = resp_decode(buffer, after)
            if decoded is None:
                return None
            item, after = decoded
            items.append(item)
        return items, after
    raise ValueError(f"not a RESP reply: {kind!r}")


def _resp_call(sock: socket.socket, deadline: Deadline, *args: str) -> RespValue:
    _send(sock, resp_encode(*args), deadline)
    buffer = b""
    while True:
        try:
            decoded = resp_decode(buffer)
        except ValueError:
            raise ProbeFailure(State.DOWN, "not a Redis server") from None
        if decoded is not None:
            return decoded[0]
        if len(buffer) > RESP_MAX_BULK:
            raise ProbeFailure(State.DOWN, "not a Redis server (reply too long)")
        sock.settimeout(deadline.remaining())
        chunk = sock.recv(65536)
        if not chunk:
            raise ProbeFailure(State.DOWN, "the server closed the connection")
        buffer += chunk


REDIS_AUTH_ERRORS = ("WRONGPASS", "NOAUTH", "NOPERM")


def redis_ping(
    address: str,
    port: int,
    user: str,
    password: str,
    timeout: float,
    *,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
    dial: Dial = direct,
) -> Outcome:
    """``AUTH user password`` and ``PING``; ok when the answer is PONG.

    With ``tls`` the connection is TLS from its first byte (the fleet's redis-servers have
    ``port 0`` and a ``tls-port``), verified against ``tls``'s CA and ``server_name`` (default
    ``address``) before AUTH sends the password.
    """

    def probe() -> Outcome:
        deadline = Deadline(timeout)
        with connect(address, port, deadline, tls=tls, server_name=server_name, dial=dial) as sock:
            for command in (("AUTH", user, password), ("PING",)):
                reply = _resp_call(sock, deadline, *command)
                if isinstance(reply, RespError):
                    text = str(reply)
                    state = (
                        State.AUTH_FAILED
                        if text.split(" ", 1)[0] in REDIS_AUTH_ERRORS
                        else State.DOWN
                    )
                    return Outcome(state, f"{command[0]}: {text}")
            if reply != "PONG":
                return Outcome(State.DEGRADED, "PING did not answer PONG")
        return Outcome(State.OK, f"user {user}: PONG")

    return guarded(probe, (password,))


# -- HTTP -------------------------------------------------------------------------------------------

HTTP_MAX_BODY = 4 << 20


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: bytes


class _DialledConnection(http.client.HTTPConnection):
    """HTTP, or HTTPS with ``tls``, over a connection that ``dial`` opens; the TLS name (SNI
    and the certificate's name) is ``server_name``, by default the address."""

    def __init__(
        self,
        address: str,
        port: int,
        timeout: float,
        dial: Dial,
        tls: ssl.SSLContext | None,
        server_name: str | None,
    ) -> None:
        super().__init__(address, port, timeout=timeout)
        self.default_port = 443 if tls is not None else 80  # the Host header omits it
        self._dial = dial
        self._timeout = timeout
        self._tls = tls
        self._server_name = server_name or address

    def connect(self) -> None:
        sock = self._dial(self.host, self.port, self._timeout)
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=self._server_name)
        self.sock = sock


def http_get(
    address: str,
    port: int,
    path: str,
    timeout: float,
    headers: dict[str, str] | None = None,
    *,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
    dial: Dial = direct,
) -> HttpAnswer:
    """GET ``http://address:port/path`` within one timeout, directly; ``https://`` with
    ``tls``, whose CA must have issued the certificate and which must name ``address``, or
    ``server_name`` when given: then it is the TLS server name and the Host header, as a
    browser that resolved that name to ``address`` would send them. ``dial`` opens the
    connection.

    http.client rather than urllib: urllib would honour *_proxy variables and could send
    the request, API key included, to a proxy instead of the host. Raises OSError or
    ProbeFailure; callers run it under `guarded`.
    """
    deadline = Deadline(timeout)
    conn = _DialledConnection(address, port, deadline.remaining(), dial, tls, server_name)
    if tls is not None and server_name is not None:
        headers = {"Host": server_name, **(headers or {})}
    try:
        conn.request("GET", path, headers={"Accept": "application/json", **(headers or {})})
        # getresponse() may hand the socket over to the response and drop conn.sock.
        sock = conn.sock
        if sock is not None:
            sock.settimeout(deadline.remaining())
        response = conn.getresponse()
        chunks: list[bytes] = []
        size = 0
        while True:
            if sock is not None:
                sock.settimeout(deadline.remaining())
            chunk = response.read1(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > HTTP_MAX_BODY:
                raise ProbeFailure(State.DEGRADED, "the answer is too large")
            chunks.append(chunk)
        return HttpAnswer(response.status, b"".join(chunks))
    except http.client.HTTPException as exc:
        raise ProbeFailure(State.DOWN, f"not an HTTP answer ({type(exc).__name__})") from None
    finally:
        conn.close()
