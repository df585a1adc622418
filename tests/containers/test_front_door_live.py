"""Containers tier: the front door (blueprint: front_door), the real Caddy from the generated
configuration in front of real Open WebUI instances, with certificates from the fleet CA and
then from a real ACME CA.

Everything runs on one Docker network that this module creates as `--internal` (nothing on it
can reach beyond it), with a subnet no other module of this tier uses, 10.213.11.0/24: a
blueprint with `front_door: {tls: internal, max_upload_mb: 1}` and two instances, alpha and
beta, on ONE Docker host, web-a, each with its own WEBUI_NAME (fixture `door`):

- the "shared host" container of tests/containers/test_instances_live.py, imported from it,
  not copied: REAL PostgreSQL 15 and Redis from the generated shared-host configuration, and
  TEST DOUBLES of Ollama (behind the real Caddy as its generated TLS terminator) and Qdrant
  (tests/containers/shared_doubles.py: small servers, NOT Ollama or Qdrant, whose servers
  cannot be had here). For this module the Ollama double streams a chat answer as Ollama
  does, in pieces a second apart, and logs when it sent each;
- a "web-a" container at web-a's address, carrying the instances' host names as network
  aliases (Docker's DNS answers them with web-a's address, as the fleet's DNS would). It
  runs the REAL Caddy (Debian's package) as the generated unit runs it (its User, its
  Environment, its ExecStart), from web-a's user-data: the front door's files written at
  their generated paths with their generated modes (the JSON configuration, the certificate
  the fleet CA issued for the host's instance names, its key) and the generated setup
  commands run as written (storage on the data volume's path, the key copied for caddy).
  Nothing in the configuration is changed. Docker lets any user of a container bind ports
  below 1024, which is what the unit's CAP_NET_BIND_SERVICE grants caddy on a host;
- each instance, the REAL Open WebUI 0.12.4 image (built locally, tagged with the reference
  the generator writes), from its generated compose.yaml and env file, unmodified, with a
  compose override that:
  * joins web-a's network namespace (`network_mode: container:<web-a>`, with the generated
    `ports` and `networks` reset), because one Caddy must reach both instances on loopback
    and Docker cannot publish into another container. Their connections to PostgreSQL and
    Redis then come from web-a's address, as the generated pg_hba expects;
  * runs the image's command with `--host` and `--port` taken from the generated port
    publication (its host_ip, 127.0.0.1, and its published port): in the shared namespace the
    instance listens exactly where the host's loopback publication would put it, and only
    there. The healthcheck's URL follows (the generated test, with that address and port);
  * sets FORWARDED_ALLOW_IPS to 127.0.0.1, where Caddy connects from here: on a host, Caddy
    reaches the container through Docker's publication, from the instance network's gateway,
    which the generated env file names (checked against the plan, not live);
  * configures GitHub as an OAuth provider (a made-up client id and secret), so that Open
    WebUI builds an absolute URL from the request it gets: its OAuth login redirects to
    GitHub with a redirect_uri of the instance's own, the URL an operator sees come back as
    http:// when the proxy's X-Forwarded-Proto is not believed. Nothing dials GitHub: the
    login only answers a redirect, which the client reports and never follows;
  * binds the test's fleet CA and CA bundle where the bundle mounts the host's, and points
    the data volume at a temporary directory, as test_instances_live.py does;
- a client container (Debian's python3 and curl) at another address of the network: every
  probe is a browser's request from there (tests/containers/front_door/client.py), by host
  name, verified against the fleet CA.

ACME (fixture `acme`, its tests last in this module, while the same instances keep running):
the same blueprint with `front_door: {tls: acme, acme: {email, directory, directory_ca}}`,
rendered from a copy of the door's blueprint directory, its secrets files included, so that
every instance's bundle (env file, passwords, compose file) is the one already running (the
fixture checks they are byte for byte the same). REAL pebble (Debian's ACME test server) joins
the network, its alias the directory's host name, serving HTTPS with a certificate from a CA
this test makes (the blueprint's directory_ca), validating for real (no
PEBBLE_VA_ALWAYS_VALID): it resolves the instance host names through Docker's DNS to the
web-a container and checks each against Caddy, by HTTP-01 on port 80 or TLS-ALPN-01 on 443,
whichever Caddy picks. In web-a's container the fleet CA's Caddy is stopped and Caddy started
the same way from the ACME render's files and commands (the blueprint's directory_ca at its
generated path), in front of the real instances; when the fixture ends, pebble is gone, the
ACME state is removed and the fleet CA's Caddy runs again.

Browsers speak HTTP/2 to the front door, so the 413 test checks HTTP/2 as well as HTTP/1.1.

Nothing here dials a blueprint address from this machine: every probe runs in a container on
the test's own network.
"""

from __future__ import annotations

import datetime
import json
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Rendered, compile_path, unavailable
from infra.docker_engine import (
    docker_unavailable_reason,
    engine_major,
    ensure_base_image,
    ensure_openwebui_image,
)
from owuibuild import bundle, pki
from owuibuild.hostconfig import front_door
from owuibuild.plan import (
    CA_BUNDLE,
    FLEET_CA,
    HTTP_PORT,
    HTTPS_PORT,
    LOOPBACK,
    OPENWEBUI_CONTAINER_PORT,
    HostPlan,
    InstancePlan,
    Plan,
)
from owuibuild.targets import ca as ca_target
from test_instances_live import (
    LISTENING,
    UP_TIMEOUT,
    Fleet,
    ca_bundle_for,
    doubles_log,
    ensure_shared_image,
    run,
    shared_config,
    start_shared,
    write_bundle_files,
)

pytestmark = pytest.mark.containers

FRONT_IMAGE = "local/owuibuild-front-door-test:bookworm-1"
FRONT_DOCKERFILE = """\
FROM local/debian:bookworm
LABEL org.owuibuild.image=front-door-test
RUN apt-get update \\
 && apt-get install -y --no-install-recommends caddy curl python3 pebble \\
 && rm -rf /var/lib/apt/lists/*
"""
CLIENT = Path(__file__).with_name("front_door") / "client.py"

NAME = "fdtest"
OCTET = 11  # the network is 10.213.<OCTET>.0/24
WEBUI_NAMES = {"alpha": "Alpha Front", "beta": "Beta Front"}
UPLOAD_LIMIT_MB = 1
DOOR = {"tls": "internal", "max_upload_mb": UPLOAD_LIMIT_MB}  # the blueprint's front_door

ACME_DIRECTORY_HOST = "acme.fd.test"
ACME_PORT = 14000
ACME_MANAGEMENT_PORT = 15000
ACME_EMAIL = "ops@fd.test"
ACME_ISSUER = f"{ACME_DIRECTORY_HOST}-{ACME_PORT}-dir"  # Caddy's name for this CA in its storage
DIRECTORY_CA = "/test/directory-ca.crt"  # in the client: the CA of pebble's own HTTPS
PEBBLE_ROOT = "/test/pebble-root.crt"  # in the client: pebble's issuing root

# Open WebUI's OAuth login for GitHub, whose client needs no discovery over the network: the
# login only redirects, with the redirect_uri Open WebUI builds from the request it gets.
GITHUB_OAUTH = {"GITHUB_CLIENT_ID": "front-door-test", "GITHUB_CLIENT_SECRET": "not-a-secret"}
OAUTH_LOGIN = "/oauth/github/login"
OAUTH_CALLBACK = "/oauth/github/callback"  # the callback route Open WebUI names first

FOREIGN_ORIGIN = "https://elsewhere.example"
CLIENT_OCTET = 50  # the client container's address in the subnet
MODEL = "test-double:latest"  # the one model the Ollama double lists
PIECES = ["piece-0 ", "piece-1 ", "piece-2 ", "piece-3 "]  # its streamed chat answer

# The two ways web-a's container runs Caddy: from the render with tls: internal (the door
# fixture's), and from the one with tls: acme (the acme fixture's).
INTERNAL, ACME = "internal", "acme"


def blueprint(door: dict[str, Any]) -> str:
    """Two instances with their own host names and WEBUI_NAMEs on one Docker host, web-a, on
    10.213.<OCTET>.0/24, behind the front door ``door``."""
    net = f"10.213.{OCTET}"
    text = f"""\
apiVersion: owuibuild/v1
name: {NAME}
os: {{distro: debian-12, timezone: UTC}}
admin:
  user: ops
  ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeTestKeyOnlyNotARealKey00000000000000000 ops@laptop]
  allow_from: [{net}.0/24]
network: {{cidr: {net}.0/24, gateway: {net}.1, dns: [{net}.1]}}
shared:
  host: {{name: shared, address: {net}.24, memory_gb: 32, data_volume: {{label: owui-data}}}}
  postgres: {{max_connections: 100}}
hosts:
  - {{name: web-a, address: {net}.30, memory_gb: 8, data_volume: {{label: owui-data}}}}
instances:
  - {{name: alpha, host: web-a, port: 3001, url: https://alpha.fd.test,
     env: {{WEBUI_NAME: {WEBUI_NAMES["alpha"]}}}, admin: {{email: root@alpha.test, name: Alpha Admin}}}}
  - {{name: beta, host: web-a, port: 3002, url: https://beta.fd.test,
     env: {{WEBUI_NAME: {WEBUI_NAMES["beta"]}}}, admin: {{email: root@beta.test}}}}
"""
    return text + yaml.safe_dump({"front_door": door}, sort_keys=False)


def render(directory: Path, door: dict[str, Any]) -> Rendered:
    """The blueprint with the front door ``door``, as fleet.yml in ``directory`` (where its
    secrets files are, or will be made)."""
    directory.mkdir(exist_ok=True)
    path = directory / "fleet.yml"
    path.write_text(blueprint(door))
    rendered = compile_path(path)
    assert isinstance(rendered.plan, Plan)
    return rendered


# -- the pieces: images, the front door's host, the client, the instances ------------------------


def ensure_front_image(workdir: Path) -> None:
    if run("docker", "image", "inspect", FRONT_IMAGE, check=False).returncode == 0:
        return
    ensure_base_image()
    ctx = workdir / "front-image"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(FRONT_DOCKERFILE)
    run("docker", "build", "-t", FRONT_IMAGE, str(ctx), timeout=1200)


@dataclass(frozen=True)
class DoorUnit:
    """How owui-front-door.service runs Caddy, read from its generated unit file."""

    user: str
    environment: list[str]
    command: list[str]
    reload: list[str]  # ExecReload: Caddy's reload through its admin socket
    runtime_directory: str  # under /run, the admin socket's, made by systemd for the unit


def user_data_file(r: Rendered, host: str, path: str) -> dict[str, Any]:
    (entry,) = [f for f in r.user_data(host)["write_files"] if f["path"] == path]
    assert "encoding" not in entry, entry  # written as text
    return dict(entry)


def door_unit(r: Rendered, host: str) -> DoorUnit:
    text = user_data_file(r, host, front_door.UNIT)["content"]
    settings = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return DoorUnit(
        settings["User"],
        shlex.split(settings["Environment"]),
        shlex.split(settings["ExecStart"]),
        shlex.split(settings["ExecReload"]),
        f"/run/{settings['RuntimeDirectory']}",
    )


def door_files(r: Rendered, host: str) -> list[dict[str, Any]]:
    """The front door's files in the host's user-data (its unit aside)."""
    paths = (front_door.CONFIG, front_door.CERT, front_door.KEY, front_door.ACME_DIRECTORY_CA)
    return [f for f in r.user_data(host)["write_files"] if f["path"] in paths]


def door_commands(r: Rendered, host: str, internal: bool) -> list[list[str]]:
    """The front door's setup commands, as the host's user-data runs them (in its order)."""
    wanted = [list(c) for c in front_door.key_commands(internal)]
    found = [list(c) for c in r.user_data(host)["runcmd"] if list(c) in wanted]
    assert found == wanted, (found, wanted)
    return found


def caddy_log(run_name: str) -> str:
    return f"/srv/caddy-{run_name}.log"


def caddy_pid(run_name: str) -> str:
    return f"/srv/caddy-{run_name}.pid"


def caddy_script(r: Rendered, host: HostPlan, run_name: str) -> str:
    """What starts the front door in web-a's container from the render ``r``: its generated
    files (from /test/<run_name>/files) and setup commands, then Caddy as its unit runs it, in
    the background; the script ends once Caddy listens on both ports."""
    internal = r.plan.front_door.tls == "internal"  # type: ignore[attr-defined]
    lines = ["#!/bin/sh", "set -eu"]
    for n, entry in enumerate(door_files(r, host.name)):
        mode = entry.get("permissions", "0644")
        source = f"/test/{run_name}/files/{n}"
        lines.append(shlex.join(["install", "-D", "-m", mode, source, entry["path"]]))
    lines += [shlex.join(c) for c in door_commands(r, host.name, internal)]
    unit = door_unit(r, host.name)
    # What systemd makes for the unit (RuntimeDirectory, RuntimeDirectoryMode=0700).
    runtime = ["install", "-d", "-o", unit.user, "-g", unit.user, "-m", "0700"]
    lines.append(shlex.join([*runtime, unit.runtime_directory]))
    caddy = ["runuser", "-u", unit.user, "--", "env", *unit.environment, *unit.command]
    log = caddy_log(run_name)
    lines.append(shlex.join(caddy) + f" >>{log} 2>&1 &")
    lines.append(f"echo $! >{caddy_pid(run_name)}")
    address = str(host.host.address)
    ready = [f"{address}:{HTTPS_PORT}", f"{address}:{HTTP_PORT}"]
    lines.append(f"python3 /test/listening.py {shlex.join(ready)} || {{ cat {log}; exit 1; }}")
    return "\n".join(lines) + "\n"


def place_caddy(r: Rendered, host: HostPlan, front_dir: Path, run_name: str) -> str:
    """Write Caddy's files and start script from the render ``r`` into web-a's container's
    /test (``front_dir`` here); the script's path there."""
    test_dir = front_dir / run_name
    (test_dir / "files").mkdir(parents=True, exist_ok=True)
    for n, entry in enumerate(door_files(r, host.name)):
        (test_dir / "files" / str(n)).write_text(entry["content"])
    (test_dir / "start.sh").write_text(caddy_script(r, host, run_name))
    return f"/test/{run_name}/start.sh"


def wait_ready(container: str, what: str) -> None:
    deadline = time.monotonic() + 120
    while run("docker", "exec", container, "test", "-f", "/srv/ready", check=False).returncode:
        state = run("docker", "inspect", "-f", "{{.State.Running}}", container).stdout.strip()
        if state != "true" or time.monotonic() > deadline:
            logs = run("docker", "logs", container, check=False)
            raise AssertionError(f"{what} did not start:\n{logs.stdout}{logs.stderr}")
        time.sleep(0.5)


def start_front(r: Rendered, host: HostPlan, network: str, name: str, front_dir: Path) -> None:
    """web-a's container: at web-a's address, answering for its instances' host names, with
    the fleet CA's Caddy. Its init reaps what it runs, so that a stopped Caddy is gone."""
    front_dir.mkdir()
    (front_dir / "listening.py").write_text(LISTENING)
    script = place_caddy(r, host, front_dir, INTERNAL)
    aliases = [
        a for i in host.instances if i.server_name for a in ("--network-alias", i.server_name)
    ]
    where = ["--network", network, "--ip", str(host.host.address), *aliases]
    command = f"/bin/sh {script} && touch /srv/ready && exec sleep infinity"
    run("docker", "run", "-d", "--init", "--name", name, *where, "-v", f"{front_dir}:/test:ro",
        FRONT_IMAGE, "/bin/sh", "-c", command)  # fmt: skip
    wait_ready(name, "the front door's container")


# Stop the Caddy a pid file names (runuser, which passes SIGTERM on to Caddy), and wait until
# it is gone; nothing to do when none runs.
STOP_CADDY = """\
[ -f "$1" ] || exit 0
pid=$(cat "$1")
rm -f "$1"
kill "$pid" 2>/dev/null || exit 0
for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
echo "Caddy ($pid) did not stop" >&2
exit 1
"""


def stop_caddy(door: Door, run_name: str) -> None:
    run("docker", "exec", door.front, "/bin/sh", "-c", STOP_CADDY, "stop", caddy_pid(run_name))


def start_caddy(door: Door, r: Rendered, run_name: str) -> None:
    """Caddy in web-a's running container, from the render ``r``, started as start_front
    starts the fleet CA's."""
    script = place_caddy(r, door.host, door.front_dir, run_name)
    run("docker", "exec", door.front, "/bin/sh", script, timeout=120)


def start_client(network: str, address: str, name: str, workdir: Path, cas: dict[str, str]) -> Path:
    """The client container; ``cas`` are CA files (name: PEM) it verifies servers with."""
    test_dir = workdir / "client"
    test_dir.mkdir()
    (test_dir / "client.py").write_text(CLIENT.read_text())
    for file_name, pem in cas.items():
        (test_dir / file_name).write_text(pem)
    where = ["--network", network, "--ip", address]
    run("docker", "run", "-d", "--name", name, *where, "-v", f"{test_dir}:/test",
        FRONT_IMAGE, "sleep", "infinity")  # fmt: skip
    return test_dir


@dataclass
class Site:
    """An instance behind the front door, run from its generated bundle and an override."""

    inst: InstancePlan
    project: str
    bundle_dir: Path

    @property
    def override(self) -> Path:
        return self.bundle_dir.parent / f"{self.inst.name}.override.yaml"

    @property
    def compose_command(self) -> list[str]:
        files = ["-f", str(self.bundle_dir / bundle.COMPOSE_FILE), "-f", str(self.override)]
        return ["docker", "compose", "-p", self.project, *files]

    def compose(self, *args: str, timeout: float = 600) -> Any:
        return run(*self.compose_command, *args, timeout=timeout)

    @property
    def env(self) -> dict[str, str]:
        text = (self.bundle_dir / bundle.env_file_name(self.inst)).read_text()
        lines = [line for line in text.splitlines() if line and not line.startswith("#")]
        return dict(line.split("=", 1) for line in lines)

    @property
    def published(self) -> dict[str, Any]:
        """The generated compose file's one port publication."""
        doc = yaml.safe_load((self.bundle_dir / bundle.COMPOSE_FILE).read_text())
        (port,) = doc["services"][bundle.SERVICE]["ports"]
        return dict(port)


def place_site(fleet: Fleet, inst: InstancePlan, front: str, workdir: Path, suffix: str) -> Site:
    bundle_dir = workdir / "bundles" / inst.name
    bundle_dir.mkdir(parents=True)
    write_bundle_files(fleet.rendered, inst, bundle_dir)
    data_dir = workdir / "data" / inst.name
    data_dir.mkdir(parents=True)
    site = Site(inst, f"owuitest-fd-{inst.name}-{suffix}", bundle_dir)
    ca = workdir / "bundles" / ca_target.CA_FILE
    ca.write_bytes(fleet.rendered.files[ca_target.CA_FILE])
    ca_bundle = workdir / "bundles" / "ca-bundle.crt"
    ca_bundle.write_bytes(ca_bundle_for(fleet))
    listen, port = site.published["host_ip"], str(site.published["published"])
    generated = yaml.safe_load((bundle_dir / bundle.COMPOSE_FILE).read_text())
    health = generated["services"][bundle.SERVICE]["healthcheck"]
    inside = f"http://localhost:{OPENWEBUI_CONTAINER_PORT}"
    assert any(inside in part for part in health["test"]), health
    healthcheck: dict[str, Any] = {
        "test": [part.replace(inside, f"http://{listen}:{port}") for part in health["test"]]
    }
    if "start_interval" in health and engine_major() < bundle.START_INTERVAL_ENGINE:
        healthcheck["start_interval"] = None  # as test_instances_live.place_bundle drops it
    service: dict[str, Any] = {
        "network_mode": f"container:{front}",
        "ports": [],
        "networks": {},
        "command": ["open-webui", "serve", "--host", listen, "--port", port],
        "environment": {"FORWARDED_ALLOW_IPS": LOOPBACK, **GITHUB_OAUTH},
        "healthcheck": healthcheck,
        "volumes": [
            {"type": "bind", "source": str(ca), "target": FLEET_CA, "read_only": True},
            {"type": "bind", "source": str(ca_bundle), "target": CA_BUNDLE, "read_only": True},
        ],
    }
    override = {
        "services": {bundle.SERVICE: service},
        "volumes": {bundle.VOLUME: {"driver_opts": {"device": str(data_dir)}}},
    }
    text = yaml.safe_dump(override, sort_keys=False)
    text = text.replace("ports: []", "ports: !reset []", 1)
    text = text.replace("networks: {}", "networks: !reset {}", 1)
    text = text.replace("start_interval: null", "start_interval: !reset null", 1)
    site.override.write_text(text)
    return site


# -- the fixtures -------------------------------------------------------------------------------


@dataclass
class Door:
    """A front door's host (web-a) on a test network, and a client beside it."""

    rendered: Rendered
    plan: Plan
    host: HostPlan
    network: str
    front: str  # the web-a container
    front_dir: Path  # its /test (read-only there)
    client: str  # the client container
    client_dir: Path  # its /test
    suffix: str  # of this run's container and network names
    fleet: Fleet | None = None  # the shared host, with real instances
    sites: dict[str, Site] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return str(self.host.host.address)

    @property
    def client_address(self) -> str:
        return str(self.plan.fleet.network.cidr.network_address + CLIENT_OCTET)

    def url(self, name: str, path: str = "/", scheme: str = "https") -> str:
        inst = {i.name: i for i in self.host.instances}[name]
        return f"{scheme}://{inst.server_name}{path}"

    def probe(self, command: str, **args: Any) -> dict[str, Any]:
        """One of client.py's commands, run in the client container."""
        args.setdefault("cafile", f"/test/{ca_target.CA_FILE}")
        script = ["python3", "/test/client.py", command, json.dumps(args)]
        out = run("docker", "exec", self.client, *script, timeout=180).stdout
        return dict(json.loads(out))

    def in_front(self, *args: str) -> str:
        return run("docker", "exec", self.front, *args).stdout


def web_a(plan: Plan) -> HostPlan:
    (host,) = [h for h in plan.docker_hosts if h.name == "web-a"]
    assert len(host.instances) == 2
    return host


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    """The fleet with tls: internal: shared host, web-a with both instances, a client."""
    reason = docker_unavailable_reason()
    if reason:
        unavailable(reason)
    workdir = tmp_path_factory.mktemp("front-door")
    rendered = render(workdir / "blueprint", DOOR)
    plan = rendered.plan
    assert isinstance(plan, Plan)
    host = web_a(plan)
    ensure_front_image(workdir)
    ensure_openwebui_image(plan.openwebui_image, plan.fleet.openwebui.version)
    ensure_shared_image(workdir)
    suffix = uuid.uuid4().hex[:8]
    network = f"owuitest-fd-{OCTET}-{suffix}"
    front, client, shared = (
        f"owuitest-fd-{NAME}-{r}-{suffix}" for r in ("web-a", "client", "shared")
    )
    door = Door(rendered, plan, host, network, front, workdir / "front", client,
                workdir / "client", suffix)  # fmt: skip
    fleet = door.fleet = Fleet(rendered, plan, rendered.blueprint, network, shared)
    config = shared_config(rendered)
    subnet = ["--subnet", f"10.213.{OCTET}.0/24", "--gateway", f"10.213.{OCTET}.1"]
    run("docker", "network", "create", "--internal", *subnet, network)
    try:
        start_shared(fleet, config, workdir)
        start_front(rendered, host, network, front, door.front_dir)
        ca = rendered.files[ca_target.CA_FILE].decode()
        start_client(network, door.client_address, client, workdir, {ca_target.CA_FILE: ca})
        for inst in host.instances:
            door.sites[inst.name] = place_site(fleet, inst, front, workdir, suffix)
        with ThreadPoolExecutor(len(door.sites)) as pool:
            ups = [
                pool.submit(s.compose, "up", "--detach", "--wait", timeout=UP_TIMEOUT)
                for s in door.sites.values()
            ]
            for up in ups:
                up.result()
        yield door
    finally:
        for site in door.sites.values():
            if site.override.exists():
                compose = site.compose_command
                logs = run(*compose, "logs", "--no-color", "--tail", "200", timeout=60, check=False)
                (workdir / f"{site.inst.name}.log").write_text(logs.stdout + logs.stderr)
                run(*compose, "down", "--volumes", "--timeout", "10", timeout=120, check=False)
        keep_logs(workdir, front, "web-a-caddy.log", caddy_log(INTERNAL))
        for container in (client, front, shared):
            run("docker", "rm", "-f", container, check=False)
        run("docker", "network", "rm", network, check=False)


def keep_logs(workdir: Path, container: str, name: str, path: str) -> None:
    found = run("docker", "exec", container, "cat", path, check=False)
    (workdir / name).write_text(found.stdout + found.stderr)


@dataclass
class Acme:
    door: Door  # the door fixture's, its Caddy now from the ACME render
    rendered: Rendered  # the same fleet with tls: acme
    pebble: str  # its container
    directory_ca: str  # PEM: the CA of pebble's own HTTPS certificate

    def probe(self, command: str, **args: Any) -> dict[str, Any]:
        """A client's request, verified against pebble's issuing root."""
        return self.door.probe(command, **{"cafile": PEBBLE_ROOT, **args})


def pebble_settings() -> dict[str, Any]:
    return {
        "listenAddress": f"0.0.0.0:{ACME_PORT}",
        "managementListenAddress": f"0.0.0.0:{ACME_MANAGEMENT_PORT}",
        "certificate": "/pebble/cert.pem",
        "privateKey": "/pebble/key.pem",
        # Where a validation dials the name being validated: the front door's own ports.
        "httpPort": HTTP_PORT,
        "tlsPort": HTTPS_PORT,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }


@pytest.fixture(scope="module")
def acme(door: Door, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Acme]:
    """The door fixture's fleet rendered with tls: acme against pebble, on its network: web-a's
    Caddy from that render, in front of the same running instances. At its end the fleet CA's
    Caddy runs again, as the door fixture left it."""
    workdir = tmp_path_factory.mktemp("front-door-acme")
    today = datetime.datetime.now(datetime.UTC).date()
    directory_ca = pki.issue_ca("pebble directory", today)
    pebble_tls = pki.issue_server(directory_ca, ACME_DIRECTORY_HOST, (ACME_DIRECTORY_HOST,), today)
    section = {
        **DOOR,
        "tls": "acme",
        "acme": {
            "email": ACME_EMAIL,
            "directory": f"https://{ACME_DIRECTORY_HOST}:{ACME_PORT}/dir",
            "directory_ca": directory_ca.cert,
        },
    }
    # The door's blueprint directory with its secrets files: the same secrets, so the same
    # instances, which keep running as they are.
    shutil.copytree(door.rendered.blueprint.parent, workdir / "blueprint")
    rendered = render(workdir / "blueprint", section)
    bundles = [p for p in door.rendered.files if p.startswith("instances/")]
    assert bundles and all(rendered.files[p] == door.rendered.files[p] for p in bundles)
    pebble = f"owuitest-fd-pebble-{door.suffix}"
    pebble_dir = workdir / "pebble"
    pebble_dir.mkdir()
    (pebble_dir / "cert.pem").write_text(pebble_tls.cert)
    (pebble_dir / "key.pem").write_text(pebble_tls.key)
    (pebble_dir / "pebble.json").write_text(json.dumps({"pebble": pebble_settings()}))
    (pebble_dir / "listening.py").write_text(LISTENING)
    (door.client_dir / Path(DIRECTORY_CA).name).write_text(directory_ca.cert)
    try:
        # No random sleep before a validation and no refused nonce, for speed; validation
        # itself is real.
        where = ["--network", door.network, "--network-alias", ACME_DIRECTORY_HOST]
        speed = ["-e", "PEBBLE_VA_NOSLEEP=1", "-e", "PEBBLE_WFE_NONCEREJECT=0"]
        run("docker", "run", "-d", "--name", pebble, *where, *speed,
            "-v", f"{pebble_dir}:/pebble:ro", FRONT_IMAGE, "pebble", "-config", "/pebble/pebble.json")  # fmt: skip
        listening = [f"127.0.0.1:{ACME_PORT}", f"127.0.0.1:{ACME_MANAGEMENT_PORT}"]
        run("docker", "exec", pebble, "python3", "/pebble/listening.py", *listening)
        # The root pebble issues from, for the client to verify the front door with.
        url = f"https://{ACME_DIRECTORY_HOST}:{ACME_MANAGEMENT_PORT}/roots/0"
        root = door.probe("request", url=url, cafile=DIRECTORY_CA)
        assert root.get("status") == 200 and "BEGIN CERTIFICATE" in root["body"], root
        (door.client_dir / Path(PEBBLE_ROOT).name).write_text(root["body"])
        stop_caddy(door, INTERNAL)
        start_caddy(door, rendered, ACME)
        yield Acme(door, rendered, pebble, directory_ca.cert)
    finally:
        keep_logs(workdir, door.front, "web-a-caddy.log", caddy_log(ACME))
        logs = run("docker", "logs", pebble, check=False)
        (workdir / "pebble.log").write_text(logs.stdout + logs.stderr)
        run("docker", "rm", "-f", pebble, check=False)
        # Back to the fleet CA's Caddy, with none of the ACME run's state left.
        stop_caddy(door, ACME)
        stop_caddy(door, INTERNAL)  # still running if the ACME run never started
        acme_state = [
            f"{front_door.STORAGE}/acme",
            f"{front_door.STORAGE}/certificates/{ACME_ISSUER}",
            front_door.ACME_DIRECTORY_CA,
        ]
        door.in_front("rm", "-rf", *acme_state)
        start_caddy(door, door.rendered, INTERNAL)


# -- helpers for the tests ----------------------------------------------------------------------


def headers(answer: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in answer.get("headers", []) if k.lower() == name.lower()]


def admin_password(door: Door, name: str) -> str:
    return str(door.rendered.secrets[door.sites[name].inst.admin_password.name])  # type: ignore[index]


def sign_in(door: Door, name: str, **probe: Any) -> dict[str, Any]:
    body = {
        "email": door.sites[name].inst.instance.admin.email,
        "password": admin_password(door, name),
    }
    return door.probe(
        "request",
        method="POST",
        url=door.url(name, "/api/v1/auths/signin"),
        headers={"Content-Type": "application/json"},
        body=json.dumps(body),
        **probe,
    )


def token(door: Door, name: str) -> str:
    if name not in door.tokens:
        answer = sign_in(door, name)
        assert answer.get("status") == 200, answer
        door.tokens[name] = json.loads(answer["body"])["token"]
    return door.tokens[name]


def bearer(door: Door, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(door, name)}"}


def webui_name(answer: dict[str, Any]) -> str:
    assert answer.get("status") == 200, answer
    return str(json.loads(answer["body"])["name"])


# -- tls: internal, with the real Open WebUI instances ------------------------------------------


def test_https_with_the_fleet_ca_is_the_only_way_in(door: Door) -> None:
    """Each instance answers over HTTPS at its host name, with the certificate the fleet CA
    issued for the host's instance names (TLS 1.2 or later); a client that trusts only the
    public CAs refuses it. Plain HTTP on port 80 answers only a redirect (308) to the same
    https URL, and on port 443 only Caddy's 400, never the instance; the instances' own ports
    are not reachable at the host's address, since they are published on loopback only."""
    names = sorted(i.server_name for i in door.host.instances if i.server_name)
    for name in door.sites:
        answer = door.probe("request", url=door.url(name, "/health"))
        assert (answer.get("status"), answer.get("body")) == (200, '{"status":true}'), answer
        assert answer["tls"] in ("TLSv1.2", "TLSv1.3") and sorted(answer["names"]) == names
        public_only = door.probe("request", url=door.url(name, "/health"), cafile=None)
        assert "CERTIFICATE_VERIFY_FAILED" in public_only.get("error", ""), public_only
        path = "/api/config?probe=1"
        plain = door.probe("request", url=door.url(name, path, scheme="http"))
        assert plain.get("status") == 308, plain
        assert headers(plain, "Location") == [door.url(name, path)], plain
        assert "Alpha" not in plain["body"] and "Beta" not in plain["body"], plain
        # Plain HTTP to the HTTPS port: Caddy's own 400, not the instance.
        plain = door.probe("request", url=door.url(name, f":{HTTPS_PORT}/health", scheme="http"))
        assert plain.get("status") == 400 and plain["body"] != '{"status":true}', plain
        # A POST too (sign-in), with its method kept by the 308.
        posted = door.probe(
            "request",
            method="POST",
            url=door.url(name, "/api/v1/auths/signin", scheme="http"),
            headers={"Content-Type": "application/json"},
            body="{}",
        )
        assert posted.get("status") == 308, posted
    # The generated publication is on loopback only, which the override's listener follows:
    # from the network, the host's address has no instance port open, and 443 is Caddy's.
    for site in door.sites.values():
        assert site.published == {
            "target": OPENWEBUI_CONTAINER_PORT,
            "host_ip": LOOPBACK,
            "published": str(site.inst.port),
            "protocol": "tcp",
        }
        for port in (site.inst.port, OPENWEBUI_CONTAINER_PORT):
            url = f"http://{door.address}:{port}/health"
            closed = door.probe("request", url=url)
            assert "ConnectionRefusedError" in closed.get("error", ""), (port, closed)
    # ... while on the host's own loopback each instance answers at its port.
    for site in door.sites.values():
        url = f"http://{LOOPBACK}:{site.inst.port}/health"
        out = door.in_front("curl", "-sS", url)
        assert out == '{"status":true}', out


def test_sign_in_through_the_front_door_sets_secure_cookies_and_hsts(door: Door) -> None:
    """The generated admin signs in through the front door with the password from the
    secrets file; the auth cookie it gets carries Secure (and HttpOnly), and the answer
    carries HSTS. That cookie alone then authenticates the admin; a wrong password does not
    sign in."""
    for name, site in door.sites.items():
        answer = sign_in(door, name)
        assert answer.get("status") == 200, answer
        assert headers(answer, "Strict-Transport-Security") == [front_door.HSTS], answer
        assert site.env["WEBUI_AUTH_COOKIE_SECURE"] == "true"
        assert site.env["WEBUI_SESSION_COOKIE_SECURE"] == "true"
        cookies = headers(answer, "Set-Cookie")
        (auth,) = [c for c in cookies if c.startswith("token=")]
        attributes = {a.strip().split("=")[0].lower() for a in auth.split(";")[1:]}
        assert {"secure", "httponly"} <= attributes, auth
        assert all("secure" in c.lower().split("; ") for c in cookies), cookies
        user = json.loads(answer["body"])
        assert user["role"] == "admin" and user["email"] == site.inst.instance.admin.email
        door.tokens[name] = user["token"]
        cookie = auth.split(";", 1)[0]
        me = door.probe("request", url=door.url(name, "/api/v1/auths/"), headers={"Cookie": cookie})
        assert me.get("status") == 200 and json.loads(me["body"])["role"] == "admin", me
        wrong = {"email": site.inst.instance.admin.email, "password": "not-the-generated-one"}
        refused = door.probe(
            "request",
            method="POST",
            url=door.url(name, "/api/v1/auths/signin"),
            headers={"Content-Type": "application/json"},
            body=json.dumps(wrong),
        )
        assert refused.get("status") in (400, 401, 403), refused
        assert not headers(refused, "Set-Cookie"), refused


def test_socketio_websocket_upgrades_through_the_front_door(door: Door) -> None:
    """An engine.io handshake over wss: the upgrade passes Caddy (101, the right accept key)
    and Open WebUI's first frame, the open packet, arrives through it. From another origin
    the same upgrade is refused by Open WebUI, which takes only its own url's origin."""
    for name, site in door.sites.items():
        url = door.url(name, "/ws/socket.io/?EIO=4&transport=websocket")
        answer = door.probe("websocket", url=url, headers={"Origin": site.inst.origin})
        assert answer.get("status") == 101 and answer["accept_ok"], answer
        frame = answer["frame"]
        assert frame["opcode"] == 1 and frame["text"].startswith("0{"), frame  # text, "open"
        opened = json.loads(frame["text"][1:])
        assert opened["sid"] and opened["pingInterval"] > 0, opened
        foreign = door.probe("websocket", url=url, headers={"Origin": FOREIGN_ORIGIN})
        # Refused before the upgrade (uvicorn answers a websocket the app closes unaccepted 403).
        assert foreign.get("status") == 403 and "frame" not in foreign, foreign


def test_a_streamed_chat_answer_arrives_in_pieces(door: Door) -> None:
    """Open WebUI's chat completion, through the front door: the Ollama double streams its
    answer a piece a second, through the shared host's TLS terminator, Open WebUI and the
    front door; the client holds the first piece before the double has sent its last."""
    assert door.fleet is not None
    marker = f"stream-probe-{uuid.uuid4().hex}"
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": marker}]}
    answer = door.probe(
        "stream",
        method="POST",
        url=door.url("alpha", "/api/chat/completions"),
        headers={**bearer(door, "alpha"), "Content-Type": "application/json"},
        body=json.dumps(body),
    )
    assert answer.get("status") == 200, answer
    reads = answer["reads"]
    text = "".join(chunk for _, chunk in reads)
    assert all(piece in text for piece in PIECES), text
    assert [text.index(p) for p in PIECES] == sorted(text.index(p) for p in PIECES), text
    (sent,) = [e for e in doubles_log(door.fleet) if e.get("prompt") == marker]
    assert sent["path"] == "/api/chat" and len(sent["sent_at"]) == len(PIECES), sent
    first = next(t for t, chunk in reads if PIECES[0] in chunk)
    last_sent = sent["sent_at"][-1]
    assert first < last_sent, (first, sent["sent_at"], reads)
    # ... and the pieces came in several reads, not one at the end.
    assert len([1 for _, chunk in reads if "piece-" in chunk]) >= 2, reads


def upload(door: Door, name: str, size: int, http: str | None = None) -> dict[str, Any]:
    url = door.url("alpha", "/api/v1/files/?process=false")
    return door.probe(
        "upload", url=url, headers=bearer(door, "alpha"), name=name, size=size, http=http
    )


def uploaded_files(door: Door) -> list[str]:
    listed = door.probe(
        "request", url=door.url("alpha", "/api/v1/files/"), headers=bearer(door, "alpha")
    )
    assert listed.get("status") == 200, listed
    files = json.loads(listed["body"])
    files = files.get("items", files) if isinstance(files, dict) else files
    return sorted(f["filename"] for f in files)


def too_large_message(answer: dict[str, Any]) -> bool:
    body = str(answer.get("body"))
    return "owuibuild front door" in body and f"limit of {UPLOAD_LIMIT_MB} MiB" in body


def test_uploads_under_the_limit_pass_and_over_it_get_413(door: Door) -> None:
    """With max_upload_mb: 1, a file of 200 KiB uploads to Open WebUI through the front door;
    one of 2 MiB is answered 413 by the front door itself, over HTTP/1.1 and HTTP/2 alike,
    and never reaches Open WebUI."""
    limit = UPLOAD_LIMIT_MB * front_door.MIB
    small = upload(door, "small.txt", 200 * 1024)
    assert small.get("status") == 200, small
    stored = json.loads(small["body"])
    assert stored["filename"] == "small.txt" and stored["meta"]["size"] == 200 * 1024, stored
    large = upload(door, "large.txt", 2 * limit, http="1.1")
    assert large.get("status") == 413 and too_large_message(large), large
    assert large["uploaded"] < 2 * limit, large  # refused before the body was all sent
    large = upload(door, "large-h2.txt", 2 * limit, http="2")
    assert large.get("status") == 413, large
    assert uploaded_files(door) == ["small.txt"]


def test_an_http2_client_gets_the_whole_413_answer(door: Door) -> None:
    """Browsers speak HTTP/2 to the front door: the 413 must reach them whole, its body (the
    message naming the limit) included, not cut off by the connection's teardown."""
    large = upload(door, "large-h2-whole.txt", 2 * UPLOAD_LIMIT_MB * front_door.MIB, http="2")
    assert large.get("status") == 413, large
    assert large["curl_exit"] == 0 and too_large_message(large), large


def test_cors_admits_each_instances_own_origin_only(door: Door) -> None:
    """Each instance's CORS origin is its url's: a request from there gets it back in
    Access-Control-Allow-Origin (simple and preflight); another origin, the other instance's
    included, gets no Access-Control-Allow-Origin, and its preflight is refused."""
    for name, site in door.sites.items():
        own = site.inst.origin
        assert own == door.url(name, "") and site.env["CORS_ALLOW_ORIGIN"] == own
        other = [s.inst.origin for n, s in door.sites.items() if n != name]
        for origin in (own, FOREIGN_ORIGIN, *other):
            config = door.url(name, "/api/config")
            answer = door.probe("request", url=config, headers={"Origin": origin})
            allowed = headers(answer, "Access-Control-Allow-Origin")
            assert answer.get("status") == 200, answer
            assert allowed == ([own] if origin == own else []), (origin, answer)
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        }
        url = door.url(name, "/api/v1/auths/signin")
        ok = door.probe("request", method="OPTIONS", url=url, headers={"Origin": own, **preflight})
        assert ok.get("status") == 200 and headers(ok, "Access-Control-Allow-Origin") == [own], ok
        refused = door.probe(
            "request", method="OPTIONS", url=url, headers={"Origin": FOREIGN_ORIGIN, **preflight}
        )
        assert refused.get("status") == 400, refused
        assert not headers(refused, "Access-Control-Allow-Origin"), refused


def test_host_routing_reaches_each_instance_by_its_name(door: Door) -> None:
    """Both host names lead to the same address, and each reaches its own instance only: the
    name each answers with is its WEBUI_NAME, and an admin's token from one is nobody on the
    other. A name the front door does not serve gets no instance at all."""
    expected = WEBUI_NAMES
    for name in door.sites:
        # Dialled at the host's address, the instance chosen by SNI and Host alone.
        answer = door.probe("request", url=door.url(name, "/api/config"), connect=door.address)
        assert expected[name] in webui_name(answer), answer
        other = next(n for n in door.sites if n != name)
        assert expected[other] not in webui_name(answer), answer
    me = door.probe(
        "request", url=door.url("beta", "/api/v1/auths/"), headers=bearer(door, "alpha")
    )
    assert me.get("status") == 401, me
    me = door.probe(
        "request", url=door.url("alpha", "/api/v1/auths/"), headers=bearer(door, "alpha")
    )
    assert me.get("status") == 200, me
    # The Host header decides, as with any reverse proxy: alpha's name in TLS with beta's in
    # Host reaches beta, and only beta (both names are this host's, in one certificate).
    beta_host = door.sites["beta"].inst.server_name
    crossed = door.probe(
        "request", url=door.url("alpha", "/api/config"), headers={"Host": beta_host}
    )
    assert expected["beta"] in webui_name(crossed), crossed
    assert expected["alpha"] not in webui_name(crossed), crossed
    # A name with no certificate: no TLS at all. A served name's certificate with a Host the
    # front door does not serve: the front door's own 421, no instance's.
    unknown = door.probe("request", url="https://gamma.fd.test/api/config", connect=door.address)
    assert "SSLError" in unknown.get("error", ""), unknown
    fronted = door.probe(
        "request", url=door.url("alpha", "/api/config"), headers={"Host": "gamma.fd.test"}
    )
    assert fronted.get("status") == 421, fronted
    assert "no instance is served at this host name" in fronted["body"], fronted
    assert not headers(fronted, "Strict-Transport-Security"), fronted


def test_the_front_door_reloads_through_its_admin_socket_only(door: Door) -> None:
    """The unit's reload (a converge's new instance or certificate) loads the configuration
    again in the running Caddy, through its admin socket: the same process serves on. Only
    the unit's user (and root) reach the socket."""
    unit = door_unit(door.rendered, door.host.name)

    def caddy_pids() -> str:
        # The image has no procps: the PIDs whose command is caddy, from /proc.
        find = 'for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" = caddy ] && echo "${p#/proc/}"; done; true'
        return run("docker", "exec", door.front, "sh", "-c", find).stdout

    before = caddy_pids()
    assert before.strip(), "Caddy is not running"
    as_user = ["docker", "exec", door.front, "runuser", "-u"]
    reload = run(*as_user, unit.user, "--", "env", *unit.environment, *unit.reload, check=False)
    assert reload.returncode == 0, reload.stderr
    assert caddy_pids() == before
    answer = door.probe("request", url=door.url("alpha", "/api/config"), connect=door.address)
    assert WEBUI_NAMES["alpha"] in webui_name(answer), answer
    stranger = run(*as_user, "nobody", "--", *unit.reload, check=False)
    assert stranger.returncode != 0, stranger.stdout
    # Refused at the socket (the configuration itself is readable: 0644).
    assert "permission denied" in stranger.stderr.lower(), stranger.stderr
    assert front_door.ADMIN_SOCKET in stranger.stderr, stranger.stderr
    assert caddy_pids() == before


def test_status_asks_each_instance_through_the_front_door(door: Door) -> None:
    """`owuibuild status`, run in the client container's network namespace (a machine on the
    fleet network), asks each instance's /health and /health/db through the front door: at
    the host's address on 443, with the instance's host name in TLS and Host, verified with the
    fleet CA; every row is ok. With one instance stopped its rows turn, and the exit code."""
    if shutil.which("nsenter") is None:
        unavailable("nsenter (util-linux) is not installed")
    pid = run("docker", "inspect", "--format", "{{.State.Pid}}", door.client).stdout.strip()

    def status() -> tuple[int, dict[str, Any], str]:
        done = subprocess.run(
            ["nsenter", "-t", pid, "-n", "--", sys.executable, "-m", "owuibuild.cli", "status",
             str(door.rendered.blueprint), "--format", "json", "--timeout", "10",
             "--only=openwebui", "--only=openwebui-db"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        return done.returncode, json.loads(done.stdout), done.stdout + done.stderr

    code, doc, output = status()
    rows = {(c["service"], c["instance"]): c for c in doc["checks"]}
    others = {i.name for i in door.plan.instances} - set(door.sites)
    assert {n for _, n in rows} - others == set(door.sites), output
    for name in door.sites:
        for service in ("openwebui", "openwebui-db"):
            row = rows[(service, name)]
            assert row["state"] == "ok", (service, name, output)
            assert row["target"] == f"{door.address}:{HTTPS_PORT}", row
    beta = door.sites["beta"]
    beta.compose("stop", "--timeout", "10", timeout=120)
    try:
        code, doc, output = status()
        states = {(c["service"], c["instance"]): c["state"] for c in doc["checks"]}
        assert states[("openwebui", "alpha")] == "ok", output
        assert states[("openwebui", "beta")] != "ok" and code != 0, output
    finally:
        beta.compose("up", "--detach", "--wait", timeout=UP_TIMEOUT)


def test_open_webui_takes_the_client_address_from_the_front_door(door: Door) -> None:
    """Open WebUI sees the client's own address, from the X-Forwarded-For that Caddy sets
    (its access log names the client container, not Caddy's loopback), and a client's own
    X-Forwarded-For is not believed. It trusts those headers only from the address the front
    door's requests come from: here loopback (the override), and on a host the gateway of
    the instance's own Docker network, which the generated env file names."""
    client = door.client_address
    for name, site in door.sites.items():
        marker = uuid.uuid4().hex
        forged = {"X-Forwarded-For": "192.0.2.7"}
        answer = door.probe(
            "request", url=door.url(name, f"/api/config?probe={marker}"), headers=forged
        )
        assert answer.get("status") == 200, answer
        logs = site.compose("logs", "--no-color", timeout=60).stdout
        (line,) = [line for line in logs.splitlines() if marker in line]
        assert f" - {client}:" in line and "192.0.2.7" not in line, line
        env = site.env
        assert env["WEBUI_URL"] == site.inst.url == door.url(name, "")
        assert env["FORWARDED_ALLOW_IPS"] == str(site.inst.proxy_address)
        assert site.inst.proxy_address == site.inst.docker_subnet.network_address + 1
        doc = yaml.safe_load((site.bundle_dir / bundle.COMPOSE_FILE).read_text())
        (subnet,) = doc["networks"]["default"]["ipam"]["config"]
        assert subnet["subnet"] == str(site.inst.docker_subnet)


def test_open_webui_believes_the_scheme_the_front_door_sets(door: Door) -> None:
    """Open WebUI builds its absolute URLs from the X-Forwarded-Proto that Caddy sets: its
    OAuth login redirects with a redirect_uri of https://<the instance's host name>, never
    http:// (an OAuth sign-in would come back to a URL the front door only redirects); a
    client's own X-Forwarded-Proto and X-Forwarded-Host change nothing. On loopback, without
    the front door, the same login's redirect_uri is http://: Open WebUI does take the scheme
    from the request."""
    forged = {"X-Forwarded-Proto": "http", "X-Forwarded-Host": "evil.test"}
    for name, site in door.sites.items():
        callback = door.url(name, OAUTH_CALLBACK)
        for claimed in ({}, forged):
            answer = door.probe("request", url=door.url(name, OAUTH_LOGIN), headers=claimed)
            assert answer.get("status") == 302, answer
            assert redirect_uri(headers(answer, "Location")) == callback, (claimed, answer)
        host = urllib.parse.urlsplit(callback).hostname
        direct = door.in_front(
            "curl", "-sS", "-o", "/dev/null", "-w", "%{redirect_url}", "-H", f"Host: {host}",
            f"http://{LOOPBACK}:{site.inst.port}{OAUTH_LOGIN}",
        )  # fmt: skip
        assert redirect_uri([direct]) == door.url(name, OAUTH_CALLBACK, scheme="http"), direct


def redirect_uri(locations: list[str]) -> str:
    """The redirect_uri of an OAuth login's one redirect to GitHub."""
    (location,) = locations
    assert location.startswith("https://github.com/login/oauth/authorize?"), location
    (uri,) = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["redirect_uri"]
    return uri


# -- tls: acme, with pebble, in front of the same instances (these tests run last) --------------


def served_by_acme(acme: Acme, name: str) -> dict[str, Any]:
    """The instance's /api/config over HTTPS verified with pebble's root, once Caddy has its
    certificate (it asks at start; pebble validates, then issues)."""
    deadline = time.monotonic() + 180
    while True:
        answer = acme.probe("request", url=acme.door.url(name, "/api/config"))
        if answer.get("status") == 200 or time.monotonic() > deadline:
            return answer
        time.sleep(2)


def test_acme_certificates_come_from_the_acme_ca(acme: Acme) -> None:
    """Caddy, from the generated ACME configuration, gets a certificate for each instance's
    host name from pebble, which validated each name against Caddy for real (Caddy logs
    serving the key authorization to pebble's address; pebble logs each authorization made
    valid), and an HTTPS request verified with pebble's issuing root reaches each instance,
    which answers with its own WEBUI_NAME. The certificates (owned by caddy) and the ACME
    account are in the generated storage path, and the certificate served is the one stored."""
    door = acme.door
    storage = front_door.STORAGE
    for inst in door.host.instances:
        answer = served_by_acme(acme, inst.name)
        others = [n for i, n in WEBUI_NAMES.items() if i != inst.name]
        name = webui_name(answer)  # Open WebUI adds its own name to it
        assert WEBUI_NAMES[inst.name] in name and not any(o in name for o in others), name
        assert answer["names"] == [inst.server_name], answer
        stored = f"{storage}/certificates/{ACME_ISSUER}/{inst.server_name}/{inst.server_name}.crt"
        owner = door.in_front("stat", "-c", "%U", stored).strip()
        assert owner == "caddy", owner
        pem = door.in_front("cat", stored)  # the leaf, then pebble's intermediate
        pem = pem[: pem.index("-----END CERTIFICATE-----")] + "-----END CERTIFICATE-----\n"
        leaf = sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
        assert answer["cert_sha256"] == leaf, (answer, pem)
    # No certificate of the fleet CA's is in play: the host gets only the configuration and
    # the CA of the ACME directory's HTTPS, the blueprint's directory_ca.
    files = {f["path"]: f["content"] for f in door_files(acme.rendered, door.host.name)}
    assert sorted(files) == sorted([front_door.ACME_DIRECTORY_CA, front_door.CONFIG]), files
    assert files[front_door.ACME_DIRECTORY_CA] == acme.directory_ca
    account = door.in_front("find", f"{storage}/acme/{ACME_ISSUER}/users", "-type", "f").split()
    assert any(p.endswith(".key") for p in account), account
    assert any(f"/{ACME_EMAIL}/" in p for p in account), account
    # The validations were real: pebble (from its own address) fetched each name's challenge
    # from Caddy, by HTTP-01 on port 80 or TLS-ALPN-01 on 443, whichever Caddy chose.
    env = run("docker", "inspect", "-f", "{{json .Config.Env}}", acme.pebble).stdout
    assert "PEBBLE_VA_ALWAYS_VALID" not in env, env
    address = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    pebble_address = run("docker", "inspect", "-f", address, acme.pebble).stdout.strip()
    entries = [
        json.loads(line)
        for line in door.in_front("cat", caddy_log(ACME)).splitlines()
        if line.startswith("{")
    ]
    served = [e for e in entries if str(e.get("msg")).startswith("served key authentication")]
    for inst in door.host.instances:
        mine = [
            e for e in served if inst.server_name in (e.get("identifier"), e.get("server_name"))
        ]
        assert mine and all(e["remote"].rsplit(":", 1)[0] == pebble_address for e in mine), served
    logs = run("docker", "logs", acme.pebble)
    valid = (logs.stdout + logs.stderr).count("set VALID by completed challenge")
    assert valid >= len(door.host.instances), logs.stdout + logs.stderr


def test_the_instances_serve_their_admins_through_the_acme_front_door(acme: Acme) -> None:
    """Behind the ACME front door are the same instances, with the same secrets: each
    generated admin signs in with the password from the secrets file, over HTTPS verified
    with pebble's root, and the answer carries HSTS; the token signs in on its own instance
    only. Plain HTTP answers the redirect to https."""
    door = acme.door
    for name, site in door.sites.items():
        assert served_by_acme(acme, name).get("status") == 200
        answer = sign_in(door, name, cafile=PEBBLE_ROOT)
        assert answer.get("status") == 200, answer
        assert headers(answer, "Strict-Transport-Security") == [front_door.HSTS], answer
        user = json.loads(answer["body"])
        assert user["role"] == "admin" and user["email"] == site.inst.instance.admin.email
        auth = {"Authorization": f"Bearer {user['token']}"}
        for other in door.sites:
            me = acme.probe("request", url=door.url(other, "/api/v1/auths/"), headers=auth)
            assert me.get("status") == (200 if other == name else 401), (name, other, me)
        plain = acme.probe("request", url=door.url(name, "/health", scheme="http"))
        assert plain.get("status") == 308, plain
        assert headers(plain, "Location") == [door.url(name, "/health")], plain
