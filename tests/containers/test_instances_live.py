"""Containers tier: two Open WebUI instances from generated bundles, against real servers.

A test blueprint puts its fleet on 10.213.7.0/24, a subnet that exists only on a Docker network
this test creates. On it:

- a "shared host" container at the shared address runs REAL PostgreSQL 15 and one REAL
  redis-server per instance, configured from the shared host's generated user-data (pg_hba.conf,
  the init SQL, each redis-<name>.conf; only paths that belong to a machine, such as the data
  directory and pid file, are given on the command line);
- the same container runs TEST DOUBLES of Ollama and Qdrant: a tiny HTTP server that answers
  the model list and version (Ollama) and every request with an empty success (Qdrant). They
  are NOT Ollama or Qdrant, whose servers cannot be had here. The Qdrant double, like Qdrant
  with an api_key, answers 401 unless the request's `api-key` header is the fleet's generated
  key, and logs each request with its source and whether the key matched; Ollama has no API
  key (the firewall is its boundary), so its double only logs;
- each instance runs from its generated compose.yaml and env file, unmodified, with the Open
  WebUI image built locally and tagged with exactly the reference the generator writes. A
  compose override only puts the container on the test network at its host's address (so the
  generated pg_hba and Redis rules apply as written), publishes the port on 127.0.0.1 instead of
  an address this machine does not have, and points the data volume at a temporary directory.

Nothing here dials the fleet's addresses from this machine: probes go to 127.0.0.1 ports or run
inside the shared container.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Rendered, compile_path, require_tool, unavailable
from infra.docker_engine import (
    docker_unavailable_reason,
    engine_major,
    ensure_base_image,
    ensure_openwebui_image,
)
from owuibuild import bundle
from owuibuild.hostconfig import docker as docker_section
from owuibuild.plan import FLEET_CA, SERVER_CERT, SERVER_KEY, InstancePlan, Plan
from owuibuild.targets import ca as ca_target

pytestmark = pytest.mark.containers

SUBNET = "10.213.7.0/24"
SHARED_IMAGE = "local/owuibuild-shared-test:bookworm-1"
SHARED_DOCKERFILE = """\
FROM local/debian:bookworm
LABEL org.owuibuild.image=shared-test
RUN apt-get update \\
 && apt-get install -y --no-install-recommends postgresql-15 redis-server redis-tools python3 \\
 && rm -rf /var/lib/apt/lists/*
"""

BLUEPRINT = """\
apiVersion: owuibuild/v1
name: livetest
os: {distro: debian-12, timezone: UTC}
admin:
  user: ops
  ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeTestKeyOnlyNotARealKey00000000000000000 ops@laptop]
  allow_from: [10.213.7.0/24]
network: {cidr: 10.213.7.0/24, gateway: 10.213.7.1, dns: [10.213.7.1]}
shared:
  host: {name: shared, address: 10.213.7.24, memory_gb: 32, data_volume: {label: owui-data}}
  postgres: {max_connections: 100}
hosts:
  - {name: web-a, address: 10.213.7.30, memory_gb: 8, data_volume: {label: owui-data}}
  - {name: web-b, address: 10.213.7.31, memory_gb: 8, data_volume: {label: owui-data}}
instances:
  - {name: alpha, host: web-a, port: 3001, env: {WEBUI_NAME: ALPHA_NAME},
     admin: {email: root@alpha.test, name: Alpha Admin}}
  - {name: beta, host: web-b, port: 3001, admin: {email: root@beta.test},
     signup: {enabled: true, default_role: user}}
"""

# Shared-host start-up: the generated configuration, plus only what belongs to this machine.
SHARED_START = """\
#!/bin/sh
set -eu
PGBIN=/usr/lib/postgresql/15/bin
install -d -o postgres -g postgres -m 0700 /srv/pgdata
install -d -o postgres -g postgres -m 2775 /var/run/postgresql
su postgres -c "$PGBIN/initdb -D /srv/pgdata --encoding=UTF8 --locale=C.UTF-8 --auth-local=peer" \\
  >/srv/initdb.log
cp /test/pg_hba.conf /srv/pgdata/pg_hba.conf
# TLS as generated: the host's certificate and key where cloud-init writes them, the copies
# the setup scripts make for postgres and redis, and the generated ssl settings (appended to
# the cluster's own file: the last setting wins).
install -d -m 0755 /etc/owuibuild/tls /etc/redis/tls
install -m 0644 /test/server.crt /etc/owuibuild/tls/server.crt
install -m 0600 /test/server.key /etc/owuibuild/tls/server.key
install -m 0600 /test/server.key /etc/redis/tls/server.key
grep '^ssl' /test/postgresql.conf >/srv/ssl.conf
PGCONF=$(dirname "$(sed -n "s/^ssl_cert_file = //p" /srv/ssl.conf | tr -d "'")")
install -d -o postgres -g postgres -m 0755 "$PGCONF"
install -o postgres -g postgres -m 0644 /test/server.crt "$PGCONF/server.crt"
install -o postgres -g postgres -m 0600 /test/server.key "$PGCONF/server.key"
cat /srv/ssl.conf >>/srv/pgdata/postgresql.conf
su postgres -c "$PGBIN/pg_ctl -D /srv/pgdata -l /srv/pgdata/postgres.log -w start \\
  -o '-c listen_addresses=$SHARED_ADDRESS -c port=5432 -c max_connections=100'"
su postgres -c "psql -q -v ON_ERROR_STOP=1 -f /test/init.sql" >/srv/init-sql.log
for conf in /test/redis-*.conf; do
  name=$(basename "$conf" .conf)
  # redis-server enters `dir` while it reads the file, so the generated path must exist.
  install -d -m 0700 "$(sed -n 's/^dir "\\{0,1\\}\\([^"]*\\)"\\{0,1\\}$/\\1/p' "$conf")"
  redis-server "$conf" --pidfile "/srv/$name.pid" --supervised no \\
    --daemonize yes --logfile "/srv/$name.log"
done
python3 /test/doubles.py "$SHARED_ADDRESS" "$(cat /test/qdrant-api-key)" &
touch /srv/ready
exec sleep infinity
"""

DOUBLES = """\
# TEST DOUBLES of Ollama (port 11434) and Qdrant (port 6333). They are not Ollama or Qdrant:
# they answer just enough for Open WebUI to start (model list, version, empty successes).
# Qdrant's double requires the api-key it is given (argv[2]), as Qdrant does with an api_key.
# Every request is logged to /srv/doubles.log: service, source address, path, key matched.
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG_LOCK = threading.Lock()

def log(service, handler, key_ok):
    entry = {"service": service, "source": handler.client_address[0],
             "path": handler.path, "key_ok": key_ok}
    with LOG_LOCK, open("/srv/doubles.log", "a") as out:
        out.write(json.dumps(entry) + "\\n")

class Ollama(BaseHTTPRequestHandler):
    def do_GET(self):
        log("ollama", self, None)
        body = {"/api/tags": {"models": []}, "/api/version": {"version": "0.0.0-test-double"},
                "/api/ps": {"models": []}}.get(self.path.split("?")[0])
        self.reply(200, body) if body is not None else self.reply(200, "Ollama test double")
    do_POST = do_GET
    def reply(self, code, body):
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass

class Qdrant(Ollama):
    def do_GET(self):
        key_ok = self.headers.get("api-key") == API_KEY
        log("qdrant", self, key_ok)
        if not key_ok:
            self.reply(401, {"status": {"error": "Must provide an API key or an Authorization bearer token"}})
        elif self.path.startswith("/collections"):
            self.reply(200, {"result": {"collections": []}, "status": "ok", "time": 0})
        else:
            self.reply(200, {"title": "qdrant test double", "version": "0.0.0"})
    do_POST = do_PUT = do_DELETE = do_GET

address, API_KEY = sys.argv[1], sys.argv[2]
for port, handler in ((11434, Ollama), (6333, Qdrant)):
    server = ThreadingHTTPServer((address, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
threading.Event().wait()
"""


# Beyond the generated healthcheck's own verdict (start_period 600 s, then 5 retries 10 s
# apart): `compose up --wait` then fails as unhealthy, with the logs, before this cuts it off.
UP_TIMEOUT = 900


def run(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout}{out.stderr}"
        )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


@dataclass
class Running:
    inst: InstancePlan
    project: str
    bundle_dir: Path
    port: int  # published on 127.0.0.1 for the probes

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def compose_command(self) -> list[str]:
        files = ["-f", str(self.bundle_dir / bundle.COMPOSE_FILE), "-f", str(self.override)]
        return ["docker", "compose", "-p", self.project, *files]

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        if args[:1] == ("up",):
            # Open WebUI's first start (migrations, then the app's imports) took over 600 s on a
            # loaded 2-core machine: let the generated healthcheck give its own verdict first.
            timeout = max(timeout, UP_TIMEOUT)
        return run(*self.compose_command, *args, timeout=timeout)

    @property
    def override(self) -> Path:
        return self.bundle_dir.parent / f"{self.inst.name}.override.yaml"


@dataclass
class Fleet:
    rendered: Rendered
    plan: Plan
    blueprint: Path
    network: str
    shared: str  # container name
    instances: dict[str, Running] = field(default_factory=dict)
    admins: dict[str, dict[str, Any]] = field(default_factory=dict)

    def secret(self, name: str) -> str:
        return self.rendered.secrets.values[name]  # type: ignore[attr-defined, no-any-return]

    def in_shared(self, *args: str, user: str = "root") -> str:
        return run("docker", "exec", "-u", user, self.shared, *args).stdout

    def psql(self, database: str, sql: str) -> str:
        return self.in_shared("psql", "-At", "-d", database, "-c", sql, user="postgres")

    def redis(self, name: str, *command: str) -> str:
        inst = self.instances[name].inst
        return self.in_shared(
            "redis-cli", "-h", str(inst.redis_address), "-p", str(inst.redis_port),
            "--tls", "--cacert", f"/test/{ca_target.CA_FILE}",
            "--user", inst.redis_user, "--pass", self.secret(inst.redis_password.name),
            "--no-auth-warning", *command,
        )  # fmt: skip


def shared_config(r: Rendered) -> dict[str, str]:
    """The shared host's generated PostgreSQL and Redis files, from its user-data."""
    assert isinstance(r.plan, Plan)
    doc = r.user_data(r.plan.shared.name)
    files = {f["path"]: f["content"] for f in doc.get("write_files", [])}
    out: dict[str, str] = {}
    for path, content in files.items():
        name = path.rsplit("/", 1)[-1]
        if (
            (name in ("pg_hba.conf", "postgresql.conf") and "postgres" in path)
            or (name == "init.sql" and "postgres" in path)
            or (path.startswith("/etc/redis/") and re.fullmatch(r"redis-[a-z0-9-]+\.conf", name))
            or path in (SERVER_CERT, SERVER_KEY)
        ):
            out[name] = content
    if "pg_hba.conf" not in out or "init.sql" not in out or len(out) < 5 + len(r.plan.instances):
        unavailable(
            "the shared host's user-data has no generated PostgreSQL/Redis configuration yet "
            f"(found {sorted(out)}): the shared-host sections must land first"
        )
    return out


def ensure_shared_image(workdir: Path) -> None:
    if run("docker", "image", "inspect", SHARED_IMAGE, check=False).returncode == 0:
        return
    ensure_base_image()
    ctx = workdir / "shared-image"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(SHARED_DOCKERFILE)
    run("docker", "build", "-t", SHARED_IMAGE, str(ctx), timeout=1200)


def start_shared(fleet: Fleet, config: dict[str, str], workdir: Path) -> None:
    test_dir = workdir / "shared"
    test_dir.mkdir()
    for name, content in config.items():
        (test_dir / name).write_text(content)
    (test_dir / ca_target.CA_FILE).write_bytes(fleet.rendered.files[ca_target.CA_FILE])
    (test_dir / "start.sh").write_text(SHARED_START)
    (test_dir / "doubles.py").write_text(DOUBLES)
    key = test_dir / "qdrant-api-key"
    key.write_text(fleet.secret(fleet.plan.qdrant_api_key.name))
    key.chmod(0o600)
    address = str(fleet.plan.shared.host.address)
    run(
        "docker", "run", "-d", "--name", fleet.shared, "--network", fleet.network,
        "--ip", address, "-e", f"SHARED_ADDRESS={address}", "-v", f"{test_dir}:/test:ro",
        SHARED_IMAGE, "/bin/sh", "/test/start.sh",
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while run("docker", "exec", fleet.shared, "test", "-f", "/srv/ready", check=False).returncode:
        state = run("docker", "inspect", "-f", "{{.State.Running}}", fleet.shared).stdout.strip()
        if state != "true" or time.monotonic() > deadline:
            logs = run("docker", "logs", fleet.shared, check=False)
            raise AssertionError(f"shared container did not start:\n{logs.stdout}{logs.stderr}")
        time.sleep(0.5)


def place_bundle(fleet: Fleet, inst: InstancePlan, workdir: Path, suffix: str) -> Running:
    """The generated bundle, unmodified, plus an override for the test network."""
    bundle_dir = workdir / "bundles" / inst.name
    bundle_dir.mkdir(parents=True)
    write_bundle_files(fleet.rendered, inst, bundle_dir)
    data_dir = workdir / "data" / inst.name
    data_dir.mkdir(parents=True)
    running = Running(inst, f"owuitest-{inst.name}-{suffix}", bundle_dir, free_port())
    ca = workdir / "bundles" / ca_target.CA_FILE
    ca.write_bytes(fleet.rendered.files[ca_target.CA_FILE])
    service: dict[str, Any] = {
        "networks": {"fleet": {"ipv4_address": str(inst.host.address)}},
        "ports": [f"127.0.0.1:{running.port}:8080"],
        # The fleet CA from this machine's copy, at the target the bundle mounts it on.
        "volumes": [{"type": "bind", "source": str(ca), "target": FLEET_CA, "read_only": True}],
    }
    generated = yaml.safe_load((bundle_dir / bundle.COMPOSE_FILE).read_text())
    health = generated["services"][bundle.SERVICE]["healthcheck"]
    if "start_interval" in health and engine_major() < bundle.START_INTERVAL_ENGINE:
        # The bundle targets its host's engine; compose refuses a start_interval on this
        # machine's older one: drop that key, and only it, from the healthcheck.
        service["healthcheck"] = {"start_interval": None}
    override = {
        "services": {bundle.SERVICE: service},
        "networks": {"fleet": {"external": True, "name": fleet.network}},
        "volumes": {bundle.VOLUME: {"driver_opts": {"device": str(data_dir)}}},
    }
    # !override: replace the generated port list (the host's address does not exist here).
    text = yaml.safe_dump(override, sort_keys=False).replace("ports:", "ports: !override", 1)
    text = text.replace("start_interval: null", "start_interval: !reset null", 1)
    running.override.write_text(text)
    return running


def write_bundle_files(r: Rendered, inst: InstancePlan, into: Path) -> None:
    for path, data in r.files.items():
        if path.startswith(f"instances/{inst.name}/"):
            (into / path.rsplit("/", 1)[-1]).write_bytes(data)


@contextmanager
def live_fleet(
    text: str, subnet: str, gateway: str, workdir: Path, *, start: bool = True
) -> Iterator[Fleet]:
    """Render ``text``, start the shared container and place every instance's bundle on a
    Docker network with ``subnet``; bring the instances up when ``start``. Cleans up all."""
    reason = docker_unavailable_reason()
    if reason:
        unavailable(reason)
    blueprint = workdir / "fleet.yml"
    blueprint.write_text(text)
    rendered = compile_path(blueprint)
    assert isinstance(rendered.plan, Plan)
    plan = rendered.plan
    config = shared_config(rendered)
    ensure_openwebui_image(plan.openwebui_image, plan.fleet.openwebui.version)
    ensure_shared_image(workdir)

    suffix = uuid.uuid4().hex[:8]
    network = f"owuitest-{suffix}"
    fleet = Fleet(rendered, plan, blueprint, network, f"owuitest-shared-{suffix}")
    run("docker", "network", "create", "--subnet", subnet, "--gateway", gateway, network)
    try:
        start_shared(fleet, config, workdir)
        for inst in plan.instances:
            fleet.instances[inst.name] = place_bundle(fleet, inst, workdir, suffix)
        if start:
            with ThreadPoolExecutor(len(fleet.instances)) as pool:
                list(
                    pool.map(
                        lambda r: r.compose("up", "--detach", "--wait"), fleet.instances.values()
                    )
                )
        yield fleet
    finally:
        for running in fleet.instances.values():
            if running.override.exists():
                logs = running.compose("logs", "--no-color", "--tail", "200", timeout=60)
                (workdir / f"{running.inst.name}.log").write_text(logs.stdout)
                running.compose("down", "--volumes", "--timeout", "10", timeout=120)
        run("docker", "rm", "-f", fleet.shared, check=False)
        run("docker", "network", "rm", network, check=False)
        shutil.rmtree(workdir / "data", ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    text = BLUEPRINT.replace("ALPHA_NAME", "Alpha")
    with live_fleet(text, SUBNET, "10.213.7.1", tmp_path_factory.mktemp("live")) as running:
        yield running


def signup(fleet: Fleet, name: str, who: str) -> tuple[int, Any]:
    body = {"name": who, "email": f"{who}@{name}.test", "password": f"pw-{who}-{name}-Aa1!"}
    return http("POST", f"{fleet.instances[name].url}/api/v1/auths/signup", body)


def sign_in_as_admin(fleet: Fleet, running: Running) -> tuple[int, Any]:
    """Sign in with the admin account the blueprint names and the secrets file holds."""
    password = fleet.rendered.secrets[running.inst.admin_password.name]  # type: ignore[index]
    body = {"email": running.inst.instance.admin.email, "password": password}
    return http("POST", f"{running.url}/api/v1/auths/signin", body)


def admins(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """The admin each instance made at its first start, signed in once per test run."""
    if not fleet.admins:
        for name, running in fleet.instances.items():
            status, user = sign_in_as_admin(fleet, running)
            assert status == 200 and isinstance(user, dict), (name, status)
            fleet.admins[name] = user
    return fleet.admins


# -- the tests, in the order a reader would check a fresh deployment ------------------------------


def data_root(fleet: Fleet) -> Path:
    """The directory the overrides bind as the instances' data directories."""
    return next(iter(fleet.instances.values())).bundle_dir.parent.parent / "data"


def container_started_at(running: Running) -> str:
    (container,) = running.compose("ps", "--quiet").stdout.split()
    return run("docker", "inspect", "-f", "{{.State.StartedAt}}", container).stdout.strip()


def generated_script(fleet: Fleet, running: Running, path: str) -> str:
    """A script from the user-data of the instance's host, as cloud-init would write it."""
    doc = fleet.rendered.user_data(running.inst.host.name)
    (entry,) = [f for f in doc["write_files"] if f["path"] == path]
    return str(entry["content"])


def alpha_opens_signup(fleet: Fleet) -> bool:
    """Whether alpha's host got the script: it must not (alpha keeps sign-up closed)."""
    doc = fleet.rendered.user_data("web-a")
    paths = [f["path"] for f in doc["write_files"]]
    return docker_section.OPEN_SIGNUP_SCRIPT in paths


def test_both_instances_are_healthy(fleet: Fleet) -> None:
    for name, running in fleet.instances.items():
        status, body = http("GET", f"{running.url}/health")
        assert (status, body) == (200, {"status": True}), name
        ps = json.loads(running.compose("ps", "--format", "json").stdout.splitlines()[0])
        assert ps["Health"] == "healthy", name


def test_nobody_can_claim_an_instance_and_its_generated_admin_signs_in(fleet: Fleet) -> None:
    # Before anyone signed in or up: each instance already has exactly its generated admin.
    for name, running in fleet.instances.items():
        emails = fleet.psql(running.inst.db_name, 'select email, role from "user"')
        assert emails.split() == [f"root@{name}.test|admin"], (name, emails)
    first = admins(fleet)
    assert {name: (user["role"], user["name"]) for name, user in first.items()} == {
        "alpha": ("admin", "Alpha Admin"),
        "beta": ("admin", "Admin"),
    }
    # Sign-up is closed by default: a visitor gets nothing on alpha.
    status, second = signup(fleet, "alpha", "second")
    assert status == 403, (status, second)
    # beta's blueprint opens it, but Open WebUI closed it in the start that made the admin...
    beta = fleet.instances["beta"]
    assert signup(fleet, "beta", "early")[0] == 403
    # ...so beta's unit restarts it once: the generated script, run as the unit runs it (only
    # the compose command and the health URL are the test's), opens it, and only once.
    assert beta.inst.instance.signup.enabled and not alpha_opens_signup(fleet)
    marker = data_root(fleet) / beta.inst.name / docker_section.SIGNUP_MARKER
    for attempt in range(2):
        before = container_started_at(beta)
        run("sh", "-c", generated_script(fleet, beta, docker_section.OPEN_SIGNUP_SCRIPT), "open-signup",
            str(marker), f"{beta.url}/health", *beta.compose_command, timeout=UP_TIMEOUT)  # fmt: skip
        assert marker.exists()
        restarted = container_started_at(beta) != before
        assert restarted == (attempt == 0), "the script restarts the instance on its first run only"
    # A newcomer now gets an account, with the role the blueprint names, never admin.
    status, second = signup(fleet, "beta", "second")
    assert status == 200 and second["role"] == "user", (status, second)
    # A wrong password does not sign in as the admin.
    body = {"email": "root@alpha.test", "password": "not-the-generated-password"}
    status, _ = http("POST", f"{fleet.instances['alpha'].url}/api/v1/auths/signin", body)
    assert status in (400, 401, 403)
    # Each instance signs its tokens with its own WEBUI_SECRET_KEY: alpha's admin is nobody on beta.
    token = first["alpha"]["token"]
    status, _ = http("GET", f"{fleet.instances['beta'].url}/api/v1/auths/", token=token)
    assert status == 401
    status, me = http("GET", f"{fleet.instances['alpha'].url}/api/v1/auths/", token=token)
    assert status == 200 and me["role"] == "admin"


def test_each_instance_has_its_own_database(fleet: Fleet) -> None:
    admins(fleet)
    for name, running in fleet.instances.items():
        tables = fleet.psql(
            running.inst.db_name,
            "select count(*) from information_schema.tables where table_schema = 'public'",
        )
        assert int(tables) > 30, name
        owner = fleet.psql(
            running.inst.db_name,
            "select tableowner from pg_tables where schemaname = 'public' group by 1",
        )
        assert owner.split() == [running.inst.db_role], name
        emails = fleet.psql(running.inst.db_name, 'select email from "user" order by created_at')
        assert all(e.endswith(f"@{name}.test") for e in emails.split()), (name, emails)
    assert "open_webui" not in fleet.psql("postgres", "select datname from pg_database")
    public_tables = fleet.psql(
        "postgres", "select count(*) from information_schema.tables where table_schema = 'public'"
    )
    assert int(public_tables) == 0


def test_instances_reach_postgres_over_verified_tls_only(fleet: Fleet) -> None:
    """Every session of each instance's role is encrypted (pg_stat_ssl); a plain-text one
    from the instance's own host is refused by pg_hba."""
    admins(fleet)
    for name, running in fleet.instances.items():
        role = running.inst.db_role
        sessions = fleet.psql(
            "postgres",
            "select s.ssl, s.version from pg_stat_ssl s join pg_stat_activity a using (pid) "
            f"where a.usename = '{role}'",
        ).split()
        assert sessions, f"{name}: no session of its role"
        assert all(re.fullmatch(r"t\|TLSv1\.[23]", s) for s in sessions), (name, sessions)
    # Redis has no plain-text port at all: the instances' keys and their Socket.IO
    # subscriptions (the tests below) all came over TLS.
    for name, running in fleet.instances.items():
        conf = fleet.in_shared("cat", f"/test/redis-{name}.conf")
        assert "\nport 0\n" in conf and f"\ntls-port {running.inst.redis_port}\n" in conf


def test_redis_keys_carry_the_prefix_and_stay_in_their_own_redis(fleet: Fleet) -> None:
    admins(fleet)
    for name, running in fleet.instances.items():
        keys = fleet.redis(name, "--scan").split()
        assert keys, f"{name}: no keys in its Redis"
        prefix = running.inst.redis_key_prefix
        assert all(k.startswith(f"{prefix}:") for k in keys), (name, keys)
    ports = {r.inst.redis_port for r in fleet.instances.values()}
    assert len(ports) == len(fleet.instances)


def test_each_redis_has_exactly_one_socketio_subscriber(fleet: Fleet) -> None:
    for name in fleet.instances:
        reply = fleet.redis(name, "PUBSUB", "NUMSUB", "socketio").split()
        assert reply == ["socketio", "1"], name


def test_changed_env_value_is_in_effect_after_restart(fleet: Fleet) -> None:
    """Persistent config is off, so a changed value wins over what the database stored."""
    running = fleet.instances["alpha"]
    _, before = http("GET", f"{running.url}/api/config")
    assert "Alpha" in before["name"]
    # ui.enable_login_form is stored config: with persistence on, the stored value would win.
    assert before["features"]["enable_login_form"] is True
    fleet.blueprint.write_text(
        BLUEPRINT.replace(
            "WEBUI_NAME: ALPHA_NAME", 'WEBUI_NAME: "Alpha Two", ENABLE_LOGIN_FORM: "false"'
        )
    )
    again = compile_path(fleet.blueprint)  # same secrets file: only the env changes
    env_name = bundle.env_file_name(running.inst)
    new_env = again.files[f"instances/alpha/{env_name}"]
    assert new_env != fleet.rendered.files[f"instances/alpha/{env_name}"]
    assert (
        again.files["instances/alpha/compose.yaml"]
        == fleet.rendered.files["instances/alpha/compose.yaml"]
    )
    (running.bundle_dir / env_name).write_bytes(new_env)
    # What the instance's systemd unit does on restart: down, then up (and wait for /health).
    running.compose("down", "--timeout", "10")
    running.compose("up", "--detach", "--wait")
    _, after = http("GET", f"{running.url}/api/config")
    assert "Alpha Two" in after["name"]
    assert after["features"]["enable_login_form"] is False
    status, _ = http("GET", f"{running.url}/api/v1/auths/", token=admins(fleet)["alpha"]["token"])
    assert status == 200  # same database, same secret key: the admin is still signed in


def doubles_log(fleet: Fleet) -> list[dict[str, Any]]:
    text = fleet.in_shared("sh", "-c", "cat /srv/doubles.log 2>/dev/null || true")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_the_qdrant_double_requires_the_generated_key(fleet: Fleet) -> None:
    """The double is honest: without the fleet's key it refuses, as Qdrant with an api_key."""
    address = str(fleet.plan.shared.host.address)
    probe = (
        "import sys, urllib.request, urllib.error\n"
        "req = urllib.request.Request(sys.argv[1], headers=dict([sys.argv[2:4]]) if len(sys.argv) > 3 else {})\n"
        "try:\n    print(urllib.request.urlopen(req, timeout=10).status)\n"
        "except urllib.error.HTTPError as e:\n    print(e.code)\n"
    )
    url = f"http://{address}:6333/collections"
    key = fleet.secret(fleet.plan.qdrant_api_key.name)
    assert fleet.in_shared("python3", "-c", probe, url).strip() == "401"
    assert fleet.in_shared("python3", "-c", probe, url, "api-key", "wrong").strip() == "401"
    assert fleet.in_shared("python3", "-c", probe, url, "api-key", key).strip() == "200"


def test_open_webui_reaches_qdrant_with_the_generated_key(fleet: Fleet) -> None:
    """Resetting the vector store makes each instance list Qdrant's collections with the key
    from its env file; the double logs whether every request carried the right one."""
    for name, running in fleet.instances.items():
        token = admins(fleet)[name]["token"]
        status, _ = http("POST", f"{running.url}/api/v1/retrieval/reset/db", token=token)
        assert status == 200, (name, status)
    hosts = {str(r.inst.host.address): name for name, r in fleet.instances.items()}
    # (the shared host's own probes, from the test above, are not Open WebUI's)
    log = [e for e in doubles_log(fleet) if e["service"] == "qdrant" and e["source"] in hosts]
    for name, running in fleet.instances.items():
        mine = [e for e in log if e["source"] == str(running.inst.host.address)]
        assert any(e["path"].startswith("/collections") for e in mine), (name, log)
    assert all(e["key_ok"] for e in log), [e for e in log if not e["key_ok"]]


def publish_like_docker(fleet: Fleet, pid: str) -> None:
    """In the network namespace ``pid``, send each instance's published address and port to its
    container's port, as Docker's DNAT on each instance host does (the test's override
    publishes on 127.0.0.1 instead, because the hosts' addresses do not exist here)."""
    for running in fleet.instances.values():
        inst = running.inst
        rule = ["-d", str(inst.host.address), "-p", "tcp", "--dport", str(inst.port),
                "-j", "DNAT", "--to-destination", f"{inst.host.address}:{bundle.OPENWEBUI_CONTAINER_PORT}"]  # fmt: skip
        ns = ["nsenter", "-t", pid, "-n", "--", "iptables", "-w", "-t", "nat"]
        if run(*ns, "-C", "OUTPUT", *rule, check=False).returncode != 0:
            run(*ns, "-A", "OUTPUT", *rule)


def status_from(fleet: Fleet, name: str, *only: str) -> tuple[int, dict[str, Any], str]:
    """Run `owuibuild status` inside instance ``name``'s network namespace: it dials the fleet's
    addresses from that instance's host address, on the test's own Docker network, as the
    instance host would. Nothing leaves that network."""
    container = fleet.instances[name].compose("ps", "--quiet").stdout.split()[0]
    pid = run("docker", "inspect", "--format", "{{.State.Pid}}", container).stdout.strip()
    publish_like_docker(fleet, pid)
    args = [f"--only={o}" for o in only]
    done = subprocess.run(
        ["nsenter", "-t", pid, "-n", "--", sys.executable, "-m", "owuibuild.cli", "status",
         str(fleet.blueprint), "--format", "json", "--timeout", "10", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return done.returncode, json.loads(done.stdout), done.stdout + done.stderr


def test_status_probes_real_postgres_and_redis_from_an_instance_host(fleet: Fleet) -> None:
    """`owuibuild status` against the real PostgreSQL and Redis configured from the generated
    shared-host files: from alpha's host, alpha's login and PING work; alpha's database and
    Redis refuse beta's host; no secret is printed either way."""
    if shutil.which("nsenter") is None:
        unavailable("nsenter (util-linux) is not installed")
    code, doc, output = status_from(fleet, "alpha", "postgresql", "redis")
    rows = {(c["service"], c["instance"]): c for c in doc["checks"]}
    assert rows[("postgresql", "alpha")]["state"] == "ok", output
    assert rows[("redis", "alpha")]["state"] == "ok", output
    # beta's rows are dialled from alpha's host: pg_hba admits beta only from beta's host
    assert rows[("postgresql", "beta")]["state"] == "refused", output
    assert code == 1  # not every probe is ok
    code, doc, output = status_from(fleet, "beta", "beta")
    beta = {c["service"]: c["state"] for c in doc["checks"]}
    assert beta["postgresql"] == "ok" and beta["redis"] == "ok", output
    for value in fleet.rendered.secrets.all_values():  # type: ignore[attr-defined]
        assert value not in output


def test_status_probes_real_open_webui_from_an_instance_host(fleet: Fleet) -> None:
    """The `openwebui` and `openwebui-db` rows against the real Open WebUI instances: /health
    and /health/db at each instance's published address and port, dialled from alpha's host."""
    if shutil.which("nsenter") is None:
        unavailable("nsenter (util-linux) is not installed")
    require_tool("iptables")
    code, doc, output = status_from(fleet, "alpha", "openwebui", "openwebui-db")
    rows = {(c["service"], c["instance"]): c for c in doc["checks"]}
    assert set(rows) == {
        (service, name) for service in ("openwebui", "openwebui-db") for name in fleet.instances
    }, output
    for (service, name), row in rows.items():
        inst = fleet.instances[name].inst
        assert row["state"] == "ok", (service, name, output)
        assert row["target"] == f"{inst.host.address}:{inst.port}", row
    assert code == 0, output
    # The same probe, with the instance stopped: the row turns, and the exit code with it.
    beta = fleet.instances["beta"]
    beta.compose("stop", "--timeout", "10")
    try:
        code, doc, output = status_from(fleet, "alpha", "openwebui")
        states = {c["instance"]: c["state"] for c in doc["checks"]}
        assert states["alpha"] == "ok" and states["beta"] != "ok", output
        assert code == 1
    finally:
        beta.compose("start")
        beta.compose("up", "--detach", "--wait")
