"""Monitoring, live: the GENERATED exporters, Prometheus, its rules, the blackbox exporter and
Alertmanager, as Debian 12 packages them, scraping a real PostgreSQL 15 and two real
redis-servers, all configured from one render of a blueprint with monitoring.

Everything runs in one network namespace of its own (unshare -n): its loopback alone, with
the blueprint's private addresses (the shared host's and web-a's) added to it, no other
interface and no default route. Every daemon listens on the address and port the render
gives it; the test process reaches in from one thread that joined the namespace
(test_ollama_tls.Namespace), psql and redis-cli run there through nsenter.

What is real: PostgreSQL (the generated postgresql.conf and pg_hba.conf, init.sql applied, so
the monitor role exists), both Redis servers (the generated redis.conf, ACL users included),
the node exporter (one per host, each with its host's certificate), the PostgreSQL exporter,
the Redis exporter, Prometheus (the generated prometheus.yml and rules.yml), the blackbox
exporter and Alertmanager, each started with its generated unit's ExecStart, EnvironmentFile
and User/Group (through setpriv; systemd's sandboxing is not reproduced). Only paths change:
the generated files of each host land in a temp root, and every path under /etc/owuibuild or
/var/lib/owuibuild in them and in the command lines is rewritten into that root (each rewrite
is asserted to have been used, and no such path left). Data directories and sockets of
PostgreSQL and Redis are temp dirs too, appended after the generated settings.

TEST DOUBLES (not the real servers):
- Qdrant: tests/doubles/qdrant_double.py, with the generated /etc/qdrant/config.yaml (its
  address, port, API key and jwt_rbac) and TLS with the shared host's certificate; its
  /metrics takes the read-only JWT Prometheus is given. It checks our scrape job, not Qdrant.
- The instances' /health: a tiny HTTP server in the namespace on each instance's address and
  port, answering 200. It stands in for Open WebUI so that the blackbox probes of the
  instances have something to reach; nothing is asserted about it.
- The alert webhook: a tiny HTTP server in the namespace at the blueprint's webhook URL, that
  records what Alertmanager POSTs.
Ollama is NOT run: its blackbox probe fails, and nothing is asserted on it (its ProbeFailed
alert may fire; only TargetDown is checked).

The tests share one running fleet and run in file order: after the first has seen every
target up, the second stops Redis server "beta"; its TargetDown alert (for: 2m) is awaited by
the last tests, while the ones in between check the monitor's rights and the exporters' TLS.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import Rendered, compile_path, require_tool, unavailable
from doubles import qdrant_double
from owuibuild import alerts, probes, seed_manifest
from owuibuild.hostconfig import exporters, postgres, prometheus, qdrant, redis
from owuibuild.plan import (
    DATA_MOUNT,
    MONITOR_REDIS_USER,
    MONITOR_ROLE,
    POSTGRES_PORT,
    SERVER_CERT,
    SERVER_KEY,
)
from test_ollama_tls import Namespace, NamespacedConnection, exchange, unit_settings
from test_postgres import PG_BIN, Server, _require_postgres

pytestmark = pytest.mark.services

SHARED = "10.9.0.10"
WEB_A = "10.9.0.20"
WEBHOOK_PORT = 9999
MAX_CONNECTIONS = 60
MAXMEMORY_MB = 64
BLUEPRINT = f"""
apiVersion: owuibuild/v1
name: montest
admin:
  user: ops
  ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwuibuildExampleKeyReplaceWithYourOwn00000 ops@x"]
  allow_from: [10.9.0.0/24]
network: {{cidr: 10.9.0.0/24, gateway: 10.9.0.1, dns: [10.9.0.1]}}
shared:
  host: {{name: ai-shared, address: {SHARED}, data_volume: {{label: owui-data}}}}
  postgres: {{max_connections: {MAX_CONNECTIONS}}}
  redis: {{mode: per-instance, maxmemory_mb: {MAXMEMORY_MB}}}
  backups: {{enabled: true}}
hosts:
  - {{name: web-a, address: {WEB_A}, data_volume: {{label: owui-data}}}}
instances:
  - {{name: alpha, host: web-a, port: 3000}}
  - {{name: beta, host: web-a, port: 3001}}
monitoring:
  alerts: {{webhook: "http://{SHARED}:{WEBHOOK_PORT}/hook"}}
"""
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
START_TIMEOUT = 60.0
# TargetDown waits 2m (its `for`) after the first failed scrape (30s interval) and the next
# evaluation (30s); Alertmanager then waits its group_wait (30s). Generous bounds.
ALERT_TIMEOUT = 240.0
WEBHOOK_TIMEOUT = 120.0
# The generated paths that move into each host's temp root.
RELOCATED = ("/etc/owuibuild", DATA_MOUNT, exporters.TEXTFILE_DIR)
UNITS = {
    "node": exporters.NODE,
    "postgres": exporters.POSTGRES,
    "redis": exporters.REDIS,
    "prometheus": prometheus.PROMETHEUS,
    "blackbox": prometheus.BLACKBOX,
    "alertmanager": prometheus.ALERTMANAGER,
}


# -- the render, relocated ----------------------------------------------------------------------


@dataclass
class HostFiles:
    """One host's generated files (its cloud-config's write_files), staged under ``root``
    with every /etc/owuibuild and /var/lib/owuibuild path moved there."""

    name: str
    root: Path
    files: dict[str, dict[str, Any]]
    used: set[str] = field(default_factory=set)

    def where(self, path: str) -> Path:
        return Path(self.relocate(path))

    def relocate(self, text: str) -> str:
        for prefix in RELOCATED:
            if prefix in text:
                self.used.add(prefix)
                text = text.replace(prefix, str(self.root / prefix.strip("/").replace("/", "-")))
        assert not any(p in text for p in RELOCATED), text
        return text

    def content(self, path: str) -> str:
        entry = self.files[path]
        assert "encoding" not in entry, path
        text: str = entry["content"]
        return text

    def stage(self, path: str, mode: int | None = None, owner: str | None = None) -> Path:
        """The generated file at its relocated path, with its generated owner and mode."""
        entry = self.files[path]
        target = self.where(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        for parent in target.relative_to(self.root).parents:
            os.chmod(self.root / parent, 0o755)
        target.write_text(self.relocate(self.content(path)))
        user, _, group = (owner or entry.get("owner", "root:root")).partition(":")
        shutil.chown(target, user, group)
        os.chmod(target, mode if mode is not None else int(entry.get("permissions", "0644"), 8))
        return target

    def command(self, unit_path: str) -> tuple[list[str], dict[str, str], str, str]:
        """A unit's ExecStart (relocated), the environment from its EnvironmentFile, its
        User and Group."""
        settings = unit_settings(self.content(unit_path))
        (exec_start,) = settings["ExecStart"]
        argv = shlex.split(self.relocate(exec_start))
        env: dict[str, str] = {}
        for env_file in settings.get("EnvironmentFile", []):
            for line in self.content(env_file).splitlines():
                name, _, value = line.partition("=")
                env[name] = self.relocate(shlex.split(value)[0])
        (user,), (group,) = settings["User"], settings["Group"]
        return argv, env, user, group


def host_files(rendered: Rendered, host: str, root: Path) -> HostFiles:
    doc = rendered.user_data(host)
    files = {f["path"]: f for f in doc["write_files"]}
    return HostFiles(host, root / host, files)


# -- the namespace and its processes --------------------------------------------------------------


class Daemons:
    """The processes this test starts in the namespace, each in a session of its own."""

    def __init__(self, ns_pid: int, logs: Path) -> None:
        self.ns_pid = ns_pid
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def run(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, user: str = "root"
    ) -> subprocess.Popen[bytes]:
        command = ["nsenter", f"--net=/proc/{self.ns_pid}/ns/net", "--"]
        if user != "root":
            group = pwd.getpwnam(user).pw_gid
            command += ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", "--"]
        command += ["env", "-i", f"PATH={PATH}", *(f"{k}={v}" for k, v in (env or {}).items())]
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [*command, *argv], stdout=log, stderr=subprocess.STDOUT, cwd="/",
                start_new_session=True,
            )  # fmt: skip
        self.procs[name] = proc
        return proc

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(10)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):  # the clients before their servers
            self.stop(name)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def tails(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.logs.glob("*.log"))
        )

    def in_ns(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """A client command in the namespace, as root."""
        return subprocess.run(
            ["nsenter", f"--net=/proc/{self.ns_pid}/ns/net", "--", *argv],
            capture_output=True, text=True, timeout=60, cwd="/", **kwargs,
        )  # fmt: skip


def wait_for(what: str, ready: Callable[[], bool], daemons: Daemons, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ssl.SSLError, http.client.HTTPException):
            if ready():
                return
        for name, proc in daemons.procs.items():
            assert proc.poll() is None, f"{name} exited while waiting for {what}\n{daemons.tails()}"
        assert time.monotonic() < deadline, f"{what}: timed out\n{daemons.tails()}"
        time.sleep(0.5)


class Recorder(BaseHTTPRequestHandler):
    """A tiny HTTP server: 200 to every GET (an instance's /health), and keeps every POST's
    JSON body (the alert webhook)."""

    posts: list[Any]

    def do_GET(self) -> None:
        self.answer()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.posts.append(json.loads(self.rfile.read(length) or b"null"))
        self.answer()

    def answer(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, fmt: str, *args: object) -> None:
        pass


# -- the fleet ----------------------------------------------------------------------------------


@dataclass
class Fleet:
    rendered: Rendered
    ns: Namespace
    daemons: Daemons
    shared: HostFiles
    ca_file: Path
    pg: Server
    webhook: list[Any]
    redis_ports: dict[str, int]  # server name -> port
    web_a: HostFiles | None = None

    @property
    def plan(self) -> Any:
        return self.rendered.plan

    def secret(self, name: str) -> str:
        value: str = self.rendered.secrets[name]  # type: ignore[index]
        return value

    def context(self) -> ssl.SSLContext:
        return probes.tls_context(self.shared.content(exporters.FLEET_CA))

    def https(self, address: str, port: int, path: str) -> tuple[int, bytes]:
        """GET over HTTPS in the namespace, verified with the fleet CA for ``address``."""

        def tls_socket() -> socket.socket:
            raw = self.ns.dial(address, port, 10)
            try:
                return self.context().wrap_socket(raw, server_hostname=address)
            except BaseException:
                raw.close()
                raise

        return exchange(NamespacedConnection(address, port, tls_socket, 30), "GET", path)

    def plain_http(self, address: str, port: int, path: str) -> tuple[int, bytes]:
        conn = NamespacedConnection(address, port, lambda: self.ns.dial(address, port, 10), 10)
        return exchange(conn, "GET", path)

    def api(self, path: str, **params: str) -> Any:
        """Prometheus's HTTP API, as an admin reaches it: HTTPS on the shared host's address."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, data = self.https(SHARED, 9090, f"/api/v1/{path}{query}")
        assert status == 200, data
        doc = json.loads(data)
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def psql(
        self, user: str, password: str, database: str, sql: str
    ) -> subprocess.CompletedProcess[str]:
        conninfo = (
            f"host={SHARED} port={POSTGRES_PORT} user={user} dbname={database} "
            f"sslmode=verify-full sslrootcert={self.ca_file} connect_timeout=10"
        )
        return self.daemons.in_ns(
            [str(PG_BIN / "psql"), "--no-psqlrc", "-At", "-c", sql, conninfo],
            env={"PATH": PATH, "PGPASSWORD": password},
        )

    def redis_cli(self, server: str, *args: str, user: str, password: str) -> str:
        result = self.daemons.in_ns(
            ["redis-cli", "-h", SHARED, "-p", str(self.redis_ports[server]), "--tls",
             "--cacert", str(self.ca_file), "--user", user, "--pass", password,
             "--no-auth-warning", *args],
        )  # fmt: skip
        return (result.stdout + result.stderr).strip()


def start_postgres(fleet_root: Path, rendered: Rendered, daemons: Daemons) -> Server:
    """The generated postgresql.conf and pg_hba.conf on a temp cluster; only paths appended."""
    plan: Any = rendered.plan
    root = fleet_root / "postgres"
    root.mkdir()
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), f"--pgdata={data}",
         "--encoding=UTF8", "--locale=C.UTF-8", "--auth-local=peer", "--username=postgres",
         "--no-sync"],
        check=True, capture_output=True, cwd="/",
    )  # fmt: skip
    overrides = (
        "\n# test overrides: this temp cluster's paths\n"
        f"data_directory = '{data}'\nhba_file = '{root}/pg_hba.conf'\n"
        f"ident_file = '{root}/pg_ident.conf'\nexternal_pid_file = '{root}/pg.pid'\n"
        f"unix_socket_directories = '{root}'\nfsync = off\n"
        f"ssl_cert_file = '{root}/server.crt'\nssl_key_file = '{root}/server.key'\n"
    )
    issued = rendered.secrets.tls.hosts["ai-shared"]  # type: ignore[attr-defined]
    for name, text in (
        ("postgresql.conf", postgres.postgresql_conf(plan) + overrides),
        ("pg_hba.conf", postgres.pg_hba_conf(plan)),
        ("pg_ident.conf", ""),
        ("server.crt", issued.cert),
        ("server.key", issued.key),
    ):
        (root / name).write_text(text)
        shutil.chown(root / name, "postgres", "postgres")
    os.chmod(root / "server.key", 0o600)
    daemons.run(
        "postgresql",
        [str(PG_BIN / "postgres"), "-D", str(data), "-c", f"config_file={root}/postgresql.conf"],
        user="postgres",
    )
    srv = Server(root, POSTGRES_PORT, rendered)
    wait_for("PostgreSQL", lambda: (root / f".s.PGSQL.{POSTGRES_PORT}").exists(), daemons, 30)
    wait_for("PostgreSQL", lambda: srv.superuser("SELECT 1") == "1", daemons, 30)
    result = srv.apply_sql(postgres.init_sql(plan, rendered.secrets))  # type: ignore[arg-type]
    assert result.returncode == 0, result.stderr
    return srv


def start_redis(fleet_root: Path, rendered: Rendered, daemons: Daemons) -> dict[str, int]:
    """Each generated redis.conf; dir, pidfile, supervision and the key's path overridden."""
    plan: Any = rendered.plan
    issued = rendered.secrets.tls.hosts["ai-shared"]  # type: ignore[attr-defined]
    ports = {}
    for server in plan.redis_servers:
        data = fleet_root / f"redis-{server.name}"
        data.mkdir()
        (data / "server.key").write_text(issued.key)
        (data / "server.crt").write_text(issued.cert)
        os.chmod(data / "server.key", 0o600)
        conf = redis.redis_conf(plan, server, rendered.secrets)  # type: ignore[arg-type]
        conf = conf.replace(f'dir "{redis.data_dir(server)}"', f'dir "{data}"')
        conf += (
            f"\n# test overrides\npidfile {data}/redis.pid\nsupervised no\n"
            f"tls-cert-file {data}/server.crt\ntls-key-file {data}/server.key\n"
        )
        (data / "redis.conf").write_text(conf)
        daemons.run(f"redis-{server.name}", ["redis-server", str(data / "redis.conf")])
        ports[server.name] = server.port
    return ports


def serve_in_namespace(
    ns: Namespace, address: str, port: int, posts: list[Any]
) -> ThreadingHTTPServer:
    handler = type("Handler", (Recorder,), {"posts": posts})
    server = ns.thread.submit(ThreadingHTTPServer, (address, port), handler).result()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_tool("unshare", "nsenter", "setpriv", "ip", "redis-server", "redis-cli")
    for unit in UNITS.values():
        require_tool(unit.binary)
    _require_postgres()
    try:
        pwd.getpwnam("prometheus")
    except KeyError:
        unavailable("no user prometheus: the prometheus package makes it (make system-deps)")
    path = tmp_path_factory.mktemp("bp") / "montest.yml"
    path.write_text(BLUEPRINT)
    rendered = compile_path(path)
    plan: Any = rendered.plan
    # Readable by the daemons' own users (pytest's temp dirs are not).
    root = Path(tempfile.mkdtemp(prefix="owuibuild-monitoring-"))
    os.chmod(root, 0o755)
    logs = root / "logs"
    logs.mkdir()
    ready = root / "netns-ready"
    script = "\n".join(
        [
            "set -eu",
            "ip link set lo up",
            f"ip addr add {SHARED}/32 dev lo",
            f"ip addr add {WEB_A}/32 dev lo",
            f"touch {shlex.quote(str(ready))}",
            "exec sleep infinity",
        ]
    )
    holder = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", script], env={"PATH": PATH}, cwd="/",
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    daemons = Daemons(holder.pid, logs)
    ns: Namespace | None = None
    servers: list[ThreadingHTTPServer] = []
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "no namespace"
            time.sleep(0.05)
        ns = Namespace(holder.pid)
        shared = host_files(rendered, "ai-shared", root)
        web_a = host_files(rendered, "web-a", root)
        for host in (shared, web_a):
            for path_ in (exporters.FLEET_CA, SERVER_CERT, SERVER_KEY, exporters.WEB_CONFIG):
                host.stage(path_)
            # What key_commands() do: the key's copy that only prometheus reads.
            key = host.where(exporters.KEY)
            key.parent.mkdir(parents=True, exist_ok=True)
            shutil.chown(key.parent, "root", "prometheus")
            os.chmod(key.parent, 0o750)
            shutil.copy(host.where(SERVER_KEY), key)
            shutil.chown(key, "prometheus", "prometheus")
            os.chmod(key, 0o600)
        ca_file = shared.where(exporters.FLEET_CA)

        pg = start_postgres(root, rendered, daemons)
        redis_ports = start_redis(root, rendered, daemons)

        # Qdrant (TEST DOUBLE) with the generated config; TLS files and storage are temp paths.
        qdrant_conf = root / "qdrant.yaml"
        qdrant_conf.write_text(shared.content(qdrant.CONFIG))
        daemons.run(
            "qdrant-double",
            [sys.executable, str(Path(qdrant_double.__file__)), "--config-path", str(qdrant_conf)],
            env={
                "QDRANT__TLS__CERT": str(shared.where(SERVER_CERT)),
                "QDRANT__TLS__KEY": str(shared.where(SERVER_KEY)),
                "QDRANT__STORAGE__STORAGE_PATH": str(root / "qdrant-storage"),
            },
        )
        # The instances' /health (TEST DOUBLE) and the alert webhook.
        webhook: list[Any] = []
        for inst in plan.instances:
            servers.append(serve_in_namespace(ns, str(inst.host.address), inst.port, []))
        servers.append(serve_in_namespace(ns, SHARED, WEBHOOK_PORT, webhook))

        # The exporters, Prometheus, the blackbox exporter and Alertmanager, as generated.
        shared.stage(exporters.POSTGRES_ENV)
        shared.stage(exporters.REDIS_ENV)
        for path_ in (prometheus.CONFIG, prometheus.RULES, prometheus.BLACKBOX_CONFIG,
                      prometheus.ALERTMANAGER_CONFIG, prometheus.QDRANT_TOKEN):  # fmt: skip
            shared.stage(path_)
        for state in (prometheus.PROMETHEUS_DATA, prometheus.ALERTMANAGER_DATA):
            target = shared.where(state)
            target.mkdir(parents=True)
            shutil.chown(target, "prometheus", "prometheus")
            os.chmod(target, 0o750)
        for host in (shared, web_a):
            # The seed generation each host's first boot wrote, for the textfile collector.
            host.stage(exporters.SEED_METRICS)
            argv, env, user, _ = host.command(exporters.NODE.unit_path)
            daemons.run(f"node-{host.name}", argv, env, user)
        for name in ("postgres", "redis", "prometheus", "blackbox", "alertmanager"):
            argv, env, user, _ = shared.command(UNITS[name].unit_path)
            daemons.run(name, argv, env, user)
        # Each rewrite was used: web-a has no state of its own under /var/lib/owuibuild.
        assert shared.used == set(RELOCATED), shared.used
        assert web_a.used == {"/etc/owuibuild", exporters.TEXTFILE_DIR}, web_a.used

        the_fleet = Fleet(
            rendered, ns, daemons, shared, ca_file, pg, webhook, redis_ports, web_a=web_a
        )
        wait_for(
            "Prometheus",
            lambda: the_fleet.https(SHARED, 9090, "/-/ready")[0] == 200,
            daemons,
            START_TIMEOUT,
        )
        yield the_fleet
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        daemons.stop_all()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(10)
        if ns is not None:
            ns.close()
        shutil.rmtree(root, ignore_errors=True)


# -- the tests ------------------------------------------------------------------------------------

SCRAPED_JOBS = ("node", "postgres", "redis", "qdrant", "prometheus")


def value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


def by_server(samples: list[dict[str, Any]]) -> dict[str, float]:
    return {s["metric"]["server"]: value(s) for s in samples}


def test_every_target_is_up_and_real_metrics_arrive(fleet: Fleet) -> None:
    plan = fleet.plan
    expected = {
        "node": 2,
        "postgres": 1,
        "redis": len(plan.redis_servers),
        "qdrant": 1,
        "prometheus": 1,
    }
    assert expected["redis"] == 2

    def all_scraped() -> bool:
        targets = fleet.api("targets", state="active")["activeTargets"]
        return all(t["health"] == "up" for t in targets if t["labels"]["job"] in SCRAPED_JOBS) and (
            len([t for t in targets if t["labels"]["job"] in SCRAPED_JOBS])
            == sum(expected.values())
        )

    with contextlib.suppress(AssertionError):
        wait_for("every target up", all_scraped, fleet.daemons, 75)
    targets = fleet.api("targets", state="active")["activeTargets"]
    health = {
        (t["labels"]["job"], t["labels"]["instance"]): (t["health"], t["lastError"])
        for t in targets
        if t["labels"]["job"] in SCRAPED_JOBS
    }
    assert all(h == "up" for h, _ in health.values()), (health, fleet.daemons.tails())
    for job, count in expected.items():
        up = fleet.query(f'up{{job="{job}"}}')
        assert len(up) == count and all(value(s) == 1 for s in up), (job, up)

    (pg_up,) = fleet.query("pg_up")
    assert value(pg_up) == 1
    assert by_server(fleet.query("redis_up")) == {s.name: 1 for s in plan.redis_servers}
    (max_connections,) = fleet.query("pg_settings_max_connections")
    assert value(max_connections) == MAX_CONNECTIONS
    assert by_server(fleet.query("redis_memory_max_bytes")) == {
        s.name: MAXMEMORY_MB * 1024 * 1024 for s in plan.redis_servers
    }
    (collections,) = fleet.query('collections_total{job="qdrant"}')
    assert value(collections) >= 0


def test_blackbox_probes_reach_the_instances_and_verify_every_host_certificate(
    fleet: Fleet,
) -> None:
    """The instances' /health (the TEST DOUBLE) and each node exporter's certificate, checked
    against the fleet CA; Ollama does not run here, so its probe is left out."""

    def probed() -> list[tuple[str, str, float]]:
        return sorted(
            (s["metric"]["probe"], s["metric"]["host"], value(s))
            for s in fleet.query('probe_success{probe=~"openwebui|certificate"}')
        )

    # One series per instance (both live on web-a) and one per host's certificate: keyed by
    # (probe, host) alone, the two instances' series would collapse into one.
    expected = sorted(
        [("openwebui", inst.host.name, 1.0) for inst in fleet.plan.instances]
        + [("certificate", host, 1.0) for host in ("ai-shared", "web-a")]
    )
    with contextlib.suppress(AssertionError):
        wait_for("the probes", lambda: probed() == expected, fleet.daemons, 60)
    assert probed() == expected, fleet.query('probe_success{probe=~"openwebui|certificate"}')


def test_the_rules_evaluate_and_their_ratios_match_series(fleet: Fleet) -> None:
    """Every generated rule evaluates without error, and the ratio rules, without their
    threshold, find one series per PostgreSQL and per Redis server: a label mismatch would
    make them match nothing, silently."""

    def health() -> dict[str, tuple[str, str]]:
        groups = fleet.api("rules")["groups"]
        return {
            r["name"]: (r["health"], r.get("lastError", "")) for g in groups for r in g["rules"]
        }

    def all_evaluated() -> bool:
        return all(state != "unknown" for state, _ in health().values())

    with contextlib.suppress(AssertionError):
        wait_for("every rule evaluated", all_evaluated, fleet.daemons, 45)
    evaluated = health()
    assert set(evaluated) == {r["alert"] for r in alerts.rules(fleet.plan)}
    assert all(health == ("ok", "") for health in evaluated.values()), evaluated
    for name, count in (("PostgresConnections", 1), ("RedisMemory", len(fleet.plan.redis_servers))):
        (expr,) = [r["expr"] for r in alerts.rules(fleet.plan) if r["alert"] == name]
        ratio = fleet.query(expr.split(" > ")[0])
        assert len(ratio) == count and all(0 < value(s) < 1 for s in ratio), (name, ratio)


def test_the_exporters_log_no_error(fleet: Fleet) -> None:
    """Every scrape so far ran each command and query it needs: a refused one is logged."""
    for name in ("postgres", "redis"):
        errors = [line for line in fleet.daemons.log(name).splitlines() if "level=error" in line]
        assert not errors, (name, errors)


def test_stopping_one_redis_makes_its_redis_up_zero(fleet: Fleet) -> None:
    fleet.daemons.stop("redis-beta")

    def beta_down() -> bool:
        return by_server(fleet.query("redis_up")).get("beta") == 0

    wait_for("redis_up of beta to be 0", beta_down, fleet.daemons, 75)
    assert by_server(fleet.query("redis_up"))["alpha"] == 1
    # The exporter still answers: the scrape is up, its server is not.
    assert {value(s) for s in fleet.query('up{job="redis"}')} == {1}


def test_the_monitor_role_reads_statistics_and_no_table(fleet: Fleet) -> None:
    password = fleet.secret(fleet.plan.monitoring.postgres_password.name)
    fleet.pg.superuser("CREATE TABLE IF NOT EXISTS canary (secret text)")
    for inst in fleet.plan.instances:
        refused = fleet.psql(MONITOR_ROLE, password, inst.db_name, "SELECT 1")
        assert refused.returncode != 0, refused.stdout
        assert "pg_hba.conf" in refused.stderr or "permission denied" in refused.stderr
    allowed = fleet.psql(
        MONITOR_ROLE,
        password,
        "postgres",
        "SELECT pg_has_role('pg_monitor', 'member'), pg_has_role('pg_read_all_data', 'member'),"
        # Another role's session in full (pg_read_all_stats, part of pg_monitor).
        " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'checkpointer'"
        "  AND query IS DISTINCT FROM '<insufficient privilege>')",
    )
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.strip() == "t|f|1"
    for sql in ("SELECT * FROM canary", "SELECT * FROM pg_authid", "CREATE TABLE mine (x int)"):
        result = fleet.psql(MONITOR_ROLE, password, "postgres", sql)
        assert result.returncode != 0 and "permission denied" in result.stderr, (sql, result)


def test_the_redis_monitor_user_reads_info_and_no_key(fleet: Fleet) -> None:
    password = fleet.secret(fleet.plan.monitoring.redis_password.name)

    def cli(*args: str) -> str:
        return fleet.redis_cli("alpha", *args, user=MONITOR_REDIS_USER, password=password)

    assert "redis_version:" in cli("INFO", "server")
    for command in (
        ("GET", "alpha:k"),
        ("SET", "alpha:k", "v"),
        ("KEYS", "*"),
        ("CONFIG", "SET", "maxmemory", "1"),
        ("FLUSHALL",),
    ):
        assert "NOPERM" in cli(*command), command


@pytest.mark.parametrize(
    ("name", "port"),
    [("postgres", exporters.POSTGRES_EXPORTER_PORT), ("redis", exporters.REDIS_EXPORTER_PORT)],
)
def test_exporters_serve_https_only_with_the_host_certificate(
    fleet: Fleet, name: str, port: int
) -> None:
    status, body = fleet.https(SHARED, port, "/metrics")
    assert status == 200 and b"# TYPE" in body
    plain = fleet.plain_http(SHARED, port, "/metrics")
    assert plain[0] == 400, plain  # Go's answer to plain HTTP on a TLS port
    other = ssl.create_default_context()  # trusts the system's CAs, not the fleet's
    raw = fleet.ns.dial(SHARED, port, 10)
    with pytest.raises(ssl.SSLCertVerificationError):
        other.wrap_socket(raw, server_hostname=SHARED)
    raw.close()


def firing(fleet: Fleet) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = fleet.api("alerts")["alerts"]
    return [
        a for a in alerts if a["labels"]["alertname"] == "TargetDown" and a["state"] == "firing"
    ]


def test_target_down_fires_for_the_stopped_redis_alone(fleet: Fleet) -> None:
    wait_for("TargetDown to fire", lambda: bool(firing(fleet)), fleet.daemons, ALERT_TIMEOUT)
    (alert,) = firing(fleet)
    assert alert["labels"]["server"] == "beta", alert
    assert alert["labels"]["job"] == "redis"
    assert by_server(fleet.query("redis_up"))["alpha"] == 1
    pending = [a for a in fleet.api("alerts")["alerts"] if a["labels"]["alertname"] == "TargetDown"]
    assert [a["labels"]["server"] for a in pending] == ["beta"], pending


def test_alertmanager_posts_target_down_to_the_webhook(fleet: Fleet) -> None:
    def posted() -> list[dict[str, Any]]:
        return [
            a
            for doc in fleet.webhook
            for a in doc["alerts"]
            if a["labels"]["alertname"] == "TargetDown" and a["status"] == "firing"
        ]

    wait_for("the webhook POST", lambda: bool(posted()), fleet.daemons, WEBHOOK_TIMEOUT)
    assert {a["labels"].get("server") for a in posted()} == {"beta"}


def test_status_shows_the_firing_alert(fleet: Fleet) -> None:
    """`owuibuild status --only alerts`, run where an admin stands (in the namespace: the
    blueprint's addresses exist nowhere else), asks the real Prometheus and names the alert."""
    wait_for("TargetDown to fire", lambda: bool(firing(fleet)), fleet.daemons, ALERT_TIMEOUT)
    owuibuild = Path(sys.executable).with_name("owuibuild")
    result = fleet.daemons.in_ns(
        [str(owuibuild), "status", str(fleet.rendered.blueprint), "--only", "alerts",
         "--format", "json"],
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    (row,) = json.loads(result.stdout)["checks"]
    assert (row["service"], row["state"]) == ("alerts", "down"), row
    # Ollama does not run here, so its probe's ProbeFailed fires too.
    assert "TargetDown (beta, rediss://" in row["detail"], row
    assert "TargetDown (alpha" not in row["detail"], row
    values = [v for v in fleet.rendered.secrets.values.values() if len(v) >= 8]  # type: ignore[attr-defined]
    assert not any(v in result.stdout + result.stderr for v in values)


def test_status_shows_the_seed_generation_each_host_runs(fleet: Fleet) -> None:
    """`owuibuild status --only seed` reads each host's generation from its real node exporter
    (the textfile its first boot wrote): both run the render's; then web-a's textfile says an
    older one, as on a host that has not taken its new seed, and its row says so."""
    owuibuild = Path(sys.executable).with_name("owuibuild")
    argv = [str(owuibuild), "status", str(fleet.rendered.blueprint), "--only", "seed"]
    argv += ["--format", "json"]

    def rows() -> tuple[int, dict[str, dict[str, Any]]]:
        result = fleet.daemons.in_ns(argv)
        checks = json.loads(result.stdout)["checks"]
        return result.returncode, {row["host"]: row for row in checks}

    code, found = rows()
    assert code == 0, found
    assert {h: (r["state"], r["detail"]) for h, r in found.items()} == {
        "ai-shared": ("ok", "generation 1"),
        "web-a": ("ok", "generation 1"),
    }
    assert fleet.web_a is not None
    metric = fleet.web_a.where(exporters.SEED_METRICS)
    metric.write_text(seed_manifest.generation_metric(0))
    code, found = rows()
    assert code == 1, found
    assert found["web-a"]["state"] == "degraded", found
    assert "runs generation 0, the render is at 1" in found["web-a"]["detail"], found
    assert found["ai-shared"]["state"] == "ok", found
