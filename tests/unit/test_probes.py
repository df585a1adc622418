"""Unit tests of the probes' wire protocols: SCRAM-SHA-256, SASLprep, RESP, TLS (PostgreSQL's
SSLRequest, Redis's TLS port) and the PostgreSQL client's handling of what a server may answer.

Scripted servers here are test doubles on 127.0.0.1 that play one conversation each, in plain
text or over TLS with a throwaway CA made here; the real PostgreSQL and Redis are in
tests/services/test_status_servers.py.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from owuibuild.probes import (
    PG_SSL_REQUEST,
    Outcome,
    RespError,
    ScramClient,
    State,
    pg_error_outcome,
    pg_login,
    redis_ping,
    resp_decode,
    resp_encode,
    saslprep,
    tls_context,
)

pytestmark = pytest.mark.unit

# RFC 7677, section 3: the SCRAM-SHA-256 exchange for user "user" and password "pencil".
RFC7677_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC7677_CLIENT_FIRST = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC7677_SERVER_FIRST = (
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC7677_CLIENT_FINAL = (
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC7677_SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def rfc7677_client() -> ScramClient:
    return ScramClient("user", "pencil", client_nonce=RFC7677_CLIENT_NONCE)


def test_scram_matches_the_rfc_7677_exchange() -> None:
    client = rfc7677_client()
    assert client.client_first() == RFC7677_CLIENT_FIRST
    assert client.client_final(RFC7677_SERVER_FIRST) == RFC7677_CLIENT_FINAL
    client.verify_server_final(RFC7677_SERVER_FINAL)  # does not raise


@pytest.mark.parametrize(
    ("server_final", "message"),
    [
        ("v=" + "A" * 43 + "=", "signature does not match"),
        ("e=invalid-proof", "reported invalid-proof"),
        ("x=1", "malformed"),
    ],
)
def test_scram_rejects_a_server_that_does_not_prove_itself(server_final: str, message: str) -> None:
    client = rfc7677_client()
    client.client_final(RFC7677_SERVER_FIRST)
    with pytest.raises(ValueError, match=message):
        client.verify_server_final(server_final)


@pytest.mark.parametrize(
    ("server_first", "message"),
    [
        ("r=someoneElsesNonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "does not extend"),
        (f"r={RFC7677_CLIENT_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "does not extend"),
        (f"r={RFC7677_CLIENT_NONCE}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=999999999", "iteration"),
        (f"r={RFC7677_CLIENT_NONCE}x,s=W22ZaJ0SNY7soEsUEjb6gQ==", "malformed"),
        (f"m=ext,r={RFC7677_CLIENT_NONCE}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "malformed"),
    ],
)
def test_scram_rejects_a_bad_server_first_message(server_first: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rfc7677_client().client_final(server_first)


def test_scram_escapes_the_user_name() -> None:
    assert ScramClient("a=b,c", "pw", client_nonce="n").client_first() == "n,,n=a=3Db=2Cc,r=n"


@pytest.mark.parametrize(
    ("text", "prepared"),
    # RFC 4013, section 3 (examples), the ones that prepare successfully.
    [("I\u00adX", "IX"), ("user", "user"), ("USER", "USER"), ("\u00aa", "a"), ("\u2168", "IX")],
)
def test_saslprep_rfc_4013_examples(text: str, prepared: str) -> None:
    assert saslprep(text) == prepared


@pytest.mark.parametrize("text", ["\u0007", "\u0627\u0031"])  # RFC 4013: prohibited, bidi
def test_saslprep_rfc_4013_errors(text: str) -> None:
    with pytest.raises(ValueError):
        saslprep(text)


# -- RESP -------------------------------------------------------------------------------------------


def test_resp_encodes_a_command_as_an_array_of_bulk_strings() -> None:
    assert resp_encode("AUTH", "webui1", b"pw") == (
        b"*3\r\n$4\r\nAUTH\r\n$6\r\nwebui1\r\n$2\r\npw\r\n"
    )


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"+PONG\r\n", "PONG"),
        (b":42\r\n", 42),
        (b"$5\r\nhel\r\n\r\n", b"hel\r\n"),
        (b"$0\r\n\r\n", b""),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"*2\r\n+OK\r\n*1\r\n:1\r\n", ["OK", [1]]),
    ],
)
def test_resp_decodes_replies(data: bytes, value: object) -> None:
    assert resp_decode(data) == (value, len(data))


def test_resp_decodes_errors_as_values() -> None:
    decoded = resp_decode(b"-WRONGPASS invalid username-password pair\r\n")
    assert decoded is not None
    assert isinstance(decoded[0], RespError)
    assert str(decoded[0]) == "WRONGPASS invalid username-password pair"


@pytest.mark.parametrize("data", [b"", b"+PON", b"$5\r\nhel", b"*2\r\n+OK\r\n", b":1"])
def test_resp_waits_for_the_rest_of_an_incomplete_reply(data: bytes) -> None:
    assert resp_decode(data) is None


@pytest.mark.parametrize("data", [b"HTTP/1.1 400\r\n", b"$3\r\nabcXY", b"$99999999999\r\n"])
def test_resp_rejects_what_is_not_resp(data: bytes) -> None:
    with pytest.raises(ValueError):
        resp_decode(data)


@given(st.lists(st.binary(max_size=64), min_size=1, max_size=8))
def test_resp_round_trips_any_command(args: list[bytes]) -> None:
    data = resp_encode(*args)
    assert resp_decode(data) == (args, len(data))
    assert resp_decode(data[:-1]) is None


# -- a throwaway CA ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThrowawayPKI:
    """A CA and one server certificate it issued (ECDSA P-256, as the fleet's), PEM text."""

    ca_cert: str
    cert: str
    key: str

    def write(self, directory: Path) -> tuple[Path, Path, Path]:
        """The CA certificate, the server certificate and its key as files in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = (directory / "ca.crt", directory / "server.crt", directory / "server.key")
        for path, text in zip(paths, (self.ca_cert, self.cert, self.key), strict=True):
            path.write_text(text)
        paths[2].chmod(0o600)
        return paths

    def server_context(self, directory: Path) -> ssl.SSLContext:
        _, cert, key = self.write(directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        return context


@cache
def make_pki(
    names: tuple[str, ...] = ("127.0.0.1", "localhost"), ca: str = "test CA"
) -> ThrowawayPKI:
    """A new CA named ``ca`` and a server certificate for ``names`` (IP addresses or DNS
    names) from it, valid from yesterday for a week."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=7)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return ThrowawayPKI(
        ca_cert.public_bytes(pem).decode(),
        cert.public_bytes(pem).decode(),
        key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    )


# -- scripted servers -------------------------------------------------------------------------------


def serve_one(
    conn: socket.socket,
    script: Callable[[socket.socket], None],
    received: list[bytes],
    *,
    tls: ssl.SSLContext | None = None,
    ssl_request: bytes | None = None,
) -> None:
    """One accepted connection of a scripted server (see `scripted_server`); closes it."""
    with conn:
        conn.settimeout(5)
        if ssl_request is not None:
            assert recv_exact(conn, 8) == PG_SSL_REQUEST
            conn.sendall(ssl_request)
        if tls is not None and ssl_request in (None, b"S"):
            try:
                conn = tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                received.append(b"handshake failed")
                return
        with conn:
            if ssl_request in (None, b"S"):
                script(conn)
            conn.settimeout(0.2)
            try:
                while chunk := conn.recv(65536):
                    received.append(chunk)
            except OSError:
                pass


@contextmanager
def scripted_server(
    script: Callable[[socket.socket], None],
    *,
    tls: ssl.SSLContext | None = None,
    ssl_request: bytes | None = None,
) -> Iterator[tuple[int, list[bytes]]]:
    """A test double on 127.0.0.1 that runs ``script`` for one connection; yields its port and
    what it received after the script (appended by ``recv_all``).

    With ``ssl_request`` (PostgreSQL) it first expects an SSLRequest and answers with those
    bytes (b"S", b"N", ...); with ``tls`` it then, or at once, does the server's side of a TLS
    handshake and runs ``script`` over TLS. A failed handshake ends the connection, and is
    appended to ``received`` as b"handshake failed".
    """
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        serve_one(conn, script, received, tls=tls, ssl_request=ssl_request)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received
    finally:
        thread.join(5)
        listener.close()


def recv_exact(conn: socket.socket, size: int) -> bytes:
    """``size`` bytes (MSG_WAITALL is not allowed on a TLS socket)."""
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client closed the connection")
        data += chunk
    return data


def pg_msg(tag: bytes, payload: bytes) -> bytes:
    return tag + struct.pack("!I", len(payload) + 4) + payload


def read_startup(conn: socket.socket) -> bytes:
    size = struct.unpack("!I", recv_exact(conn, 4))[0]
    return recv_exact(conn, size - 4)


def read_pg(conn: socket.socket) -> tuple[bytes, bytes]:
    head = recv_exact(conn, 5)
    size = struct.unpack("!I", head[1:])[0]
    return head[:1], recv_exact(conn, size - 4)


READY = pg_msg(b"Z", b"I")
SELECT_1 = (
    pg_msg(b"T", b"\0\1?column?\0" + b"\0" * 18)
    + pg_msg(b"D", b"\0\1\0\0\0\0011")
    + pg_msg(b"C", b"SELECT 1\0")
    + READY
)
PASSWORD = "not-sent-anywhere-123456789"


def login(port: int) -> Outcome:
    return pg_login("127.0.0.1", port, "webui1", "webui1", PASSWORD, 2.0)


def tls_login(port: int, tls: ssl.SSLContext, server_name: str | None = None) -> Outcome:
    """webui1's probe login over TLS to the scripted server on ``port``."""
    return pg_login(
        "127.0.0.1", port, "webui1", "webui1", PASSWORD, 2.0, tls=tls, server_name=server_name
    )


def test_pg_refuses_to_send_a_cleartext_password() -> None:
    def script(conn: socket.socket) -> None:
        read_startup(conn)
        conn.sendall(pg_msg(b"R", struct.pack("!I", 3)))

    with scripted_server(script) as (port, received):
        outcome = login(port)
    assert outcome.state is State.AUTH_FAILED
    assert "cleartext" in outcome.detail
    assert b"".join(received) == b""


def test_pg_refuses_md5() -> None:
    def script(conn: socket.socket) -> None:
        read_startup(conn)
        conn.sendall(pg_msg(b"R", struct.pack("!I", 5) + b"salt"))

    with scripted_server(script) as (port, received):
        outcome = login(port)
    assert outcome == Outcome(State.AUTH_FAILED, outcome.detail)
    assert "MD5" in outcome.detail
    assert b"".join(received) == b""  # nothing after the StartupMessage: no hash was sent


def test_pg_login_without_a_password_is_degraded() -> None:
    def script(conn: socket.socket) -> None:
        startup = read_startup(conn)
        assert b"user\0webui1\0database\0webui1\0" in startup
        conn.sendall(pg_msg(b"R", b"\0\0\0\0") + pg_msg(b"S", b"a\0b\0") + READY)
        assert read_pg(conn) == (b"Q", b"SELECT 1\0")
        conn.sendall(SELECT_1)
        assert read_pg(conn) == (b"X", b"")

    with scripted_server(script) as (port, _):
        outcome = login(port)
    assert outcome.state is State.DEGRADED
    assert "without a password" in outcome.detail


def sasl_script(final: Callable[[socket.socket], None]) -> Callable[[socket.socket], None]:
    """A server that offers SCRAM, answers with a server-first message, then runs ``final``."""

    def script(conn: socket.socket) -> None:
        read_startup(conn)
        conn.sendall(pg_msg(b"R", struct.pack("!I", 10) + b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"))
        tag, payload = read_pg(conn)
        assert tag == b"p"
        assert payload.startswith(b"SCRAM-SHA-256\0")
        first = payload[len(b"SCRAM-SHA-256\0") + 4 :].decode()
        assert first.startswith("n,,n=,r=")
        nonce = first.split("r=", 1)[1]
        server_first = f"r={nonce}srv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        conn.sendall(pg_msg(b"R", struct.pack("!I", 11) + server_first.encode()))
        tag, payload = read_pg(conn)
        assert tag == b"p"
        assert payload.startswith(f"c=biws,r={nonce}srv,p=".encode())
        final(conn)

    return script


def test_pg_rejects_a_server_signature_that_does_not_match() -> None:
    def final(conn: socket.socket) -> None:
        bad = b"v=" + b"A" * 43 + b"="
        conn.sendall(pg_msg(b"R", struct.pack("!I", 12) + bad) + pg_msg(b"R", b"\0\0\0\0"))

    with scripted_server(sasl_script(final)) as (port, _):
        outcome = login(port)
    assert outcome.state is State.AUTH_FAILED
    assert "signature does not match" in outcome.detail


def test_pg_rejects_a_server_that_skips_its_signature() -> None:
    with scripted_server(sasl_script(lambda c: c.sendall(pg_msg(b"R", b"\0\0\0\0")))) as (
        port,
        _,
    ):
        outcome = login(port)
    assert outcome == Outcome(State.AUTH_FAILED, "SCRAM: the server did not prove itself")


@pytest.mark.parametrize(
    ("code", "state"),
    [
        ("28P01", State.AUTH_FAILED),
        ("28000", State.REFUSED),
        ("53300", State.DEGRADED),
        ("3D000", State.DOWN),
    ],
)
def test_pg_error_response_maps_sqlstate(code: str, state: State) -> None:
    payload = f"SFATAL\0VFATAL\0C{code}\0Msomething about webui1\0Rauth.c\0\0".encode()
    assert pg_error_outcome(payload) == Outcome(state, f"SQLSTATE {code}: something about webui1")


def test_pg_reports_an_error_response_as_a_state() -> None:
    def script(conn: socket.socket) -> None:
        read_startup(conn)
        error = b"SFATAL\0C28000\0Mno pg_hba.conf entry for host\0\0"
        conn.sendall(pg_msg(b"E", error))

    with scripted_server(script) as (port, _):
        outcome = login(port)
    assert outcome == Outcome(State.REFUSED, "SQLSTATE 28000: no pg_hba.conf entry for host")


def test_pg_calls_a_non_postgres_server_down() -> None:
    def script(conn: socket.socket) -> None:
        read_startup(conn)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    with scripted_server(script) as (port, _):
        outcome = login(port)
    assert outcome.state is State.DOWN


def test_redis_never_reports_the_password_a_server_echoes() -> None:
    def script(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(
            f"-ERR unknown command 'AUTH', with args beginning with: 'webui1' '{PASSWORD}'\r\n".encode()
        )

    with scripted_server(script) as (port, _):
        outcome = redis_ping("127.0.0.1", port, "webui1", PASSWORD, 2.0)
    assert outcome.state is State.DOWN
    assert PASSWORD not in outcome.detail
    assert "unknown command" in outcome.detail


def test_redis_wrongpass_is_auth_failed() -> None:
    def script(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")

    with scripted_server(script) as (port, _):
        outcome = redis_ping("127.0.0.1", port, "webui1", PASSWORD, 2.0)
    assert outcome.state is State.AUTH_FAILED


def test_redis_reassembles_replies_split_across_packets() -> None:
    def script(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"+O")
        conn.sendall(b"K\r\n")
        conn.recv(4096)
        conn.sendall(b"+PONG\r\n")

    with scripted_server(script) as (port, _):
        outcome = redis_ping("127.0.0.1", port, "webui1", PASSWORD, 2.0)
    assert outcome == Outcome(State.OK, "user webui1: PONG")


def test_a_closed_port_is_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
    assert redis_ping("127.0.0.1", port, "u", PASSWORD, 1.0).state is State.REFUSED
    assert login(port).state is State.REFUSED


# -- TLS --------------------------------------------------------------------------------------------


def test_tls_context_trusts_only_the_given_ca() -> None:
    pki = make_pki()
    context = tls_context(ca_pem=pki.ca_cert)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    (trusted,) = context.get_ca_certs()  # the given CA alone, not the system store
    assert trusted["subject"] == ((("commonName", "test CA"),),)


def test_tls_context_reads_a_ca_file(tmp_path: Path) -> None:
    cafile, _, _ = make_pki().write(tmp_path)
    assert len(tls_context(cafile=str(cafile)).get_ca_certs()) == 1


def test_tls_context_wants_a_ca() -> None:
    with pytest.raises(ValueError, match="needs a CA"):
        tls_context()


def scram_login_script(password: str) -> Callable[[socket.socket], None]:
    """A PostgreSQL server's side of a SCRAM-SHA-256 login with ``password`` that checks the
    client's proof, proves itself, and answers SELECT 1."""
    salt, iterations = b"0123456789abcdef", 4096
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def script(conn: socket.socket) -> None:
        assert b"user\0webui1\0database\0webui1\0" in read_startup(conn)
        conn.sendall(pg_msg(b"R", struct.pack("!I", 10) + b"SCRAM-SHA-256\0\0"))
        tag, payload = read_pg(conn)
        assert tag == b"p"
        first_bare = payload[len(b"SCRAM-SHA-256\0") + 4 :].decode().removeprefix("n,,")
        nonce = first_bare.split("r=", 1)[1] + "server-part"
        server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={iterations}"
        conn.sendall(pg_msg(b"R", struct.pack("!I", 11) + server_first.encode()))
        tag, payload = read_pg(conn)
        assert tag == b"p"
        without_proof, _, proof = payload.decode().rpartition(",p=")
        auth_message = f"{first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        claimed_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=True))
        if hashlib.sha256(claimed_key).digest() != stored_key:
            error = b'SFATAL\0C28P01\0Mpassword authentication failed for user "webui1"\0\0'
            conn.sendall(pg_msg(b"E", error))
            return
        verifier = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        final = b"v=" + base64.b64encode(verifier)
        conn.sendall(
            pg_msg(b"R", struct.pack("!I", 12) + final) + pg_msg(b"R", b"\0\0\0\0") + READY
        )
        assert read_pg(conn) == (b"Q", b"SELECT 1\0")
        conn.sendall(SELECT_1)
        assert read_pg(conn) == (b"X", b"")

    return script


def test_pg_logs_in_over_tls_after_an_ssl_request(tmp_path: Path) -> None:
    pki = make_pki()
    with scripted_server(
        scram_login_script(PASSWORD), tls=pki.server_context(tmp_path), ssl_request=b"S"
    ) as (port, received):
        outcome = tls_login(port, tls_context(ca_pem=pki.ca_cert))
    assert outcome == Outcome(State.OK, "webui1@webui1: SELECT 1")
    assert received == []


def test_pg_scram_server_double_rejects_a_wrong_password(tmp_path: Path) -> None:
    """The double above really checks the proof: with another password the login fails."""
    pki = make_pki()
    with scripted_server(
        scram_login_script("another-password-0000000000"),
        tls=pki.server_context(tmp_path),
        ssl_request=b"S",
    ) as (port, _):
        outcome = tls_login(port, tls_context(pki.ca_cert))
    assert outcome.state is State.AUTH_FAILED
    assert outcome.detail.startswith("SQLSTATE 28P01: password authentication failed")


def test_pg_verifies_the_name_it_is_given(tmp_path: Path) -> None:
    """The certificate names the planned address; the probe may dial another one (a mapped
    address) and still verify that name."""
    pki = make_pki(("10.20.1.10", "ai-shared"))
    context = pki.server_context(tmp_path)
    for name, ok in (("10.20.1.10", True), ("ai-shared", True), ("10.20.1.11", False)):
        script = scram_login_script(PASSWORD) if ok else (lambda conn: None)
        with scripted_server(script, tls=context, ssl_request=b"S") as (port, _):
            outcome = tls_login(port, tls_context(pki.ca_cert), server_name=name)
        if ok:
            assert outcome.state is State.OK, (name, outcome)
        else:
            assert outcome.state is State.DOWN
            assert outcome.detail.startswith("TLS: certificate verify failed: IP address mismatch")
    # ... and by default the address it dials, which this certificate does not name
    with scripted_server(lambda conn: None, tls=context, ssl_request=b"S") as (port, _):
        outcome = tls_login(port, tls_context(pki.ca_cert))
    assert outcome.state is State.DOWN
    assert "mismatch" in outcome.detail


def test_pg_server_that_refuses_tls_is_down_and_hears_nothing_more() -> None:
    with scripted_server(lambda conn: None, ssl_request=b"N") as (port, received):
        outcome = tls_login(port, tls_context(make_pki().ca_cert))
    assert outcome == Outcome(State.DOWN, "the server refused TLS")
    assert received == []  # no StartupMessage, no user name in the clear


def test_pg_certificate_from_another_ca_fails_verification(tmp_path: Path) -> None:
    stranger = make_pki(ca="someone else's CA")
    with scripted_server(
        lambda conn: None, tls=stranger.server_context(tmp_path), ssl_request=b"S"
    ) as (port, received):
        outcome = tls_login(port, tls_context(make_pki().ca_cert))
    assert outcome.state is State.DOWN
    assert outcome.detail.startswith("TLS: certificate verify failed: ")
    assert "local issuer" in outcome.detail
    assert received == [b"handshake failed"]  # nothing was sent over an unverified channel


def test_pg_server_that_says_s_but_speaks_plain_text_is_down() -> None:
    def plain_after_s(conn: socket.socket) -> None:
        assert recv_exact(conn, 8) == PG_SSL_REQUEST
        conn.sendall(b"S" + pg_msg(b"R", struct.pack("!I", 3)))  # not a TLS ServerHello

    with scripted_server(plain_after_s) as (port, _):
        outcome = tls_login(port, tls_context(make_pki().ca_cert))
    assert outcome.state is State.DOWN
    assert outcome.detail.startswith("TLS handshake failed: ")


def test_pg_server_that_ignores_the_ssl_request_is_down() -> None:
    def not_postgres(conn: socket.socket) -> None:
        recv_exact(conn, 8)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    with scripted_server(not_postgres) as (port, _):
        outcome = tls_login(port, tls_context(make_pki().ca_cert))
    assert outcome == Outcome(State.DOWN, "not a PostgreSQL server (no answer to SSLRequest)")


def redis_script(conn: socket.socket) -> None:
    assert resp_decode(conn.recv(4096)) is not None  # AUTH
    conn.sendall(b"+OK\r\n")
    assert conn.recv(4096) == resp_encode("PING")
    conn.sendall(b"+PONG\r\n")


def test_redis_pings_over_tls(tmp_path: Path) -> None:
    pki = make_pki()
    with scripted_server(redis_script, tls=pki.server_context(tmp_path)) as (port, _):
        outcome = redis_ping(
            "127.0.0.1", port, "webui1", PASSWORD, 2.0, tls=tls_context(ca_pem=pki.ca_cert)
        )
    assert outcome == Outcome(State.OK, "user webui1: PONG")


def test_redis_certificate_from_another_ca_fails_before_auth(tmp_path: Path) -> None:
    stranger = make_pki(ca="someone else's CA")
    with scripted_server(redis_script, tls=stranger.server_context(tmp_path)) as (port, received):
        outcome = redis_ping(
            "127.0.0.1", port, "webui1", PASSWORD, 2.0, tls=tls_context(make_pki().ca_cert)
        )
    assert outcome.state is State.DOWN
    assert outcome.detail.startswith("TLS: certificate verify failed: ")
    assert received == [b"handshake failed"]


def test_redis_tls_to_a_plain_server_is_down() -> None:
    def plain(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"-ERR Protocol error: invalid multibulk length\r\n")

    with scripted_server(plain) as (port, _):
        outcome = redis_ping(
            "127.0.0.1", port, "webui1", PASSWORD, 2.0, tls=tls_context(make_pki().ca_cert)
        )
    assert outcome.state is State.DOWN
    assert outcome.detail.startswith("TLS handshake failed: ")
    assert PASSWORD not in outcome.detail


def test_tls_handshake_with_a_silent_server_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        context = tls_context(make_pki().ca_cert)
        outcome = redis_ping("127.0.0.1", port, "webui1", PASSWORD, 0.3, tls=context)
        assert outcome.state is State.TIMEOUT
        outcome = pg_login("127.0.0.1", port, "webui1", "webui1", PASSWORD, 0.3, tls=context)
        assert outcome.state is State.TIMEOUT
