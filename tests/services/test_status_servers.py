"""`owuibuild status` against real servers: PostgreSQL 15 and redis-server, started here.

Ollama, Qdrant and Open WebUI are HTTP test doubles (`OllamaDouble`, `QdrantDouble`,
`OpenWebUIDouble`) that answer the few requests `status` makes, the way the real ones do. They
check our probes, not those servers. Ollama and Qdrant servers cannot be downloaded here. Open
WebUI can (the containers tier runs it), but one instance takes about 20 s and 875 MB to start,
and this tier runs three on loopback addresses: so here it is a double, and
tests/containers/test_instances_live.py probes the `openwebui` and `openwebui-db` rows against
the real Open WebUI.

The test fleet lives on loopback addresses (127.77.N.0/24: the shared host at .24, Docker hosts
at .30 and .31; all of 127.0.0.0/8 is loopback on Linux), so every probe dials loopback only.
The roles, databases and ACL users get the passwords from the secrets file the render created.

PostgreSQL and Redis speak TLS only, as generated: their TLS settings are the generated
configuration's (postgresql.conf's ssl lines, redis.conf's port and tls- lines), with the
shared host's certificate and key from the render's CA file written to temp files and the
generated paths overridden to those (the last line wins in both). pg_hba has hostssl lines
only, like the generated one. The certificate names the blueprint's address of the shared host,
which is here the very loopback address the probes dial.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from conftest import require_tool, unavailable
from owuibuild import pki as fleet_pki
from owuibuild import secrets as store
from owuibuild.hostconfig import postgres as postgres_section
from owuibuild.hostconfig import redis as redis_section
from owuibuild.pipeline import Compiled, compile_blueprint
from owuibuild.pki import FleetPKI
from owuibuild.probes import Outcome, State, guarded, pg_login, redis_ping, tls_context
from owuibuild.status import certificate_checks

pytestmark = pytest.mark.services

PG_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's postgresql-15 layout
INSTANCES = (("webui1", "web-a", 3001), ("webui2", "web-a", 3002), ("webui3", "web-b", 3001))
REDIS_BASE = 26379
DEAD_PORT = 3009  # nothing listens here
SILENT_PORT = 3010  # accepts and never answers
MODELS = ("qwen2.5:3b", "nomic-embed-text")
TIMEOUT = 5.0


def blueprint_text(net: str, models: tuple[str, ...] = MODELS, **ports: int) -> str:
    """The test fleet on 127.77.N.0/24; ``ports`` moves an instance (e.g. webui3=3009)."""
    doc: dict[str, Any] = {
        "apiVersion": "owuibuild/v1",
        "name": "loopfleet",
        "os": {"distro": "debian-12", "timezone": "UTC"},
        "admin": {
            "user": "ops",
            "ssh_authorized_keys": [
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwuibuildExampleKeyReplaceWithYourOwn00000 ops"
            ],
            "allow_from": [f"{net}.0/24"],
        },
        "network": {"cidr": f"{net}.0/24", "gateway": f"{net}.1", "dns": [f"{net}.1"]},
        "shared": {
            "host": {"name": "ai-shared", "address": f"{net}.24", "memory_gb": 32},
            "ollama": {"models": list(models), "embedding_model": "nomic-embed-text"},
            "postgres": {"max_connections": 100},
            "redis": {"mode": "per-instance", "base_port": REDIS_BASE},
        },
        "hosts": [
            {"name": "web-a", "address": f"{net}.30", "memory_gb": 16},
            {"name": "web-b", "address": f"{net}.31", "memory_gb": 16},
        ],
        "instances": [
            {"name": name, "host": host, "port": ports.get(name, port)}
            for name, host, port in INSTANCES
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _can_bind(address: str, port: int) -> bool:
    try:
        with socket.create_server((address, port)):
            return True
    except OSError:
        return False


@dataclass
class Fleet:
    net: str
    dir: Path
    blueprint: Path
    secrets: dict[str, str]
    compiled: Compiled

    @property
    def shared(self) -> str:
        return f"{self.net}.24"

    @property
    def tls(self) -> FleetPKI:
        assert self.compiled.secrets is not None
        return self.compiled.secrets.tls

    def context(self) -> ssl.SSLContext:
        """What a client of the fleet trusts: its CA alone."""
        return tls_context(ca_pem=self.tls.ca_cert)

    def write_server_tls(self, where: Path) -> tuple[Path, Path]:
        """The shared host's certificate and key (mode 0600) as files in ``where``."""
        issued = self.tls.hosts["ai-shared"]
        cert, key = where / "server.crt", where / "server.key"
        cert.write_text(issued.cert)
        key.write_text(issued.key)
        key.chmod(0o600)
        return cert, key

    def copy_tls(self, blueprint: Path) -> None:
        """The fleet's CA file beside another blueprint of the same fleet (mode kept)."""
        shutil.copy2(fleet_pki.tls_path(self.blueprint), fleet_pki.tls_path(blueprint))

    def host(self, name: str) -> str:
        return f"{self.net}.30" if name == "web-a" else f"{self.net}.31"

    def variant(self, name: str, *, secrets: dict[str, str] | None = None, **kwargs: Any) -> Path:
        """Another blueprint for the same fleet, next to a copy of its secrets (some changed)."""
        where = self.dir / name
        where.mkdir()
        path = where / "fleet.yml"
        path.write_text(blueprint_text(self.net, **kwargs))
        store.write(store.secrets_path(path), {**self.secrets, **(secrets or {})}, path.name)
        self.copy_tls(path)
        return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    for n in range(77, 120):
        net = f"127.77.{n}"
        wanted = [(f"{net}.24", p) for p in (5432, 6333, 11434, REDIS_BASE, REDIS_BASE + 1)]
        wanted += [(f"{net}.24", REDIS_BASE + 2), (f"{net}.30", 3001), (f"{net}.30", 3002)]
        wanted += [(f"{net}.31", p) for p in (3001, DEAD_PORT, SILENT_PORT)]
        if all(_can_bind(a, p) for a, p in wanted):
            break
    else:
        pytest.fail("no free 127.77.N.0/24 network for the test fleet")
    where = tmp_path_factory.mktemp("status")
    blueprint = where / "fleet.yml"
    blueprint.write_text(blueprint_text(net))
    compiled = compile_blueprint(blueprint, seed_iso=False)  # creates the secrets file
    assert compiled.ok, [d.as_dict() for d in compiled.diagnostics]
    values, problems = store.read(store.secrets_path(blueprint))
    assert values is not None, problems
    fleet = Fleet(net, where, blueprint, values, compiled)
    assert fleet.tls.hosts["ai-shared"].names == ("ai-shared", fleet.shared)
    return fleet


def generated_lines(text: str, pattern: str) -> str:
    """The lines of a generated configuration file that match ``pattern`` (from the start)."""
    lines = [line for line in text.splitlines() if re.match(pattern, line)]
    assert lines, f"no line matches {pattern!r} in the generated configuration"
    return "\n".join(lines) + "\n"


# -- PostgreSQL 15 --------------------------------------------------------------------------------


def _as_postgres(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """initdb and pg_ctl refuse to run as root; run them as the postgres user then."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *argv], check=True, text=True, capture_output=True, **kwargs)


def cluster_conf(fleet: Fleet, base: Path, cert: Path, key: Path) -> str:
    """What postgresql.conf gets: the generated TLS settings (ssl = on, the minimum version),
    then this cluster's address, socket directory and paths."""
    assert fleet.compiled.plan is not None
    generated = postgres_section.postgresql_conf(fleet.compiled.plan)
    tls = generated_lines(generated, r"ssl\w* *=")
    assert re.search(r"^ssl = on$", tls, re.M), tls
    return (
        f"listen_addresses = '{fleet.shared}'\nport = 5432\n"
        f"unix_socket_directories = '{base}'\npassword_encryption = 'scram-sha-256'\n"
        f"fsync = off\n{tls}ssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n"
    )


def instance_sql(fleet: Fleet) -> list[str]:
    """psql's script for each instance's role (its password from the secrets file) and its
    own database."""
    sql = ["\\set ON_ERROR_STOP on"]
    for name, _, _ in INSTANCES:
        password = fleet.secrets[f"instances.{name}.db_password"]
        sql += [
            f"CREATE ROLE {name} LOGIN PASSWORD '{password}';",
            f"CREATE DATABASE {name} OWNER {name} ENCODING 'UTF8';",
            f"REVOKE CONNECT ON DATABASE {name} FROM PUBLIC;",
        ]
    return sql


@pytest.fixture(scope="module")
def postgres(fleet: Fleet) -> Iterator[None]:
    if not (PG_BIN / "initdb").exists():
        unavailable("PostgreSQL 15 is not installed (make system-deps installs it)")
    base = Path(tempfile.mkdtemp(prefix="owuibuild-status-pg-"))
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    try:
        _as_postgres(
            [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--no-sync"]
        )
        cert, key = fleet.write_server_tls(base)
        if os.geteuid() == 0:
            for path in (cert, key):
                shutil.chown(path, "postgres", "postgres")
        conf = cluster_conf(fleet, base, cert, key)
        # hostssl only, as generated: a connection without TLS matches no line but the last.
        hba = ["local all postgres trust"]
        hba += [f"hostssl {n} {n} 127.0.0.0/8 scram-sha-256" for n, _, _ in INSTANCES]
        hba += ["hostssl legacy legacy 127.0.0.0/8 password"]  # cleartext: must not be answered
        hba += ["host all all 0.0.0.0/0 reject"]
        # No line for 'stranger': pg_hba turns it away (28000).
        with (data / "postgresql.conf").open("a") as fh:
            fh.write(conf)
        (data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        sql = instance_sql(fleet)
        sql += [
            "CREATE ROLE stranger LOGIN PASSWORD 'stranger-password-000000000';",
            "CREATE ROLE legacy LOGIN PASSWORD 'legacy-password-0000000000';",
            "CREATE DATABASE legacy OWNER legacy;",
        ]
        _as_postgres(
            [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "start"]
        )
        try:
            _as_postgres(
                [str(PG_BIN / "psql"), "-h", str(base), "-U", "postgres", "-d", "postgres", "-q"],
                input="\n".join(sql) + "\n",
            )
            yield
        finally:
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- redis-server ---------------------------------------------------------------------------------


def _wait_for_port(address: str, port: int, seconds: float = 10) -> None:
    end = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def redis(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    require_tool("redis-server")
    where = tmp_path_factory.mktemp("redis")
    cert, key = fleet.write_server_tls(where)
    plan = fleet.compiled.plan
    assert plan is not None and fleet.compiled.secrets is not None
    servers: list[subprocess.Popen[bytes]] = []
    try:
        for index, (name, _, _) in enumerate(INSTANCES):
            password = fleet.secrets[f"instances.{name}.redis_password"]
            (server,) = [s for s in plan.redis_servers if s.name == name]
            generated = redis_section.redis_conf(plan, server, fleet.compiled.secrets)
            # The generated TLS settings (port 0, the tls-port, protocols, no client
            # certificates), then the certificate and key written here.
            tls = generated_lines(generated, r"(port|tls-[a-z-]+) ")
            assert f"\nport 0\ntls-port {REDIS_BASE + index}\n" in f"\n{tls}", tls
            conf = where / f"{name}.conf"
            conf.write_text(
                f"bind {fleet.shared}\ndir {where}\n"
                'save ""\nappendonly no\nprotected-mode yes\n'
                f"{tls}tls-cert-file {cert}\ntls-key-file {key}\n"
                "user default off\n"
                f"user {name} on >{password} ~{name}:* &* +@all -@dangerous\n"
            )
            conf.chmod(0o600)
            servers.append(
                subprocess.Popen(
                    ["redis-server", str(conf)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for index in range(len(INSTANCES)):
            _wait_for_port(fleet.shared, REDIS_BASE + index)
        yield
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(10)


# -- HTTP test doubles ------------------------------------------------------------------------------


class Double(BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, object]] = {}

    def reply(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path in self.routes:
            self.reply(200, self.routes[self.path])
        else:
            self.reply(404, {"detail": "Not Found"})

    def log_message(self, format: str, *args: Any) -> None:
        pass


class OllamaDouble(Double):
    """Test double for Ollama's GET /api/tags: lists two pulled models, as Ollama names them."""

    routes: ClassVar[dict[str, object]] = {
        "/api/tags": {
            "models": [
                {"name": "qwen2.5:3b", "model": "qwen2.5:3b", "size": 1929912432},
                {"name": "nomic-embed-text:latest", "model": "nomic-embed-text:latest"},
            ]
        }
    }


class QdrantDouble(Double):
    """Test double for Qdrant's GET /collections: 401 without the right `api-key` header."""

    api_key: ClassVar[str] = ""
    routes: ClassVar[dict[str, object]] = {
        "/collections": {
            "result": {"collections": [{"name": "webui1_knowledge"}]},
            "status": "ok",
            "time": 1.2e-05,
        }
    }

    def do_GET(self) -> None:
        if self.headers.get("api-key") != self.api_key:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()


class OpenWebUIDouble(Double):
    """Test double for Open WebUI's GET /health and /health/db (both {"status": true})."""

    routes: ClassVar[dict[str, object]] = {
        "/health": {"status": True},
        "/health/db": {"status": True},
    }


class SilentServer:
    """Accepts connections and never answers: the case a timeout exists for."""

    def __init__(self, address: str, port: int) -> None:
        self.listener = socket.create_server((address, port))
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


def https_server(
    fleet: Fleet, port: int, handler: type[BaseHTTPRequestHandler], where: Path
) -> ThreadingHTTPServer:
    """A double on the shared address that speaks TLS with the shared host's certificate, as
    Qdrant and Ollama's terminator do."""
    server = ThreadingHTTPServer((fleet.shared, port), handler)
    cert, key = fleet.write_server_tls(where)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


@pytest.fixture(scope="module")
def doubles(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    qdrant = type(
        "BoundQdrantDouble", (QdrantDouble,), {"api_key": fleet.secrets["qdrant.api_key"]}
    )
    where = tmp_path_factory.mktemp("double-tls")
    servers = [
        https_server(fleet, 11434, OllamaDouble, where),
        https_server(fleet, 6333, qdrant, where),
    ]
    servers += [
        ThreadingHTTPServer((fleet.host(host), port), OpenWebUIDouble)
        for _, host, port in INSTANCES
    ]
    silent = SilentServer(fleet.host("web-b"), SILENT_PORT)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        silent.close()
        for s in servers:
            s.shutdown()
            s.server_close()


@pytest.fixture(scope="module")
def running(fleet: Fleet, postgres: None, redis: None, doubles: None) -> Fleet:
    return fleet


# -- running the command ----------------------------------------------------------------------------


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float

    def rows(self) -> list[dict[str, str]]:
        """The text table as dicts, cut at the header's column offsets."""
        lines = self.stdout.split("\n\n")[0].splitlines()
        header = lines[0]
        names = header.split()
        starts = [header.index(n) for n in names]
        ends = [*starts[1:], None]
        return [
            {n.lower(): line[s:e].strip() for n, s, e in zip(names, starts, ends, strict=True)}
            for line in lines[1:]
        ]

    def json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.stdout)
        return doc


def status(blueprint: Path, *args: str) -> Run:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "owuibuild.cli", "status", str(blueprint), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def states(rows: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {(r["service"], r["instance"] or "-"): r["state"] for r in rows}


ALL_ROWS = (
    {("ollama", "-"), ("qdrant", "-")}
    | {
        (service, name)
        for name, _, _ in INSTANCES
        for service in ("postgresql", "redis", "openwebui", "openwebui-db")
    }
    | {("certificate", "fleet CA"), ("certificate", "-")}
)


def test_a_healthy_fleet_is_all_ok(running: Fleet) -> None:
    run = status(running.blueprint)
    assert run.code == 0, run.stdout + run.stderr
    assert states(run.rows()) == dict.fromkeys(ALL_ROWS, "ok")
    assert run.stdout.rstrip().endswith(f"loopfleet: {len(ALL_ROWS)} of {len(ALL_ROWS)} probes ok")
    assert run.stderr == ""
    rows = {(r["service"], r["instance"]): r for r in run.rows()}
    assert rows[("postgresql", "webui3")]["detail"] == "webui3@webui3: SELECT 1"
    assert rows[("redis", "webui2")]["target"] == f"{running.shared}:{REDIS_BASE + 1}"
    assert rows[("openwebui", "webui3")]["target"] == f"{running.net}.31:3001"
    dialled = [r for r in run.rows() if r["instance"] != "fleet CA"]
    assert all(r["target"].startswith("127.77.") for r in dialled)
    # The shared host's certificate, as PostgreSQL serves it, with its end date.
    cert = rows[("certificate", "-")]
    assert cert["target"] == f"{running.shared}:5432" and cert["host"] == "ai-shared"
    assert cert["detail"].startswith(f"valid until {running.tls.hosts['ai-shared'].not_after}")
    assert rows[("certificate", "fleet CA")]["detail"].startswith(
        f"valid until {running.tls.ca.not_after}"
    )


def wrong(secret: str) -> str:
    return "wrong-" + secret[6:]


def assert_no_secret(fleet: Fleet, extra: dict[str, str], *runs: Run) -> None:
    for run in runs:
        for value in (*fleet.secrets.values(), *extra.values()):
            assert value not in run.stdout
            assert value not in run.stderr


def test_a_wrong_password_fails_exactly_that_row(running: Fleet) -> None:
    bad = {"instances.webui2.db_password": wrong(running.secrets["instances.webui2.db_password"])}
    path = running.variant("wrong-db", secrets=bad)
    text, js = status(path), status(path, "--format", "json")
    assert (text.code, js.code) == (1, 1)
    expected = dict.fromkeys(ALL_ROWS, "ok") | {("postgresql", "webui2"): "auth-failed"}
    assert states(text.rows()) == expected
    assert states(js.json()["checks"]) == expected
    detail = {(r["service"], r["instance"]): r["detail"] for r in text.rows()}
    assert detail[("postgresql", "webui2")].startswith("SQLSTATE 28P01: password authentication")
    assert_no_secret(running, bad, text, js)


def test_wrong_redis_and_qdrant_credentials_are_auth_failed(running: Fleet) -> None:
    bad = {
        "instances.webui3.redis_password": wrong(
            running.secrets["instances.webui3.redis_password"]
        ),
        "qdrant.api_key": wrong(running.secrets["qdrant.api_key"]),
    }
    run = status(running.variant("wrong-redis", secrets=bad), "--format", "json")
    assert run.code == 1
    assert states(run.json()["checks"]) == dict.fromkeys(ALL_ROWS, "ok") | {
        ("redis", "webui3"): "auth-failed",
        ("qdrant", "-"): "auth-failed",
    }
    detail = {(r["service"], r["instance"]): r["detail"] for r in run.json()["checks"]}
    assert detail[("redis", "webui3")].startswith("AUTH: WRONGPASS")
    assert_no_secret(running, bad, run)


def test_json_and_text_give_the_same_rows(running: Fleet) -> None:
    bad = {"instances.webui1.db_password": wrong(running.secrets["instances.webui1.db_password"])}
    path = running.variant("same-rows", secrets=bad, webui3=DEAD_PORT)
    text, js = status(path), status(path, "--format", "json")
    doc = js.json()
    assert doc["ok"] is False
    assert doc["fleet"] == "loopfleet"
    keys = ("service", "host", "target", "state", "detail")
    from_json = [
        {k: str(c[k]) for k in keys} | {"instance": c["instance"] or "-"} for c in doc["checks"]
    ]
    from_text = [{k: r[k] for k in (*keys, "instance")} for r in text.rows()]
    assert from_text == from_json
    assert all(r["latency"].endswith(" ms") for r in text.rows())
    assert sum(doc["summary"].values()) == len(doc["checks"])


def test_a_dead_port_is_refused(running: Fleet) -> None:
    run = status(running.variant("dead", webui3=DEAD_PORT), "--format", "json")
    assert run.code == 1
    assert states(run.json()["checks"]) == dict.fromkeys(ALL_ROWS, "ok") | {
        ("openwebui", "webui3"): "refused",
        ("openwebui-db", "webui3"): "refused",
    }


def test_a_server_that_never_answers_times_out(running: Fleet) -> None:
    run = status(
        running.variant("silent", webui3=SILENT_PORT), "--format", "json", "--timeout", "1"
    )
    assert run.code == 1
    checks = {(c["service"], c["instance"]): c for c in run.json()["checks"]}
    for service in ("openwebui", "openwebui-db"):
        assert checks[(service, "webui3")]["state"] == "timeout"
        assert 900 <= checks[(service, "webui3")]["latency_ms"] <= 2000
    assert sum(c["state"] == "ok" for c in checks.values()) == len(ALL_ROWS) - 2
    assert run.seconds < 6  # interpreter start-up plus one timeout, not one per probe


def test_a_missing_model_is_degraded_and_named(running: Fleet) -> None:
    path = running.variant("models", models=("qwen2.5:3b", "llama3.2:1b", "nomic-embed-text"))
    run = status(path)
    assert run.code == 1
    (ollama,) = [r for r in run.rows() if r["service"] == "ollama"]
    assert (ollama["state"], ollama["detail"]) == ("degraded", "missing models: llama3.2:1b")


def test_only_probes_what_is_asked(running: Fleet) -> None:
    run = status(running.blueprint, "--only", "postgresql", "--only", "webui1", "--format", "json")
    assert run.code == 0
    assert not any("hint" in c for c in run.json()["checks"])  # hints only where one helps
    assert set(states(run.json()["checks"])) == {
        ("postgresql", "webui1"),
        ("postgresql", "webui2"),
        ("postgresql", "webui3"),
        ("redis", "webui1"),
        ("openwebui", "webui1"),
        ("openwebui-db", "webui1"),
    }


def test_a_postgresql_that_does_not_listen_is_refused_with_the_guard_hint(fleet: Fleet) -> None:
    """Nothing listens on the PostgreSQL port (as when the major-version guard keeps
    postgresql@15-main from starting on a volume of another major): every database row is
    refused, and one hint names the unit, its guard and the runbook's upgrade section."""
    from owuibuild.hostconfig.postgres import GUARD_SCRIPT, UPGRADE_SECTION

    for n in range(120, 160):
        net = f"127.77.{n}"
        if net != fleet.net and _can_bind(f"{net}.24", 5432):
            break
    else:
        pytest.fail("no free 127.77.N.0/24 network for the stopped fleet")
    where = fleet.dir / "stopped"
    where.mkdir()
    path = where / "fleet.yml"
    path.write_text(blueprint_text(net))
    store.write(store.secrets_path(path), fleet.secrets, path.name)
    fleet.copy_tls(path)
    text, js = (
        status(path, "--only", "postgresql"),
        status(path, "--only", "postgresql", "--format", "json"),
    )
    assert (text.code, js.code) == (1, 1)
    checks = js.json()["checks"]
    assert {(c["service"], c["state"], c["detail"]) for c in checks} == {
        ("postgresql", "refused", "connection refused")
    }
    (hint,) = {c["hint"] for c in checks}
    for needle in ("postgresql@15-main.service", GUARD_SCRIPT, UPGRADE_SECTION, "ai-shared"):
        assert needle in hint
    hints = [line for line in text.stdout.splitlines() if line.startswith("hint: ")]
    rows = ", ".join(f"postgresql {name}" for name, _, _ in INSTANCES)
    assert hints == [f"hint: {hint} (rows: {rows})"]
    assert states(text.rows()) == {("postgresql", name): "refused" for name, _, _ in INSTANCES}


# -- the probes on their own, against the same servers ----------------------------------------------


def test_pg_login_refused_by_pg_hba(running: Fleet) -> None:
    outcome = pg_login(
        running.shared,
        5432,
        "stranger",
        "postgres",
        "stranger-password-000000000",
        TIMEOUT,
        tls=running.context(),
    )
    # No line admits 'stranger'; the last one, as generated, rejects all the rest.
    assert outcome.state is State.REFUSED
    assert outcome.detail.startswith("SQLSTATE 28000: pg_hba.conf rejects connection"), outcome
    assert outcome.detail.endswith("SSL encryption")  # it came over TLS


def test_pg_login_never_answers_a_cleartext_request(running: Fleet) -> None:
    outcome = pg_login(
        running.shared,
        5432,
        "legacy",
        "legacy",
        "legacy-password-0000000000",
        TIMEOUT,
        tls=running.context(),
    )
    assert outcome.state is State.AUTH_FAILED
    assert "cleartext" in outcome.detail


def test_pg_login_of_a_role_to_a_database_it_may_not_reach(running: Fleet) -> None:
    password = running.secrets["instances.webui1.db_password"]
    outcome = pg_login(
        running.shared, 5432, "webui1", "webui2", password, TIMEOUT, tls=running.context()
    )
    assert outcome.state is State.REFUSED  # pg_hba has no webui2/webui1 line


def test_pg_login_over_tls_with_the_fleet_ca(running: Fleet) -> None:
    password = running.secrets["instances.webui1.db_password"]
    for name in (None, running.shared, "ai-shared"):  # the certificate names both
        outcome = pg_login(
            running.shared,
            5432,
            "webui1",
            "webui1",
            password,
            TIMEOUT,
            tls=running.context(),
            server_name=name,
        )
        assert (outcome.state, outcome.detail) == (State.OK, "webui1@webui1: SELECT 1"), name


def test_pg_login_in_plain_text_is_refused(running: Fleet) -> None:
    """hostssl only: the right password without TLS matches no line that admits it."""
    password = running.secrets["instances.webui1.db_password"]
    outcome = pg_login(running.shared, 5432, "webui1", "webui1", password, TIMEOUT)
    assert outcome.state is State.REFUSED
    assert outcome.detail.startswith("SQLSTATE 28000: pg_hba.conf rejects connection"), outcome
    assert "no encryption" in outcome.detail


def another_fleets_ca() -> ssl.SSLContext:
    other = fleet_pki.issue_ca("otherfleet", datetime.datetime.now(datetime.UTC).date())
    return tls_context(ca_pem=other.cert)


@pytest.mark.parametrize("kind", ["postgresql", "redis"])
def test_a_certificate_the_client_does_not_trust_is_down(running: Fleet, kind: str) -> None:
    """Another fleet's CA, or a name the certificate does not carry: no login is tried."""
    if kind == "postgresql":
        password = running.secrets["instances.webui1.db_password"]

        def probe(**tls: Any) -> Any:
            return pg_login(running.shared, 5432, "webui1", "webui1", password, TIMEOUT, **tls)

    else:
        password = running.secrets["instances.webui1.redis_password"]

        def probe(**tls: Any) -> Any:
            return redis_ping(running.shared, REDIS_BASE, "webui1", password, TIMEOUT, **tls)

    stranger = probe(tls=another_fleets_ca())
    assert stranger.state is State.DOWN
    assert stranger.detail.startswith("TLS: certificate verify failed: "), stranger
    elsewhere = probe(tls=running.context(), server_name=f"{running.net}.25")
    assert elsewhere.state is State.DOWN
    assert "IP address mismatch" in elsewhere.detail, elsewhere
    for outcome in (stranger, elsewhere):
        assert password not in outcome.detail


def test_redis_ping_over_tls_with_the_fleet_ca(running: Fleet) -> None:
    for index, (name, _, _) in enumerate(INSTANCES):
        password = running.secrets[f"instances.{name}.redis_password"]
        outcome = redis_ping(
            running.shared, REDIS_BASE + index, name, password, TIMEOUT, tls=running.context()
        )
        assert outcome == Outcome(State.OK, f"user {name}: PONG")


def test_redis_has_no_plain_text_port(running: Fleet) -> None:
    password = running.secrets["instances.webui1.redis_password"]
    outcome = redis_ping(running.shared, REDIS_BASE, "webui1", password, TIMEOUT)
    assert outcome.state is State.DOWN  # the TLS port hangs up on plain text
    assert password not in outcome.detail


@pytest.mark.parametrize("tls", [False, True])
@pytest.mark.parametrize("kind", ["postgresql", "redis"])
def test_probes_time_out_on_a_silent_server(running: Fleet, kind: str, tls: bool) -> None:
    address = running.host("web-b")
    context = running.context() if tls else None
    start = time.monotonic()
    if kind == "postgresql":
        outcome = pg_login(address, SILENT_PORT, "webui1", "webui1", "x" * 30, 0.5, tls=context)
    else:
        outcome = redis_ping(address, SILENT_PORT, "webui1", "x" * 30, 0.5, tls=context)
    assert outcome.state is State.TIMEOUT
    assert 0.4 < time.monotonic() - start < 1.5


def certificate_rows(running: Fleet, pki: FleetPKI, today: datetime.date) -> dict[str, Outcome]:
    """The certificate checks against the running servers, on ``today``."""
    plan = running.compiled.plan
    assert plan is not None
    checks = certificate_checks(plan, pki, today, running.context())
    return {c.instance or c.host: guarded(lambda c=c: c.run(TIMEOUT)) for c in checks}


def test_a_certificate_near_its_end_is_degraded_and_an_expired_one_down(running: Fleet) -> None:
    end = running.tls.hosts["ai-shared"].not_after
    soon = certificate_rows(running, running.tls, end - datetime.timedelta(days=13))
    assert soon["ai-shared"].state is State.DEGRADED, soon
    assert soon["ai-shared"].detail == (
        f"expires on {end}, in 13 days: render (it issues a new one), then replace ai-shared"
    )
    assert soon["fleet CA"].state is State.OK
    fine = certificate_rows(running, running.tls, end - datetime.timedelta(days=14))
    assert fine["ai-shared"].state is State.OK, fine
    late = certificate_rows(running, running.tls, end + datetime.timedelta(days=1))
    assert late["ai-shared"].state is State.DOWN and "expired on" in late["ai-shared"].detail


def test_a_host_serving_another_certificate_than_the_ca_file_is_degraded(running: Fleet) -> None:
    """After a render renewed a certificate, the host serves the old one until replaced."""
    today = datetime.date.today()
    renewed = fleet_pki.issue_host(running.tls.ca, "ai-shared", running.shared, today)
    pki = FleetPKI(running.tls.ca, {**running.tls.hosts, "ai-shared": renewed})
    rows = certificate_rows(running, pki, today)
    assert rows["ai-shared"].state is State.DEGRADED
    assert "serves another certificate than the CA file holds" in rows["ai-shared"].detail
