"""Containers tier: two Open WebUI instances from generated bundles, against real servers.

A test blueprint puts its fleet on 10.213.7.0/24, a subnet that exists only on a Docker network
this test creates. On it:

- a "shared host" container at the shared address runs REAL PostgreSQL 15 and one REAL
  redis-server per instance, configured from the shared host's generated user-data (pg_hba.conf,
  the init SQL, each redis-<name>.conf; only paths that belong to a machine, such as the data
  directory and pid file, are given on the command line);
- the same container runs TEST DOUBLES of Ollama and Qdrant (tests/containers/shared_doubles.py):
  small servers, NOT Ollama or Qdrant, whose servers cannot be had here. The Qdrant double
  behaves like Qdrant configured by the generator (HTTPS only with the host's certificate and
  key, api_key and jwt_rbac): it takes the fleet's server key or a JWT signed with it, limits a
  collection-scoped token to its collections, keeps collections and points in memory, and logs
  each request with its source, TLS version and the claims it decoded (never a token or the
  key). Before any instance starts, the shared host's GENERATED qdrant-collections.sh runs
  there, unmodified, as its unit runs it (the key header handed over as a credential), and
  makes every instance's collections. The Ollama double, like Ollama on the shared host,
  listens on loopback only, behind the REAL Caddy (Debian's package) run with the generated
  terminator configuration: HTTPS on the shared address, and only the endpoints it allows
  reach the double, which lists one model, embeds text into vectors of the fleet's embedding
  length and logs every request that gets through;
- each instance runs from its generated compose.yaml and env file, unmodified, with the Open
  WebUI image built locally and tagged with exactly the reference the generator writes. A
  compose override only puts the container on the test network at its host's address (so the
  generated pg_hba and Redis rules apply as written), publishes the port on 127.0.0.1 instead of
  an address this machine does not have, points the data volume at a temporary directory, and
  binds this machine's copies of the fleet CA and of the CA bundle (this machine's system CAs
  plus the fleet CA, as the instance host's ca-bundle script makes it) where the bundle mounts
  the host's.

Nothing here dials the fleet's addresses from this machine: probes go to 127.0.0.1 ports or run
inside the shared container or an instance's.
"""

from __future__ import annotations

import json
import re
import shlex
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
from owuibuild import bundle, qdrant_access
from owuibuild.hostconfig import docker as docker_section
from owuibuild.hostconfig import ollama_tls
from owuibuild.hostconfig import qdrant as qdrant_section
from owuibuild.plan import (
    CA_BUNDLE,
    FLEET_CA,
    OLLAMA_LOOPBACK,
    OLLAMA_PORT,
    QDRANT_PORT,
    SERVER_CERT,
    SERVER_KEY,
    SYSTEM_CA_BUNDLE,
    InstancePlan,
    Plan,
)
from owuibuild.targets import ca as ca_target

pytestmark = pytest.mark.containers

SUBNET = "10.213.7.0/24"
SHARED_IMAGE = "local/owuibuild-shared-test:bookworm-3"
SHARED_DOCKERFILE = """\
FROM local/debian:bookworm
LABEL org.owuibuild.image=shared-test
RUN apt-get update \\
 && apt-get install -y --no-install-recommends postgresql-15 redis-server redis-tools python3 \\
      caddy curl \\
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
install -m 0644 /test/fleet-ca.crt "$FLEET_CA"
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
# The doubles: Qdrant's on the shared address with the host's certificate and key, Ollama's on
# loopback, where the generated terminator dials Ollama.
python3 /test/doubles.py "$SHARED_ADDRESS" /test/qdrant-api-key \\
  /etc/owuibuild/tls/server.crt /etc/owuibuild/tls/server.key "$EMBEDDING_DIMENSIONS" \\
  "$QDRANT_VERSION" /srv/doubles.log >/srv/doubles.err 2>&1 &
# Ollama's TLS terminator: the real Caddy with the generated configuration, unmodified, at its
# generated path; the key copied where its setup commands put it (the certificate is the host's,
# installed above); run as the package's caddy user with the unit's HOME.
install -m 0644 /test/ollama-tls.json "$OLLAMA_TLS_CONFIG"
install -d -o root -g caddy -m 0750 "$(dirname "$OLLAMA_TLS_KEY")"
install -o caddy -g caddy -m 0600 /test/server.key "$OLLAMA_TLS_KEY"
runuser -u caddy -- env HOME=/var/lib/caddy caddy run --config "$OLLAMA_TLS_CONFIG" \\
  >/srv/caddy.log 2>&1 &
# Ready when the doubles and the terminator all listen.
if ! python3 /test/listening.py "$SHARED_ADDRESS:6333" 127.0.0.1:11434 "$SHARED_ADDRESS:11434"
then
  cat /srv/doubles.err /srv/caddy.log
  exit 1
fi
touch /srv/ready
exec sleep infinity
"""

LISTENING = """\
import socket, sys, time
deadline = time.monotonic() + 60
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"nothing listens on {target}")
            time.sleep(0.2)
"""

# TEST DOUBLES of Qdrant and Ollama (see that file's docstring), run in the shared container.
DOUBLES = Path(__file__).with_name("shared_doubles.py")
# The Qdrant binary's test double, whose JWT and access checks shared_doubles.py imports.
QDRANT_BINARY_DOUBLE = Path(__file__).parents[1] / "doubles" / "qdrant_double.py"


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
    collections_made: str = ""  # the output of the generated qdrant-collections.sh's first run

    def secret(self, name: str) -> str:
        return self.rendered.secrets.values[name]  # type: ignore[attr-defined, no-any-return]

    @property
    def qdrant_key(self) -> str:
        """Qdrant's server key: it belongs on the shared host, never on an instance's."""
        return self.secret(self.plan.qdrant_api_key.name)

    def qdrant(self, method: str, path: str, body: Any = None, key: str | None = None) -> Any:
        """A request to the Qdrant double from the shared host, over HTTPS verified with the
        fleet CA, with the server key unless ``key``: (status, decoded answer)."""
        url = f"{self.plan.qdrant_url}{path}"
        args = [QDRANT_CALL, f"/test/{ca_target.CA_FILE}", method, url, key or self.qdrant_key]
        if body is not None:
            args.append(json.dumps(body))
        found = json.loads(self.in_shared("python3", "-c", *args))
        return found["status"], found["body"]

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
    """The shared host's generated PostgreSQL, Redis and Ollama TLS terminator files, and its
    certificate and key, from its user-data."""
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
            or path in (SERVER_CERT, SERVER_KEY, ollama_tls.CONFIG)
        ):
            out[name] = content
    if "pg_hba.conf" not in out or "init.sql" not in out or len(out) < 5 + len(r.plan.instances):
        unavailable(
            "the shared host's user-data has no generated PostgreSQL/Redis configuration yet "
            f"(found {sorted(out)}): the shared-host sections must land first"
        )
    if ollama_tls.CONFIG.rsplit("/", 1)[-1] not in out:
        unavailable(
            f"the shared host's user-data has no {ollama_tls.CONFIG} (Ollama's TLS terminator)"
        )
    return out


def shared_file(r: Rendered, path: str) -> str:
    """One file of the shared host's user-data, as cloud-init writes it."""
    assert isinstance(r.plan, Plan)
    doc = r.user_data(r.plan.shared.name)
    (content,) = [f["content"] for f in doc.get("write_files", []) if f["path"] == path]
    return str(content)


@dataclass(frozen=True)
class CollectionsUnit:
    """What owui-qdrant-collections.service runs, read from its generated unit file."""

    command: list[str]  # ExecStart
    credential: str  # LoadCredential's name ...
    source: str  # ... and the file it copies into $CREDENTIALS_DIRECTORY

    @property
    def credentials_directory(self) -> str:
        return f"/run/credentials/{qdrant_section.COLLECTIONS_UNIT_NAME}"  # as systemd makes it


def collections_unit(r: Rendered) -> CollectionsUnit:
    unit = shared_file(r, qdrant_section.COLLECTIONS_UNIT)
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if re.match(r"[A-Za-z]+=", line)
    )
    name, source = settings["LoadCredential"].split(":", 1)
    return CollectionsUnit(shlex.split(settings["ExecStart"]), name, source)


def run_collections_script(fleet: Fleet) -> str:
    """Run the generated qdrant-collections.sh in the shared container as its unit does: its
    ExecStart, with CREDENTIALS_DIRECTORY holding the generated key header."""
    unit = collections_unit(fleet.rendered)
    env = f"CREDENTIALS_DIRECTORY={unit.credentials_directory}"
    return run("docker", "exec", "-e", env, fleet.shared, *unit.command, timeout=600).stdout


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
    (test_dir / "doubles.py").write_text(DOUBLES.read_text())
    (test_dir / "qdrant_double.py").write_text(QDRANT_BINARY_DOUBLE.read_text())
    key = test_dir / "qdrant-api-key"
    key.write_text(fleet.qdrant_key)
    key.chmod(0o600)
    # The collections script at its generated path, and the key header its unit hands it as a
    # credential, where systemd would put the copy.
    unit = collections_unit(fleet.rendered)
    script = test_dir / "qdrant-collections.sh"
    script.write_text(shared_file(fleet.rendered, qdrant_section.COLLECTIONS_SCRIPT))
    credentials = test_dir / "credentials"
    credentials.mkdir(mode=0o700)
    header = credentials / unit.credential
    header.write_text(shared_file(fleet.rendered, unit.source))
    header.chmod(0o400)
    (test_dir / "listening.py").write_text(LISTENING)
    # The terminator's certificate is the host's (installed at SERVER_CERT); its key is a copy,
    # at the path its configuration names.
    terminator = json.loads(config[ollama_tls.CONFIG.rsplit("/", 1)[-1]])
    (pair,) = terminator["apps"]["tls"]["certificates"]["load_files"]
    assert pair["certificate"] == SERVER_CERT, pair
    address = str(fleet.plan.shared.host.address)
    run(
        "docker", "run", "-d", "--name", fleet.shared, "--network", fleet.network,
        "--ip", address, "-e", f"SHARED_ADDRESS={address}",
        "-e", f"OLLAMA_TLS_CONFIG={ollama_tls.CONFIG}", "-e", f"OLLAMA_TLS_KEY={pair['key']}",
        "-e", f"FLEET_CA={FLEET_CA}", "-e", f"EMBEDDING_DIMENSIONS={fleet.plan.embedding_dimensions}",
        "-e", f"QDRANT_VERSION={fleet.plan.fleet.shared.qdrant.version}",
        "-v", f"{test_dir}:/test:ro",
        "-v", f"{script}:{qdrant_section.COLLECTIONS_SCRIPT}:ro",
        "-v", f"{credentials}:{unit.credentials_directory}:ro",
        SHARED_IMAGE, "/bin/sh", "/test/start.sh",
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while run("docker", "exec", fleet.shared, "test", "-f", "/srv/ready", check=False).returncode:
        state = run("docker", "inspect", "-f", "{{.State.Running}}", fleet.shared).stdout.strip()
        if state != "true" or time.monotonic() > deadline:
            logs = run("docker", "logs", fleet.shared, check=False)
            raise AssertionError(f"shared container did not start:\n{logs.stdout}{logs.stderr}")
        time.sleep(0.5)
    # Before any instance starts, as at the shared host's first boot.
    fleet.collections_made = run_collections_script(fleet)


def ca_bundle_for(fleet: Fleet) -> bytes:
    """What the instance host's ca-bundle script makes, from this machine's system CAs: the
    system bundle, then the fleet CA."""
    system = Path(SYSTEM_CA_BUNDLE)
    if not system.is_file():
        unavailable(f"{SYSTEM_CA_BUNDLE} is missing (the ca-certificates package makes it)")
    data = system.read_bytes()
    if not data.endswith(b"\n"):
        data += b"\n"
    return data + fleet.rendered.files[ca_target.CA_FILE]


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
    ca_bundle = workdir / "bundles" / "ca-bundle.crt"
    ca_bundle.write_bytes(ca_bundle_for(fleet))
    service: dict[str, Any] = {
        "networks": {"fleet": {"ipv4_address": str(inst.host.address)}},
        "ports": [f"127.0.0.1:{running.port}:8080"],
        # The fleet CA and the CA bundle from this machine's copies, at the targets the bundle
        # mounts the host's on.
        "volumes": [
            {"type": "bind", "source": str(ca), "target": FLEET_CA, "read_only": True},
            {"type": "bind", "source": str(ca_bundle), "target": CA_BUNDLE, "read_only": True},
        ],
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


def make_chat(running: Running, token: str, title: str, content: str) -> str:
    """A chat of one user message, made through Open WebUI's API with ``token``: its id."""
    chat = {
        "title": title,
        "models": [],
        "messages": [{"id": "m1", "role": "user", "content": content, "timestamp": 1}],
        "history": {
            "currentId": "m1",
            "messages": {"m1": {"id": "m1", "role": "user", "content": content}},
        },
    }
    status, created = http("POST", f"{running.url}/api/v1/chats/new", {"chat": chat}, token=token)
    assert status == 200 and created["id"], (status, created)
    return str(created["id"])


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


def from_open_webui(entry: dict[str, Any]) -> bool:
    """Whether a logged request is Open WebUI's (its HTTP clients), not one of the probes below
    (Python's urllib, run in the shared container or in an instance's). The collections
    script's curl runs on the shared host: callers pick the instances' sources."""
    return not str(entry.get("agent") or "").startswith("Python-urllib")


def in_instance(fleet: Fleet, name: str, *args: str) -> str:
    """Run a command in instance ``name``'s container, with the container's environment."""
    container = fleet.instances[name].compose("ps", "--quiet").stdout.split()[0]
    return run("docker", "exec", container, *args).stdout


# One HTTP(S) request, from python3 in a container: prints the status code, or "no answer:" and
# why when no HTTP answer came. argv: the CA file for HTTPS (the name of an environment
# variable that holds its path, or the path), method, URL, then "Name: value" headers.
HTTPS_PROBE = """\
import http.client, os, ssl, sys, urllib.error, urllib.request
context = ssl.create_default_context(cafile=os.environ.get(sys.argv[1], sys.argv[1]))
method, url = sys.argv[2], sys.argv[3]
headers = dict(h.split(": ", 1) for h in sys.argv[4:])
headers.setdefault("Content-Type", "application/json")
data = b'{"model": "test-double:latest"}' if method in ("POST", "PUT", "DELETE") else None
request = urllib.request.Request(url, data=data, method=method, headers=headers)
try:
    with urllib.request.urlopen(request, context=context, timeout=20) as response:
        print(response.status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except (OSError, http.client.HTTPException) as exc:
    print("no answer:", type(exc).__name__, exc)
"""


# One Qdrant request, from python3 in a container: prints {"status": ..., "body": ...}. argv:
# the CA file (the name of an environment variable that holds its path, or the path), method,
# URL, the api-key header's value, then an optional JSON body.
QDRANT_CALL = """\
import json, os, ssl, sys, urllib.error, urllib.request
context = ssl.create_default_context(cafile=os.environ.get(sys.argv[1], sys.argv[1]))
method, url, key = sys.argv[2:5]
data = sys.argv[5].encode() if len(sys.argv) > 5 else None
headers = {"api-key": key, "Content-Type": "application/json"}
request = urllib.request.Request(url, data=data, method=method, headers=headers)
try:
    with urllib.request.urlopen(request, context=context, timeout=20) as response:
        status, body = response.status, response.read()
except urllib.error.HTTPError as exc:
    status, body = exc.code, exc.read()
try:
    body = json.loads(body or b"null")
except ValueError:
    body = body.decode(errors="replace")
print(json.dumps({"status": status, "body": body}))
"""
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")


def instance_env(fleet: Fleet, name: str) -> dict[str, str]:
    """The env file instance ``name`` runs with (the generated one, in its bundle directory)."""
    running = fleet.instances[name]
    text = (running.bundle_dir / bundle.env_file_name(running.inst)).read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def container_env(fleet: Fleet, name: str) -> dict[str, str]:
    """The environment of instance ``name``'s container, as Docker holds it."""
    container = fleet.instances[name].compose("ps", "--quiet").stdout.split()[0]
    found = run("docker", "inspect", "-f", "{{json .Config.Env}}", container).stdout
    return dict(item.split("=", 1) for item in json.loads(found))


def qdrant_requests(fleet: Fleet) -> list[dict[str, Any]]:
    return [e for e in doubles_log(fleet) if e["service"] == "qdrant"]


def qdrant_from_instance(
    fleet: Fleet, name: str, method: str, path: str, key: str, body: Any = None
) -> tuple[int, Any]:
    """A request to Qdrant from inside instance ``name``'s container, over HTTPS verified with
    the container's own SSL_CERT_FILE, with ``key`` as its api-key."""
    args = [QDRANT_CALL, "SSL_CERT_FILE", method, f"{fleet.plan.qdrant_url}{path}", key]
    if body is not None:
        args.append(json.dumps(body))
    found = json.loads(in_instance(fleet, name, "python3", "-c", *args))
    return found["status"], found["body"]


def test_the_qdrant_double_checks_keys_and_tokens_as_qdrant_does(fleet: Fleet) -> None:
    """The double is honest, as Qdrant with api_key and jwt_rbac: no credential or a wrong key
    get 401, a token signed with another key 403; the server key may do anything; a collection
    token reads and writes its own collections (a read-only one only reads), lists only them,
    and gets 403 on any other collection, on making or deleting a collection and on anything
    global. Every probe verifies the certificate the fleet CA issued for the shared address.
    The log holds the claims it decoded, never a token or the key."""
    alpha, beta = (fleet.instances[n].inst for n in ("alpha", "beta"))
    own, others = f"/collections/{alpha.qdrant_collections[0]}", f"/collections/{beta.qdrant_collections[0]}"  # fmt: skip
    token = qdrant_access.token(fleet.qdrant_key, alpha.qdrant_collections)
    forged = qdrant_access.token("not-the-server-key", alpha.qdrant_collections)
    read_only = qdrant_access.signed(
        fleet.qdrant_key,
        {
            "access": [{"collection": alpha.qdrant_collections[0], "access": "r"}],
            "exp": qdrant_access.EXPIRY,
        },
    )

    def probe(path: str, *headers: str) -> str:
        url = f"{fleet.plan.qdrant_url}{path}"
        ca = f"/test/{ca_target.CA_FILE}"
        return fleet.in_shared("python3", "-c", HTTPS_PROBE, ca, "GET", url, *headers).strip()

    assert probe("/collections") == "401"
    assert probe("/readyz") == "200"  # whitelisted, as in Qdrant
    assert probe("/collections", f"Authorization: Bearer {token}") == "200"
    # A key that is no JWT: 401. A JWT signed with another key: 403, as Qdrant's JwtParser
    # answers an invalid signature.
    assert fleet.qdrant("GET", "/collections", key="wrong")[0] == 401
    assert fleet.qdrant("GET", "/collections", key=forged)[0] == 403
    everyone = {c for r in fleet.instances.values() for c in r.inst.qdrant_collections}
    status, body = fleet.qdrant("GET", "/collections")
    assert status == 200 and {c["name"] for c in body["result"]["collections"]} == everyone
    status, body = fleet.qdrant("GET", "/collections", key=token)
    assert status == 200, body
    listed = sorted(c["name"] for c in body["result"]["collections"])
    assert listed == sorted(alpha.qdrant_collections), body
    status, body = fleet.qdrant("GET", f"{own}/exists", key=token)
    assert (status, body["result"]) == (200, {"exists": True})
    assert fleet.qdrant("GET", f"{others}/exists", key=token)[0] == 403
    assert fleet.qdrant("POST", f"{others}/points/count", {}, key=token)[0] == 403
    new = {"vectors": {"size": 4, "distance": "Cosine"}}
    assert fleet.qdrant("PUT", f"/collections/{alpha.qdrant_collection_prefix}_extra", new, key=token)[0] == 403  # fmt: skip
    assert fleet.qdrant("DELETE", own, key=token)[0] == 403
    assert fleet.qdrant("GET", "/cluster", key=token)[0] == 403
    assert fleet.qdrant("POST", f"{own}/points/count", {}, key=read_only)[0] == 200
    point = {"id": str(uuid.uuid4()), "vector": [0.0] * fleet.plan.embedding_dimensions}
    upsert = fleet.qdrant("PUT", f"{own}/points?wait=true", {"points": [point]}, key=read_only)
    assert upsert[0] == 403, upsert
    assert fleet.qdrant("GET", own)[0] == 200  # still there
    text = fleet.in_shared("cat", "/srv/doubles.log")
    for secret in (fleet.qdrant_key, token, forged, read_only):
        assert secret not in text
    decoded = [e["claims"] for e in qdrant_requests(fleet) if e["auth"] == "jwt"]
    assert qdrant_access.claims(alpha.qdrant_collections) in decoded


def test_the_generated_script_made_every_instances_collections(fleet: Fleet) -> None:
    """Before the instances started, the shared host's generated qdrant-collections.sh, run as
    its unit runs it, made each instance's five collections over HTTPS with the server key:
    the embedding model's vector length and the payload indexes Open WebUI would make."""
    names = [c for r in fleet.instances.values() for c in r.inst.qdrant_collections]
    made = re.findall(r"^owuibuild: made Qdrant collection (\S+)$", fleet.collections_made, re.M)
    assert made == names, fleet.collections_made
    indexes = {i["field_name"]: i["field_schema"] for i in qdrant_access.INDEXES}
    for name in names:
        status, body = fleet.qdrant("GET", f"/collections/{name}")
        assert status == 200, (name, body)
        config = body["result"]["config"]
        assert config["params"]["vectors"]["size"] == fleet.plan.embedding_dimensions, config
        assert config["params"]["vectors"]["distance"] == "Cosine", config
        assert config["hnsw_config"] == qdrant_access.HNSW, config
        schema = body["result"]["payload_schema"]
        assert {field: entry["params"] for field, entry in schema.items()} == indexes, schema
    script = [e for e in qdrant_requests(fleet) if str(e["agent"]).startswith("curl/")]
    shared = str(fleet.plan.shared.host.address)
    assert script and all(e["source"] == shared and e["tls"] in TLS_VERSIONS for e in script)
    assert all(e["auth"] == "api-key" for e in script if e["path"].startswith("/collections"))
    made_with = {(e["method"], e["path"].split("?")[0]) for e in script if e["method"] == "PUT"}
    assert made_with == {
        (method, f"/collections/{name}{rest}") for name in names for method, rest in (("PUT", ""), ("PUT", "/index"))
    }  # fmt: skip


def test_each_instance_keeps_its_memories_in_its_own_collection_with_its_own_token(
    fleet: Fleet,
) -> None:
    """Each instance's own code path: a memory its admin adds is embedded by the Ollama double
    (through the terminator) and upserted into <prefix>_memories, and a memory query finds it.
    Every request Open WebUI made to Qdrant carried that instance's token (the double decoded
    exactly the claims the generator grants it), over TLS 1.2 or later, and was answered 200;
    the point has the fleet's embedding length and lives in that collection alone. The
    generated script, run again, makes nothing and leaves the points alone."""
    tenants = {}
    for name, running in fleet.instances.items():
        admin = admins(fleet)[name]
        content = f"{name} keeps this memory to itself"
        status, memory = http("POST", f"{running.url}/api/v1/memories/add", {"content": content},
                              token=admin["token"])  # fmt: skip
        assert status == 200 and memory["content"] == content, (name, status, memory)
        status, found = http("POST", f"{running.url}/api/v1/memories/query",
                             {"content": content, "k": 1}, token=admin["token"])  # fmt: skip
        assert status == 200 and found["ids"] == [[memory["id"]]], (name, status, found)
        tenants[name] = (f"user-memory-{admin['id']}", memory["id"])

    hosts = {str(r.inst.host.address) for r in fleet.instances.values()}
    log = [e for e in qdrant_requests(fleet) if e["source"] in hosts and from_open_webui(e)]
    for name, running in fleet.instances.items():
        inst = running.inst
        mine = [e for e in log if e["source"] == str(inst.host.address)]
        memories = f"/collections/{inst.qdrant_collection_prefix}_memories"
        calls = {(e["method"], e["path"].split("?")[0]) for e in mine}
        assert {("PUT", f"{memories}/points"), ("POST", f"{memories}/points/query")} <= calls, (name, calls)  # fmt: skip
        claims = qdrant_access.claims(inst.qdrant_collections)
        wrong = [e for e in mine if (e["auth"], e["auth_ok"], e["claims"]) != ("jwt", True, claims)]
        assert not wrong, (name, wrong)
        assert all(e["tls"] in TLS_VERSIONS and e["status"] == 200 for e in mine), (name, mine)

    def points(collection: str) -> list[dict[str, Any]]:
        body = {"limit": 100, "with_payload": True, "with_vector": True}
        status, found = fleet.qdrant("POST", f"/collections/{collection}/points/scroll", body)
        assert status == 200, found
        return list(found["result"]["points"])

    def stored() -> dict[str, list[tuple[str, str, int]]]:
        return {
            collection: [(p["payload"]["tenant_id"], p["id"], len(p["vector"])) for p in points(collection)]
            for r in fleet.instances.values() for collection in r.inst.qdrant_collections
        }  # fmt: skip

    before = stored()
    dimensions = fleet.plan.embedding_dimensions
    assert before == {
        collection: (
            [(*tenants[r.inst.name], dimensions)] if collection.endswith("_memories") else []
        )
        for r in fleet.instances.values()
        for collection in r.inst.qdrant_collections
    }, before
    embedded = [e for e in doubles_log(fleet) if e["service"] == "ollama" and e["path"] == "/api/embed"]  # fmt: skip
    assert {e["forwarded_for"] for e in embedded} == hosts, embedded
    again = run_collections_script(fleet)
    assert "made" not in again, again
    assert stored() == before


def test_an_instance_cannot_use_another_instances_token(fleet: Fleet) -> None:
    """From inside each instance's container, over HTTPS verified with its own SSL_CERT_FILE:
    its own token (in its environment, signed by the generator for its five collections) reads
    its memories collection; the other instance's token gets 403 there, reading or writing,
    and lists only the other instance's collections."""
    names = list(fleet.instances)
    for name, other in zip(names, names[1:] + names[:1], strict=True):
        inst = fleet.instances[name].inst
        own, theirs = instance_env(fleet, name)["QDRANT_API_KEY"], instance_env(fleet, other)["QDRANT_API_KEY"]  # fmt: skip
        assert own == qdrant_access.token(fleet.qdrant_key, inst.qdrant_collections)
        assert container_env(fleet, name)["QDRANT_API_KEY"] == own
        memories = f"/collections/{inst.qdrant_collection_prefix}_memories"
        status, body = qdrant_from_instance(fleet, name, "GET", f"{memories}/exists", own)
        assert (status, body["result"]) == (200, {"exists": True}), (name, body)
        status, _ = qdrant_from_instance(fleet, name, "GET", f"{memories}/exists", theirs)
        assert status == 403, name
        scroll = f"{memories}/points/scroll"
        assert qdrant_from_instance(fleet, name, "POST", scroll, theirs, {})[0] == 403, name
        point = {"id": str(uuid.uuid4()), "vector": [0.5] * fleet.plan.embedding_dimensions,
                 "payload": {"tenant_id": "intruder"}}  # fmt: skip
        status, _ = qdrant_from_instance(fleet, name, "PUT", f"{memories}/points?wait=true",
                                         theirs, {"points": [point]})  # fmt: skip
        assert status == 403, name
        status, body = qdrant_from_instance(fleet, name, "GET", "/collections", theirs)
        listed = sorted(c["name"] for c in body["result"]["collections"])
        assert listed == sorted(fleet.instances[other].inst.qdrant_collections), (name, body)


def test_open_webui_cannot_reset_the_vector_store(fleet: Fleet) -> None:
    """The price of the scoped token: Open WebUI's "reset vector storage" lists its collections
    (Qdrant lists only the token's own) and deletes them, which needs manage access: Qdrant
    refuses, Open WebUI answers an error, and every collection and point stays."""
    running = fleet.instances["beta"]
    prefix = running.inst.qdrant_collection_prefix
    before = {c: fleet.qdrant("GET", f"/collections/{c}")[1]["result"]["points_count"]
              for c in running.inst.qdrant_collections}  # fmt: skip
    assert before[f"{prefix}_memories"] == 1, before
    token = admins(fleet)["beta"]["token"]
    status, _ = http("POST", f"{running.url}/api/v1/retrieval/reset/db", token=token)
    assert status >= 500, status
    deletes = [
        e
        for e in qdrant_requests(fleet)
        if e["source"] == str(running.inst.host.address) and e["method"] == "DELETE"
    ]
    assert deletes and all(e["status"] == 403 for e in deletes), deletes
    assert all(e["path"].startswith(f"/collections/{prefix}_") for e in deletes), deletes
    after = {c: fleet.qdrant("GET", f"/collections/{c}")[1]["result"]["points_count"]
             for c in running.inst.qdrant_collections}  # fmt: skip
    assert after == before


def test_the_qdrant_server_key_stays_off_the_instances(fleet: Fleet) -> None:
    """Qdrant's server key is in no file generated for an instance or its host, and in no
    instance container's environment: each has only its own token."""
    key = fleet.qdrant_key
    hosts = {r.inst.host.name for r in fleet.instances.values()}
    checked = [
        path
        for path in fleet.rendered.files
        if path.startswith("instances/") or path.split("/")[:2] in [["hosts", h] for h in hosts]
    ]
    assert {p.rsplit("/", 1)[-1] for p in checked} >= {"user-data", "compose.yaml"}, checked
    for path in checked:
        assert key.encode() not in fleet.rendered.files[path], path
    for name in fleet.instances:
        env = container_env(fleet, name)
        assert key not in json.dumps(env), name
        assert env["QDRANT_API_KEY"] == instance_env(fleet, name)["QDRANT_API_KEY"] != key
        assert key not in in_instance(fleet, name, "env"), name


def test_qdrant_answers_no_plain_http(fleet: Fleet) -> None:
    """From an instance's container, Qdrant's port answers HTTPS with the instance's token, and
    nothing at all to the same request in plain text."""
    for name, running in fleet.instances.items():
        token = f"api-key: {instance_env(fleet, name)['QDRANT_API_KEY']}"
        where = f"{fleet.plan.shared.host.address}:{QDRANT_PORT}/collections/{running.inst.qdrant_collections[0]}/exists"  # fmt: skip
        tls = in_instance(fleet, name, "python3", "-c", HTTPS_PROBE, "SSL_CERT_FILE", "GET",
                          f"https://{where}", token).strip()  # fmt: skip
        assert tls == "200", (name, tls)
        plain = in_instance(fleet, name, "python3", "-c", HTTPS_PROBE, "SSL_CERT_FILE", "GET",
                            f"http://{where}", token).strip()  # fmt: skip
        assert plain.startswith("no answer:"), (name, plain)
    qdrant = qdrant_requests(fleet)
    assert qdrant and all(e["tls"] for e in qdrant), [e for e in qdrant if not e["tls"]]


def test_open_webui_reaches_ollama_through_the_tls_terminator(fleet: Fleet) -> None:
    """Each instance's model list comes from the Ollama double, over HTTPS to the generated
    Caddy configuration and on to Ollama's loopback port: the double's one model is listed only
    if the whole round trip worked, and the double logs Open WebUI's request arriving from
    the terminator (on loopback, as Ollama's own address, forwarded for the instance's host)."""
    assert all(url.startswith("https://") for url in fleet.plan.ollama_urls)
    for name, running in fleet.instances.items():
        token = admins(fleet)[name]["token"]
        status, body = http("GET", f"{running.url}/ollama/api/tags", token=token)
        assert status == 200, (name, status, body)
        assert [m["model"] for m in body["models"]] == ["test-double:latest"], (name, body)
    log = [e for e in doubles_log(fleet) if e["service"] == "ollama" and from_open_webui(e)]
    for name, running in fleet.instances.items():
        mine = [e for e in log if e["forwarded_for"] == str(running.inst.host.address)]
        assert any(e["path"] == "/api/tags" for e in mine), (name, log)
    assert log and all(e["source"] == OLLAMA_LOOPBACK for e in log), log
    assert all(e["host"] == ollama_tls.upstream() for e in log), log
    for name, running in fleet.instances.items():
        assert http("GET", f"{running.url}/health") == (200, {"status": True}), name


def test_the_terminator_closes_model_management_to_instances(fleet: Fleet) -> None:
    """From inside an instance, over HTTPS verified with the container's own SSL_CERT_FILE: the
    model list passes the terminator; pulling, deleting and the other management endpoints get
    403 and never reach Ollama, nor does a plain-text request."""
    assert not fleet.plan.fleet.shared.ollama.allow_model_management
    where = f"{fleet.plan.shared.host.address}:{OLLAMA_PORT}"
    marker = uuid.uuid4().hex

    def probe(method: str, path: str, scheme: str = "https") -> str:
        url = f"{scheme}://{where}{path}?probe={marker}"
        args = ("python3", "-c", HTTPS_PROBE, "SSL_CERT_FILE", method, url)
        return in_instance(fleet, "alpha", *args).strip()

    assert probe("GET", "/api/tags") == "200"
    assert probe("GET", "/api/version") == "200"
    refused = [("POST", "/api/pull"), ("DELETE", "/api/delete"), ("POST", "/api/push"),
               ("POST", "/api/create"), ("POST", "/api/copy"), ("POST", "/api/blobs/sha256:00")]  # fmt: skip
    for method, path in refused:
        assert probe(method, path) == "403", (method, path)
    # Caddy's TLS listener answers a plain-text request itself (400); it goes no further.
    plain = probe("POST", "/api/pull", scheme="http")
    assert plain == "400" or plain.startswith("no answer:"), plain
    seen = [
        (e["method"], e["path"].split("?")[0]) for e in doubles_log(fleet) if marker in e["path"]
    ]
    assert seen == [("GET", "/api/tags"), ("GET", "/api/version")], seen
    # The control: a pull that does reach the double (on loopback, in the shared host) is logged.
    ca = f"/test/{ca_target.CA_FILE}"
    url = f"http://{OLLAMA_LOOPBACK}:{OLLAMA_PORT}/api/pull?probe={marker}-direct"
    assert fleet.in_shared("python3", "-c", HTTPS_PROBE, ca, "POST", url).strip() == "200"
    direct = [
        (e["method"], e["path"]) for e in doubles_log(fleet) if f"{marker}-direct" in e["path"]
    ]
    assert direct == [("POST", f"/api/pull?probe={marker}-direct")], direct


def test_open_webui_still_trusts_public_cas(fleet: Fleet) -> None:
    """The bundle SSL_CERT_FILE names in the container holds public CAs and the fleet CA, and
    it is what Open WebUI's HTTPS clients load: httpx (Qdrant's client) and Python's default
    context (aiohttp's, for Ollama) take it in place of their own, requests takes
    REQUESTS_CA_BUNDLE. No network is needed."""
    script = """\
import json, os, ssl, sys
import httpx, requests
fleet_ca = ssl.PEM_cert_to_DER_cert(open(sys.argv[1]).read())
out = {"env": os.environ.get("SSL_CERT_FILE")}
contexts = {"bundle": ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"]),
            "httpx": httpx.create_ssl_context(), "default": ssl.create_default_context()}
for name, context in contexts.items():
    out[name] = {"cas": context.cert_store_stats()["x509_ca"],
                 "fleet_ca": fleet_ca in context.get_ca_certs(binary_form=True)}
settings = requests.Session().merge_environment_settings("https://example.org/", {}, None, True, None)
out["requests"] = settings["verify"]
print(json.dumps(out))
"""
    for name in fleet.instances:
        found = json.loads(in_instance(fleet, name, "python3", "-c", script, FLEET_CA))
        assert found["env"] == CA_BUNDLE and found["requests"] == CA_BUNDLE, (name, found)
        for client in ("bundle", "httpx", "default"):
            assert found[client]["fleet_ca"] and found[client]["cas"] > 1, (name, client, found)


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
