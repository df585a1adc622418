"""The Open WebUI TEST DOUBLE of the QEMU guests (tests/doubles/openwebui_standin.py), run the
way its image runs it (beside a copy of owuibuild's probes) against services that do not
answer: /health says 503 and why, and SIGTERM ends it at once with status 0, as it ends Open
WebUI (the container's first process would otherwise ignore it until Docker's kill). With the
generated TLS URLs it speaks TLS to PostgreSQL and Redis, verified with the URLs' CA file, and
HTTPS to Qdrant and Ollama, verified with the CA bundle of SSL_CERT_FILE; it never turns healthy
over plain HTTP or with a certificate that bundle does not verify."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from infra.docker_engine import STANDIN_COMMAND
from infra.vm import free_port
from owuibuild import qdrant_access
from owuibuild.bundle import database_url, environment, redis_url
from owuibuild.plan import CA_BUNDLE, FLEET_CA
from test_probes import make_pki, resp_decode, scram_login_script, serve_one
from test_qdrant_double import KEY as QDRANT_SERVER_KEY
from test_qdrant_double import Qdrant, make_collections
from test_qdrant_double import start as start_qdrant

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _copy_standin(where: Path) -> None:
    shutil.copy(REPO / "tests" / "doubles" / "openwebui_standin.py", where)
    shutil.copy(REPO / "builder" / "probes.py", where)


@contextmanager
def standin(where: Path, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The double, started as its image starts it, with ``env``; yields it and its port."""
    where.mkdir(parents=True, exist_ok=True)
    _copy_standin(where)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, *STANDIN_COMMAND[1:]],
        cwd=where,
        env={"PATH": os.environ.get("PATH", ""), "OWUIBUILD_STANDIN_PORT": str(port), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _post(url: str, body: object) -> tuple[int, object]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for_checks(
    proc: subprocess.Popen[str], port: int, done: Callable[[dict[str, Any]], bool] = bool
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """/health's status and body and /checks, once every check has a result and ``done``."""
    deadline = time.monotonic() + 30
    while True:
        try:
            # /checks first: /health, asked after, answers for checks at least as complete
            # (the other order races a check that completes between the two questions).
            _, checks = _get(f"http://127.0.0.1:{port}/checks")
            status, health = _get(f"http://127.0.0.1:{port}/health")
        except (urllib.error.URLError, ConnectionError):
            status, health, checks = 0, {}, {}
        if status and len(checks) == 4 and done(checks):
            return status, health, checks
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"the double never answered as expected: {checks}"
        time.sleep(0.1)


def test_standin_reports_failing_checks_and_stops_on_sigterm(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens on `dead`
    env = {
        "DATABASE_URL": f"postgresql://alpha:s3cret-pw@127.0.0.1:{dead}/alpha",
        "REDIS_URL": f"redis://:s3cret-pw@127.0.0.1:{dead}/0",
        "QDRANT_URI": f"http://127.0.0.1:{dead}",
        "QDRANT_API_KEY": "s3cret-key",
        "OLLAMA_BASE_URL": f"http://127.0.0.1:{dead}",
    }
    with standin(tmp_path, env) as (proc, port):
        status, health, checks = wait_for_checks(proc, port)
        assert status == 503 and health == {"status": False, "test_double": True}
        assert set(checks) == {"postgres", "redis", "qdrant", "ollama"}
        assert not any(c["ok"] for c in checks.values())
        assert checks["postgres"]["detail"] == "connection refused"  # plain URLs: plain TCP
        assert checks["redis"]["detail"] == "connection refused"
        # Qdrant and Ollama only over HTTPS: an http:// URL is not even dialled.
        assert checks["qdrant"]["detail"] == "ValueError: QDRANT_URI: http:// is not https://"
        assert checks["ollama"]["detail"] == (
            "ValueError: OLLAMA_BASE_URL: http:// is not https://"
        )
        assert "s3cret" not in json.dumps(checks)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=5)
        assert proc.returncode == 0, err


# -- TLS ---------------------------------------------------------------------------------------------

PASSWORD = "s3cret-pw-0000000000000000"


@contextmanager
def fake_server(
    script: Callable[[socket.socket], None],
    *,
    tls: ssl.SSLContext | None = None,
    ssl_request: bytes | None = None,
) -> Iterator[int]:
    """A scripted server of test_probes on 127.0.0.1 for every connection (the double retries);
    yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # closing it would not wake a thread blocked in accept()
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            # A failed conversation ends its connection; the double's next attempt gets a new one.
            with suppress(AssertionError, OSError):
                serve_one(conn, script, received, tls=tls, ssl_request=ssl_request)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def redis_publish_script(conn: socket.socket) -> None:
    decoded = resp_decode(conn.recv(4096))
    assert decoded is not None and decoded[0] == [b"AUTH", b"webui1", PASSWORD.encode()]
    conn.sendall(b"+OK\r\n")
    decoded = resp_decode(conn.recv(4096))
    assert decoded is not None and isinstance(decoded[0], list)
    assert decoded[0][:2] == [b"PUBLISH", b"socketio"]
    conn.sendall(b":0\r\n")


def tls_env(
    ca_file: Path, pg_port: int, redis_port: int, qdrant_port: int, ollama_port: int
) -> dict[str, str]:
    """The double's environment with URLs shaped as the generated env files' (but the CA file
    and the CA bundle are ``ca_file``)."""
    database = (
        f"postgresql+psycopg://webui1:{PASSWORD}@127.0.0.1:{pg_port}/webui1"
        f"?sslmode=verify-full&sslrootcert={ca_file}"
    )
    redis = f"rediss://webui1:{PASSWORD}@127.0.0.1:{redis_port}/0?ssl_ca_certs={ca_file}"
    return {
        "DATABASE_URL": database,
        "REDIS_URL": redis,
        "WEBSOCKET_REDIS_URL": redis,
        "QDRANT_URI": f"https://127.0.0.1:{qdrant_port}",
        "QDRANT_API_KEY": QDRANT_KEY,
        "QDRANT_COLLECTION_PREFIX": "webui1",
        "OLLAMA_BASE_URL": f"https://127.0.0.1:{ollama_port}",
        "RAG_EMBEDDING_MODEL": "tinyllama",
        "SSL_CERT_FILE": str(ca_file),
        "REQUESTS_CA_BUNDLE": str(ca_file),
    }


QDRANT_KEY = qdrant_access.token(QDRANT_SERVER_KEY, qdrant_access.collections("webui1"))
EMBEDDING = [0.125, -0.25, 0.5, -1.0]  # four dimensions, as the Ollama double's


@contextmanager
def http_server(tls: ssl.SSLContext | None = None) -> Iterator[tuple[int, list[str]]]:
    """An Ollama (and a Qdrant that has nothing) on 127.0.0.1, over HTTPS with ``tls`` (else
    plain HTTP): 200 for /api/tags, /api/embed (a four-dimension vector) and /api/chat, 200
    for /collections with the Qdrant key, 401 and 404 otherwise. Yields its port and the
    requests it answered ("METHOD /path", "+key" when the key was right, then any body)."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def answer(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            keyed = self.headers.get("api-key") == QDRANT_KEY
            seen.append(f"GET {self.path}{' +key' if keyed else ''}")
            if self.path == "/collections":
                status = 200 if keyed else 401
            else:
                status = 200 if self.path == "/api/tags" else 404
            self.answer(status, {"result": {"collections": []}, "models": []})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            seen.append(f"POST {self.path} {body}")
            if self.path == "/api/embed":
                self.answer(200, {"embeddings": [EMBEDDING]})
            elif self.path == "/api/chat":
                self.answer(200, {"message": {"role": "assistant", "content": "hello"}})
            else:
                self.answer(404, {"error": "not found"})

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    # A failed handshake ends that connection only (printed by socketserver's handle_error).
    server.handle_error = lambda request, address: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def qdrant_double(where: Path, size: int = len(EMBEDDING)) -> Iterator[Qdrant]:
    """The Qdrant TEST DOUBLE over HTTPS with jwt_rbac, webui1's five collections made with the
    server's key as the collections script makes them (vectors of ``size``)."""
    qdrant = start_qdrant(where)
    try:
        make_collections(qdrant, qdrant_access.collections("webui1"), size)
        yield qdrant
    finally:
        qdrant.proc.kill()
        qdrant.proc.communicate()


def ca_bundle(ca_file: Path, where: Path) -> Path:
    """A CA bundle as the Docker host makes it: the system's CA certificates (when this machine
    has them) and then the fleet CA."""
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    bundle = where / "ca-bundle.crt"
    bundle.write_text((system.read_text() if system.is_file() else "") + ca_file.read_text())
    return bundle


def test_standin_speaks_tls_to_every_service_and_turns_healthy(tmp_path: Path) -> None:
    """With the generated URLs' shape the double sends an SSLRequest, verifies the servers'
    certificates with the CA file the URLs name and logs in over TLS, and reaches Qdrant (the
    Qdrant TEST DOUBLE, jwt_rbac on) and Ollama over HTTPS verified with the CA bundle of
    SSL_CERT_FILE: its own token finds its five collections and writes an embedding from
    Ollama to its knowledge collection. Then, and only then, it is healthy. A prompt sent to
    its Ollama proxy reaches Ollama as sent."""
    pki = make_pki()
    ca_file, _, _ = pki.write(tmp_path / "pki")
    server = pki.server_context(tmp_path / "pki")
    with (
        fake_server(scram_login_script(PASSWORD), tls=server, ssl_request=b"S") as pg_port,
        fake_server(redis_publish_script, tls=server) as redis_port,
        qdrant_double(tmp_path / "qdrant") as qdrant,
        http_server(server) as (ollama_port, ollama_seen),
    ):
        env = tls_env(ca_file, pg_port, redis_port, qdrant.port, ollama_port)
        env["SSL_CERT_FILE"] = env["REQUESTS_CA_BUNDLE"] = str(ca_bundle(ca_file, tmp_path))
        with standin(tmp_path / "app", env) as (proc, port):
            status, health, checks = wait_for_checks(
                proc, port, lambda c: all(v["ok"] for v in c.values())
            )
            prompt = {"model": "tinyllama", "messages": [{"role": "user", "content": "hi 42"}]}
            relayed = _post(f"http://127.0.0.1:{port}/ollama/api/chat", prompt)
            assert _post(f"http://127.0.0.1:{port}/ollama/api/pull", {})[0] == 404
        log = qdrant.log()
    assert status == 200 and health == {"status": True, "test_double": True}
    assert checks == {
        "postgres": {"ok": True, "detail": "webui1@webui1: SELECT 1"},
        "redis": {"ok": True, "detail": "AUTH and PUBLISH socketio"},
        "qdrant": {
            "ok": True,
            "detail": "5 collections; a 4-dimension point written to webui1_knowledge",
        },
        "ollama": {"ok": True, "detail": "127.0.0.1: 200"},
    }
    # Qdrant saw the token's claims on every request of the double, and nothing refused.
    used = [e for e in log if e["auth"] == "jwt"]
    assert {e["status"] for e in used} == {200}
    assert all(
        e["claims"] == qdrant_access.claims(qdrant_access.collections("webui1")) for e in used
    )
    assert [e["path"] for e in used][-1] == "/collections/webui1_knowledge/points?wait=true"
    embed = json.dumps({"model": "tinyllama", "input": ["owuibuild test double"]})
    assert ollama_seen == [
        f"POST /api/embed {embed}",
        "GET /api/tags",
        f"POST /api/chat {json.dumps(prompt)}",
    ]
    assert relayed == (200, {"message": {"role": "assistant", "content": "hello"}})


def test_standin_stays_unhealthy_with_another_instances_token(tmp_path: Path) -> None:
    """A token for another instance's collections: Qdrant answers 403, and the double says so
    (without the token)."""
    pki = make_pki()
    ca_file, _, _ = pki.write(tmp_path / "pki")
    server = pki.server_context(tmp_path / "pki")
    dead = free_port()
    with (
        qdrant_double(tmp_path / "qdrant") as qdrant,
        http_server(server) as (ollama_port, _),
    ):
        env = tls_env(ca_file, dead, dead, qdrant.port, ollama_port)
        other = qdrant_access.token(QDRANT_SERVER_KEY, qdrant_access.collections("webui2"))
        env["QDRANT_API_KEY"] = other
        with standin(tmp_path / "app", env) as (proc, port):
            _, _, checks = wait_for_checks(proc, port)
    assert checks["qdrant"] == {
        "ok": False,
        "detail": "GET /collections/webui1_memories/exists: 403",
    }
    assert other not in json.dumps(checks)


def test_standin_stays_unhealthy_when_the_collections_have_another_size(tmp_path: Path) -> None:
    """Collections made for another embedding length (the blueprint's embedding_dimensions
    wrong for its model): Qdrant refuses the embedding, and the double stays unhealthy."""
    pki = make_pki()
    ca_file, _, _ = pki.write(tmp_path / "pki")
    server = pki.server_context(tmp_path / "pki")
    dead = free_port()
    with (
        qdrant_double(tmp_path / "qdrant", size=768) as qdrant,
        http_server(server) as (ollama_port, _),
    ):
        env = tls_env(ca_file, dead, dead, qdrant.port, ollama_port)
        with standin(tmp_path / "app", env) as (proc, port):
            _, _, checks = wait_for_checks(proc, port)
    assert checks["qdrant"] == {
        "ok": False,
        "detail": "PUT /collections/webui1_knowledge/points?wait=true: 400",
    }


def test_standin_refuses_servers_its_ca_did_not_certify(tmp_path: Path) -> None:
    """A certificate from another CA, and a PostgreSQL that will not speak TLS, fail the
    checks with what TLS found, not with a plain-protocol error."""
    ca_file, _, _ = make_pki().write(tmp_path / "fleet")
    stranger = make_pki(ca="someone else's CA").server_context(tmp_path / "stranger")
    with (
        fake_server(lambda conn: None, ssl_request=b"N") as pg_port,
        fake_server(redis_publish_script, tls=stranger) as redis_port,
        http_server(stranger) as (qdrant_port, qdrant_seen),
        http_server(stranger) as (ollama_port, ollama_seen),
        standin(
            tmp_path / "app", tls_env(ca_file, pg_port, redis_port, qdrant_port, ollama_port)
        ) as (proc, port),
    ):
        status, _, checks = wait_for_checks(proc, port)
    assert status == 503
    assert checks["postgres"] == {"ok": False, "detail": "the server refused TLS"}
    assert checks["redis"]["ok"] is False
    assert checks["redis"]["detail"].startswith("TLS: certificate verify failed: ")
    assert checks["qdrant"]["ok"] is False
    assert checks["qdrant"]["detail"].startswith("TLS: certificate verify failed: ")
    assert checks["ollama"]["ok"] is False
    assert checks["ollama"]["detail"].startswith(
        f"https://127.0.0.1:{ollama_port}: TLS: certificate verify failed: "
    )
    # The API key never left the double: no request got past the handshake.
    assert qdrant_seen == [] and ollama_seen == []
    assert "s3cret" not in json.dumps(checks)


def test_standin_refuses_a_certificate_for_another_host(tmp_path: Path) -> None:
    """The fleet CA's certificate, but for another address than the URL's: refused, as
    Open WebUI's clients check the name."""
    pki = make_pki(names=("10.9.9.9",))
    ca_file, _, _ = pki.write(tmp_path / "pki")
    server = pki.server_context(tmp_path / "pki")
    dead = free_port()
    with (
        http_server(server) as (qdrant_port, qdrant_seen),
        standin(tmp_path / "app", tls_env(ca_file, dead, dead, qdrant_port, dead)) as (
            proc,
            port,
        ),
    ):
        _, _, checks = wait_for_checks(proc, port)
    assert checks["qdrant"] == {
        "ok": False,
        "detail": "TLS: certificate verify failed: IP address mismatch, certificate is not "
        "valid for '127.0.0.1'",
    }
    assert qdrant_seen == []


def test_standin_never_turns_healthy_over_plain_http(tmp_path: Path) -> None:
    """Servers that answer every check, but over plain HTTP: an http:// URL is refused before
    it is dialled, an https:// URL fails its handshake, and no CA bundle (SSL_CERT_FILE) fails
    too. The double stays unhealthy, and the API key is never sent in clear text."""
    pki = make_pki()
    ca_file, _, _ = pki.write(tmp_path / "pki")
    server = pki.server_context(tmp_path / "pki")
    with (
        fake_server(scram_login_script(PASSWORD), tls=server, ssl_request=b"S") as pg_port,
        fake_server(redis_publish_script, tls=server) as redis_port,
        http_server() as (plain_port, plain_seen),
    ):
        env = tls_env(ca_file, pg_port, redis_port, plain_port, plain_port)
        env["QDRANT_URI"] = f"http://127.0.0.1:{plain_port}"
        with standin(tmp_path / "app", env) as (proc, port):
            status, _, checks = wait_for_checks(
                proc, port, lambda c: c["postgres"]["ok"] and c["redis"]["ok"]
            )
            time.sleep(2)  # a second round of the failing checks: still failing
            status, _, checks = wait_for_checks(proc, port)
        assert status == 503
        assert checks["qdrant"] == {
            "ok": False,
            "detail": "ValueError: QDRANT_URI: http:// is not https://",
        }
        assert checks["ollama"]["ok"] is False
        assert checks["ollama"]["detail"].startswith(f"https://127.0.0.1:{plain_port}: TLS: ")
        # No plain request reached the server: the handshake failed before any HTTP was sent.
        assert plain_seen == []

        del env["SSL_CERT_FILE"]
        env["QDRANT_URI"] = f"https://127.0.0.1:{plain_port}"
        with standin(tmp_path / "app2", env) as (proc, port):
            _, _, checks = wait_for_checks(proc, port)
        for name, variable in (("qdrant", "QDRANT_URI"), ("ollama", "OLLAMA_BASE_URL")):
            assert checks[name] == {
                "ok": False,
                "detail": f"ValueError: {variable}: https:// without SSL_CERT_FILE (the CA bundle)",
            }
        assert plain_seen == []


# -- its URL parsing, in this process ----------------------------------------------------------------


@pytest.fixture
def double(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The double's module, imported beside its copy of probes as in its image (with nothing
    but the standard library and that copy), and forgotten afterwards."""
    _copy_standin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    names = ("openwebui_standin", "probes")
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    try:
        module = importlib.import_module("openwebui_standin")
        assert Path(module.__file__ or "").parent == tmp_path
        assert Path(module.probes.__file__ or "").parent == tmp_path
        yield module
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def test_standin_reads_tls_from_the_generated_urls(
    double: ModuleType, render_example: Callable[[str], Any]
) -> None:
    rendered = render_example("multi-host.yml")
    inst = rendered.plan.instances[0]
    pg = double.postgres_tls(database_url(rendered.plan, inst, rendered.secrets))
    assert pg == double.Tls(FLEET_CA, check_hostname=True)
    redis = double.redis_tls(redis_url(inst, rendered.secrets))
    assert redis == double.Tls(FLEET_CA, check_hostname=True)
    # Qdrant and Ollama: https:// URLs, and the CA bundle the container mounts to verify them.
    env = dict(environment(rendered.plan, inst, rendered.secrets))
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == CA_BUNDLE
    for variable in ("QDRANT_URI", "OLLAMA_BASE_URL"):
        assert env[variable].startswith("https://"), env[variable]
    several = [url for url in env.get("OLLAMA_BASE_URLS", "").split(";") if url]
    assert all(url.startswith("https://") for url in several), several


@pytest.mark.parametrize(
    ("url", "tls"),
    [
        ("postgresql://u:p@10.0.0.5:5432/db", None),
        ("postgresql://u:p@10.0.0.5/db?sslmode=disable", None),
        ("postgresql://u:p@10.0.0.5/db?sslmode=verify-full&sslrootcert=/ca.crt", ("/ca.crt", True)),
        ("postgresql://u:p@10.0.0.5/db?sslmode=verify-ca&sslrootcert=/ca.crt", ("/ca.crt", False)),
        ("postgresql://u:p@10.0.0.5/db?sslrootcert=/ca.crt&sslmode=require", ("/ca.crt", False)),
        ("postgresql://u:p@10.0.0.5/db?sslmode=verify-full", "without sslrootcert"),
        ("postgresql://u:p@10.0.0.5/db?sslmode=verfiy-full", "unknown sslmode"),
    ],
)
def test_standin_postgres_url_tls(double: ModuleType, url: str, tls: object) -> None:
    if isinstance(tls, str):
        with pytest.raises(ValueError, match=tls):
            double.postgres_tls(url)
    else:
        assert double.postgres_tls(url) == (tls and double.Tls(*tls))


@pytest.mark.parametrize(
    ("url", "tls"),
    [
        ("redis://u:p@10.0.0.5:6379/0", None),
        ("rediss://u:p@10.0.0.5:6379/0?ssl_ca_certs=/ca.crt", ("/ca.crt", True)),
        (
            "rediss://u:p@10.0.0.5:6379/0?ssl_ca_certs=/ca.crt&ssl_check_hostname=false",
            ("/ca.crt", False),
        ),
        ("rediss://u:p@10.0.0.5:6379/0", "without ssl_ca_certs"),
        ("rediss://u:p@10.0.0.5:6379/0?ssl_ca_certs=/ca.crt&ssl_cert_reqs=none", "verifies"),
        ("http://10.0.0.5:6379", "unsupported scheme"),
    ],
)
def test_standin_redis_url_tls(double: ModuleType, url: str, tls: object) -> None:
    if isinstance(tls, str):
        with pytest.raises(ValueError, match=tls):
            double.redis_tls(url)
    else:
        assert double.redis_tls(url) == (tls and double.Tls(*tls))


def test_standin_tls_context_trusts_the_url_ca_file(double: ModuleType, tmp_path: Path) -> None:
    ca_file, _, _ = make_pki().write(tmp_path / "pki")
    context = double.Tls(str(ca_file), check_hostname=False).context()
    assert context.verify_mode is ssl.CERT_REQUIRED and not context.check_hostname
    assert len(context.get_ca_certs()) == 1
    assert double.Tls(str(ca_file)).context().check_hostname
