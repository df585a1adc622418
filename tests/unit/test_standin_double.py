"""The Open WebUI TEST DOUBLE of the QEMU guests (tests/doubles/openwebui_standin.py), run the
way its image runs it (beside a copy of owuibuild's probes) against services that do not
answer: /health says 503 and why, and SIGTERM ends it at once with status 0, as it ends Open
WebUI (the container's first process would otherwise ignore it until Docker's kill). With the
generated TLS URLs it speaks TLS to PostgreSQL and Redis, verified with the URLs' CA file."""

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
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from infra.docker_engine import STANDIN_COMMAND
from infra.vm import free_port
from owuibuild.bundle import database_url, redis_url
from owuibuild.plan import FLEET_CA
from test_probes import make_pki, resp_decode, scram_login_script, serve_one

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


def wait_for_checks(
    proc: subprocess.Popen[str], port: int, done: Callable[[dict[str, Any]], bool] = bool
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """/health's status and body and /checks, once every check has a result and ``done``."""
    deadline = time.monotonic() + 30
    while True:
        try:
            status, health = _get(f"http://127.0.0.1:{port}/health")
            _, checks = _get(f"http://127.0.0.1:{port}/checks")
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


def tls_env(ca_file: Path, pg_port: int, redis_port: int, dead: int) -> dict[str, str]:
    """The double's environment with URLs shaped as the generated env files' (but the CA file
    is ``ca_file``)."""
    database = (
        f"postgresql+psycopg://webui1:{PASSWORD}@127.0.0.1:{pg_port}/webui1"
        f"?sslmode=verify-full&sslrootcert={ca_file}"
    )
    redis = f"rediss://webui1:{PASSWORD}@127.0.0.1:{redis_port}/0?ssl_ca_certs={ca_file}"
    return {
        "DATABASE_URL": database,
        "REDIS_URL": redis,
        "WEBSOCKET_REDIS_URL": redis,
        "QDRANT_URI": f"http://127.0.0.1:{dead}",
        "QDRANT_API_KEY": "s3cret-key-000000000000000",
        "OLLAMA_BASE_URL": f"http://127.0.0.1:{dead}",
    }


def test_standin_speaks_tls_to_postgresql_and_redis(tmp_path: Path) -> None:
    """With the generated URLs' shape the double sends an SSLRequest, verifies the servers'
    certificates with the CA file the URLs name and logs in over TLS."""
    pki = make_pki()
    ca_file, _, _ = pki.write(tmp_path / "pki")
    server = pki.server_context(tmp_path / "pki")
    with (
        fake_server(scram_login_script(PASSWORD), tls=server, ssl_request=b"S") as pg_port,
        fake_server(redis_publish_script, tls=server) as redis_port,
        standin(tmp_path / "app", tls_env(ca_file, pg_port, redis_port, free_port())) as (
            proc,
            port,
        ),
    ):
        status, _, checks = wait_for_checks(
            proc, port, lambda c: c["postgres"]["ok"] and c["redis"]["ok"]
        )
        assert status == 503  # Qdrant and Ollama do not answer
        assert checks["postgres"] == {"ok": True, "detail": "webui1@webui1: SELECT 1"}
        assert checks["redis"] == {"ok": True, "detail": "AUTH and PUBLISH socketio"}
        assert "s3cret" not in json.dumps(checks)


def test_standin_refuses_servers_its_ca_did_not_certify(tmp_path: Path) -> None:
    """A certificate from another CA, and a PostgreSQL that will not speak TLS, fail the
    checks with what TLS found, not with a plain-protocol error."""
    ca_file, _, _ = make_pki().write(tmp_path / "fleet")
    stranger = make_pki(ca="someone else's CA").server_context(tmp_path / "stranger")
    with (
        fake_server(lambda conn: None, ssl_request=b"N") as pg_port,
        fake_server(redis_publish_script, tls=stranger) as redis_port,
        standin(tmp_path / "app", tls_env(ca_file, pg_port, redis_port, free_port())) as (
            proc,
            port,
        ),
    ):
        _, _, checks = wait_for_checks(proc, port)
        assert checks["postgres"] == {"ok": False, "detail": "the server refused TLS"}
        assert checks["redis"]["ok"] is False
        assert checks["redis"]["detail"].startswith("TLS: certificate verify failed: ")
        assert "s3cret" not in json.dumps(checks)


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
