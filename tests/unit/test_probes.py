"""Unit tests of the probes' wire protocols: SCRAM-SHA-256, SASLprep, RESP and the PostgreSQL
client's handling of what a server may answer.

Scripted servers here are test doubles on 127.0.0.1 that play one conversation each; the real
PostgreSQL and Redis are in tests/services/test_status_servers.py.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st
from owuibuild.probes import (
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


# -- scripted servers -------------------------------------------------------------------------------


@contextmanager
def scripted_server(script: Callable[[socket.socket], None]) -> Iterator[tuple[int, list[bytes]]]:
    """A test double on 127.0.0.1 that runs ``script`` for one connection; yields its port and
    what it received (appended by ``recv_all``)."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            script(conn)
            conn.settimeout(0.2)
            try:
                while chunk := conn.recv(65536):
                    received.append(chunk)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received
    finally:
        thread.join(5)
        listener.close()


def pg_msg(tag: bytes, payload: bytes) -> bytes:
    return tag + struct.pack("!I", len(payload) + 4) + payload


def read_startup(conn: socket.socket) -> bytes:
    size = struct.unpack("!I", conn.recv(4, socket.MSG_WAITALL))[0]
    return conn.recv(size - 4, socket.MSG_WAITALL)


def read_pg(conn: socket.socket) -> tuple[bytes, bytes]:
    head = conn.recv(5, socket.MSG_WAITALL)
    size = struct.unpack("!I", head[1:])[0]
    return head[:1], conn.recv(size - 4, socket.MSG_WAITALL)


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
